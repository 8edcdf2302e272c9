"""migrate DOM DEST between two daemons on this host (docs/migration.md): the guest's counter loop, run
while memory is pre-copied and through the stop-and-copy, continues on the destination without a lost or
repeated value and with its clock continuous; the source domain is gone once it runs there. kill -9 of
the destination daemon mid-migration leaves the domain running on the source, with one line of error."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Xl, domain_cfg, reaches
from .test_disks import MKFS, ext4_image, text, wait_for
from .test_network import up

pytestmark = pytest.mark.slow

COUNTER = ("(i=0; while true; do i=$((i+1)); echo $i $(cut -d' ' -f1 /proc/uptime) >> /tmp/counter; "
           "sleep 0.1; done) >/dev/null 2>&1 &")


def _start_daemon(where: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    where.mkdir(exist_ok=True)
    sock = where / "hd.sock"
    log = open(where / "daemon.log", "w")
    env = dict(os.environ, HYPERDISCO_ORPHAN_TIMEOUT="5")
    proc = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(sock), "-v",
                             "--xenstored-socket", "none", *extra], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, (where / "daemon.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return proc, sock


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Xl]]:
    proc, sock = _start_daemon(tmp_path / "dest")
    yield proc, Xl(sock)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _counter(xl: Xl, dom: str) -> list[tuple[int, float]]:
    out = xl("exec", dom, "cat /tmp/counter").stdout.splitlines()
    rows = []
    for line in out:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            rows.append((int(parts[0]), float(parts[1])))
    return rows


def test_migrate_counter_continues(xl: Xl, dest: tuple[subprocess.Popen[bytes], Xl], tmp_path: Path) -> None:
    _proc, dxl = dest
    xl("create", domain_cfg(tmp_path, "mg1"))
    xl("exec", "mg1", "echo up")
    xl("exec", "mg1", COUNTER)
    time.sleep(1.5)
    r = xl("migrate", "mg1", dxl.env["HYPERDISCO_SOCKET"], timeout=300.0)
    assert "Migrated:" in r.stderr and "downtime" in r.stderr, r.stderr
    assert "mg1" not in xl.rows()  # gone from the source once it ran on the destination
    assert "mg1" in dxl.rows()
    time.sleep(1.5)
    rows = _counter(dxl, "mg1")
    counts = [c for c, _ in rows]
    assert len(counts) > 20, rows
    assert counts == list(range(1, len(counts) + 1)), counts  # no value lost, none repeated
    uptimes = [u for _, u in rows]
    # the guest clock never steps back
    assert all(b >= a for a, b in zip(uptimes, uptimes[1:], strict=False)), uptimes
    steps = [b - a for a, b in zip(uptimes, uptimes[1:], strict=False)]
    assert max(steps) < 10.0, steps  # nor jumps: at most the suspend's time away
    # the guest keeps running there: the counter grows
    time.sleep(1.0)
    assert len(_counter(dxl, "mg1")) > len(rows)
    dxl("destroy", "mg1")


def test_destination_killed_leaves_source_running(xl: Xl, dest: tuple[subprocess.Popen[bytes], Xl],
                                                  tmp_path: Path) -> None:
    proc, dxl = dest
    xl("create", domain_cfg(tmp_path, "mg2", memory=256))
    xl("exec", "mg2", "echo up")
    xl("exec", "mg2", COUNTER)
    # memory the guest keeps writing: the pre-copy has work to do while the destination dies
    xl("exec", "mg2", "(while true; do dd if=/dev/zero of=/tmp/churn bs=1M count=96 2>/dev/null; done) "
                      ">/dev/null 2>&1 &")
    time.sleep(1.0)
    # at 8 MiB/s the pre-copy of its ~70 MiB takes seconds: the destination dies in the middle of it
    migrate = subprocess.Popen(xl.argv("migrate", "--rate", "8", "mg2", dxl.env["HYPERDISCO_SOCKET"]),
                               env=xl.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the destination's incoming domain has its process: kill -9 the destination (daemon and process)
    deadline = time.monotonic() + 120
    pid = 0
    while time.monotonic() < deadline and not pid and migrate.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(dxl.env["HYPERDISCO_SOCKET"])
                s.sendall(b'{"op":"list","long":true}\n')
                reply = json.loads(s.makefile("rb").readline())
            pid = next((int(d.get("pid") or 0) for d in reply["result"] if d["name"] == "mg2"), 0)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert pid, "the destination never got the domain"
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _out, err = migrate.communicate(timeout=300)
    assert migrate.returncode != 0, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("Migrating")]
    assert len(lines) == 1 and lines[0].startswith("hyperdisco: migrate: "), err
    assert "still runs here" in lines[0] or "refused" in lines[0] or "cannot" in lines[0], err
    # the domain runs on the source: its counter carries on without a gap
    assert "mg2" in xl.rows()
    before = _counter(xl, "mg2")
    time.sleep(1.5)
    rows = _counter(xl, "mg2")
    counts = [c for c, _ in rows]
    assert len(rows) > len(before)
    assert counts == list(range(1, len(counts) + 1)), counts
    xl("destroy", "mg2")


@pytest.fixture
def key_file() -> Iterator[Path]:
    """The migration key both daemons of the TCP test share (the source's daemon_args names this path)."""
    p = Path(KEY_FILE)
    p.unlink(missing_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, KEY.encode() + b"\n")
    os.close(fd)
    yield p
    p.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


KEY = "0123456789abcdef-migration-test-key"
KEY_FILE = f"/tmp/hd-migrate-test-{os.getpid()}.key"  # the source daemon's --migrate-key (daemon_args)


def _handshake(port: int, key: bytes) -> tuple[socket.socket, Any]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    hello = json.loads(f.readline())
    proof = hmac.new(key, b"hyperdisco-migrate:" + hello["nonce"].encode(), hashlib.sha256).hexdigest()
    s.sendall(json.dumps({"proof": proof}).encode() + b"\n")
    return s, f


@pytest.mark.daemon_args("--migrate-key", KEY_FILE)
def test_migrate_over_tcp_with_its_disk(key_file: Path, xl: Xl, tmp_path: Path) -> None:
    """DEST as HOST:PORT of a daemon's --migrate-listen: a peer must prove it holds the daemons' shared
    --migrate-key, and then may ask for nothing but migrate_receive. The domain's read-write raw disk
    changes hands at the stop-and-copy: a file written before the migration reads back on the
    destination, which writes to the disk too."""
    if MKFS is None:
        pytest.skip("no mkfs.ext4 on this host")
    port = _free_port()
    proc, sock = _start_daemon(tmp_path / "dest", "--migrate-listen", f"127.0.0.1:{port}",
                               "--migrate-key", str(key_file))
    dxl = Xl(sock)
    try:
        for key in (b"not-the-key-but-long-enough", KEY.encode()):
            s, f = _handshake(port, key)
            with s:
                s.sendall(b'{"op":"list"}\n')
                reply = json.loads(f.readline())
            expected = ("hyperdisco: list is not served here" if key == KEY.encode()
                        else "hyperdisco: migrate: not the migration key")
            assert reply == {"ok": False, "error": expected}, reply
        img = ext4_image(tmp_path / "data.img", 32, {"host.txt": "host\n"})
        disk = f"disk = [ 'format=raw, vdev=xvdb, access=rw, target={img}' ]"
        xl("create", domain_cfg(tmp_path, "mg3", disk))
        wait_for(xl, "mg3", "[ -b /dev/xvdb ]")
        xl("exec", "mg3", "mkdir -p /mnt/d && mount /dev/xvdb /mnt/d && echo before > /mnt/d/b.txt && sync")
        r = xl("migrate", "mg3", f"127.0.0.1:{port}")
        assert "Migrated:" in r.stderr, r.stderr
        assert "mg3" not in xl.rows()
        r = dxl("exec", "mg3", "cat /mnt/d/host.txt /mnt/d/b.txt && echo after > /mnt/d/a.txt && sync && "
                               "cat /mnt/d/a.txt")
        assert text(r).split()[-3:] == ["host", "before", "after"], r.stdout
        dxl("destroy", "mg3")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_migrate_with_a_vif(xl: Xl, dest: tuple[subprocess.Popen[bytes], Xl], tmp_path: Path) -> None:
    """The vif comes along with its devid and MAC, on the destination's network of the same name: the
    migrated guest reaches a domain of the destination daemon there, its address never configured again."""
    _proc, dxl = dest
    up(dxl, tmp_path, "mn1", 1)
    up(xl, tmp_path, "mn2", 2)
    r = xl("migrate", "mn2", dxl.env["HYPERDISCO_SOCKET"])
    assert "Migrated:" in r.stderr, r.stderr
    listing = dxl("network-list", "mn2").stdout
    assert "00:16:3e:00:00:02" in listing and "network lan0" in listing, listing
    wait_for(dxl, "mn2", "[ \"$(cat /sys/class/net/eth0/carrier 2>/dev/null)\" = 1 ]", timeout=60)
    assert "00:16:3e:00:00:02" in dxl("exec", "mn2", "cat /sys/class/net/eth0/address").stdout
    assert "10.0.0.2/24" in dxl("exec", "mn2", "ip -4 addr show eth0").stdout
    assert reaches(dxl, "mn2", "10.0.0.1")
    assert reaches(dxl, "mn1", "10.0.0.2")
    dxl("destroy", "mn2")
    dxl("destroy", "mn1")
