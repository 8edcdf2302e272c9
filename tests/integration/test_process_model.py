"""One jailed process per domain (docs/process-model.md): what the host sees of a domain process, a
domain whose process dies, and a client or a file that would once have blocked everyone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg, domain_pid

pytestmark = pytest.mark.slow


def cfg(tmp_path: Path, name: str, *extra: str) -> str:
    return domain_cfg(tmp_path, name, *extra, memory=96)


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def test_each_domain_is_its_own_jailed_process(xl: Xl, tmp_path: Path) -> None:
    xl("create", cfg(tmp_path, "p1"))
    xl("create", cfg(tmp_path, "p2"))
    assert xl("exec", "p1", "echo $((20+22))", "--timeout", "120").stdout.strip() == "42"
    p1, p2 = domain_pid(xl, "p1"), domain_pid(xl, "p2")
    assert p1 != p2 and os.getpid() not in (p1, p2)
    s1, s2 = status(p1), status(p2)
    assert s1["NoNewPrivs"] == "1" and s1["Seccomp"] == "2"
    if os.geteuid() == 0:
        uid1, uid2 = s1["Uid"].split()[0], s2["Uid"].split()[0]
        assert uid1 != "0" and uid1 != uid2  # unprivileged, and not each other
        assert os.readlink(f"/proc/{p1}/root").endswith("/jail")
        assert s1["CapEff"] == "0000000000000000"
    # it holds no open path into the host's files beyond its disk images and anonymous memory
    for fd in os.listdir(f"/proc/{p1}/fd"):
        target = os.readlink(f"/proc/{p1}/fd/{fd}")
        assert not target.startswith(("/etc", "/root", "/home", str(tmp_path / "hd.sock"))), target


def test_a_dead_domain_process_ends_only_its_domain(xl: Xl, tmp_path: Path) -> None:
    xl("create", cfg(tmp_path, "victim"))
    xl("create", cfg(tmp_path, "phoenix", 'on_crash = "restart"'))
    xl("exec", "victim", "true", "--timeout", "120")
    xl("exec", "phoenix", "true", "--timeout", "120")
    first = domain_pid(xl, "phoenix")
    os.kill(first, signal.SIGKILL)  # as the OOM killer or a segfault in the engine would end it
    deadline = time.monotonic() + 60
    while True:
        rows = xl.rows()
        if "phoenix" in rows and domain_pid(xl, "phoenix") != first:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
    dmesg = xl("dmesg").stdout
    assert "its process died (signal SIGKILL)" in dmesg
    assert "phoenix" in dmesg and "action restart" in dmesg
    # the other domain never noticed, and the restarted one boots again
    assert xl("exec", "victim", "echo still here", "--timeout", "120").stdout.strip() == "still here"
    assert xl("exec", "phoenix", "echo back", "--timeout", "120").stdout.strip() == "back"


def test_a_console_client_that_stops_reading_blocks_nobody(xl: Xl, tmp_path: Path) -> None:
    xl("create", cfg(tmp_path, "noisy"))
    xl("create", cfg(tmp_path, "quiet"))
    xl("exec", "noisy", "true", "--timeout", "120")
    stuck = []
    for _ in range(2):  # two clients attach and never read
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(xl.env["HYPERDISCO_SOCKET"])
        s.sendall(json.dumps({"op": "console", "dom": "noisy"}).encode() + b"\n")
        stuck.append(s)
    t0 = time.monotonic()
    # the guest floods its console (2 MB: more than a stuck client may fall behind) while they sleep
    out = xl("exec", "noisy", "yes hyperdisco | head -c 2000000 >/dev/console; echo done", "--timeout", "170",
             timeout=180)
    assert out.stdout.strip().endswith("done")
    assert xl("exec", "quiet", "echo fine", "--timeout", "60").stdout.strip() == "fine"
    assert time.monotonic() - t0 < 170
    for s in stuck:
        s.close()


def test_special_files_are_refused_before_anything_blocks(xl: Xl, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for line in (f"disk = [ 'format=raw, vdev=xvdb, access=rw, target={fifo}' ]", f'kernel = "{fifo}"',
                 f'ramdisk = "{fifo}"', 'ramdisk = "/dev/zero"',
                 f"disk = [ 'vdev=xvdb, target={tmp_path}' ]"):
        p = subprocess.run(["timeout", "30", *xl.argv("create", cfg(tmp_path, "bad", line))],
                           capture_output=True, text=True, env=xl.env)
        assert p.returncode not in (0, 124), (line, p.stderr)  # refused, and not by the timeout
        assert p.stderr.strip().count("\n") <= 1 and "Traceback" not in p.stderr, p.stderr
    assert "bad" not in xl.rows()
