"""Domain 0's lifecycle of domain processes, with the `scripted` engine (no guest code): create, console
output, power off, reboot, crash actions, a process that aborts, pause, destroy, and the control
protocol on a socket pair. Real processes, real jails, real channels; only the CPU is scripted."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from unit_support import make_elf

from hyperdisco.core.domain import DomainConfig
from hyperdisco.dom0.handle import DomainHandle
from hyperdisco.dom0.host import Host
from hyperdisco.errors import HyperdiscoError
from hyperdisco.loader.elf import parse_kernel
from hyperdisco.platform import acpi

KERNEL = parse_kernel(make_elf())
POWEROFF = f"out:{acpi.SLEEP_CONTROL_PORT}:{acpi.SLP_EN}"
REBOOT = f"out:{acpi.RESET_PORT}:6"


@pytest.fixture(params=[False, True], ids=["fresh", "template"])
def host(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Host]:
    """Domain processes started as fresh interpreters, and forked from the template (vmm/zygote.py)."""
    h = Host("scripted", run_dir=str(tmp_path), template=request.param)
    yield h
    h.close()


def cfg(name: str, script: str, **kw: str) -> DomainConfig:
    c = DomainConfig(name, KERNEL, None, f"console=hvc0 scripted={script}", 32)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def until(cond: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_create_output_and_poweroff(host: Host) -> None:
    dom = host.create(cfg("p", f"say:hello-from-d1,spin:20,{POWEROFF}"))  # alive while we look at it
    assert dom.pid != os.getpid() and dom.jail.startswith("jail:")
    if host.spawner is not None:  # forked from the template, not started by domain 0
        assert dom.proc is None and _ppid(dom.pid) == host.spawner.proc.pid
    assert host.wait_gone(dom, 20)
    assert b"hello-from-d1" in dom.console_buffer.history()
    assert dom.outcome == "poweroff" and host.domains == {}


def test_crash_restarts_and_reboot_restarts(host: Host) -> None:
    dom = host.create(cfg("c", "crash", on_crash="restart"))
    assert host.wait_gone(dom, 20)
    assert dom.outcome == "crash"
    new = host.successor(dom)
    assert new is not None and new.restarts == 1 and new.domid != dom.domid
    host.destroy(new)
    r = host.create(cfg("r", REBOOT))  # on_reboot defaults to restart
    assert host.wait_gone(r, 20) and r.outcome == "reboot" and host.successor(r) is not None


def test_an_aborting_process_ends_only_its_domain(host: Host) -> None:
    calm = host.create(cfg("calm", "halt"))
    bad = host.create(cfg("bad", "abort"))
    assert host.wait_gone(bad, 20)
    assert bad.outcome == "crash" and "SIGABRT" in bad.outcome_detail
    assert "calm" in {d.name for d in host.domains.values()} and not calm.finished
    assert calm.query()["vcpus"][0]["blocked"] is True  # it still answers
    host.destroy(calm)
    assert calm.outcome == "destroyed"


def test_pause_unpause_and_a_spinning_domain_is_destroyed(host: Host) -> None:
    dom = host.create(cfg("spin", "spin:0"))
    until(lambda: dom.query().get("cpu_s", 0) > 0.05)
    host.pause(dom)
    time.sleep(0.2)
    t = dom.query()["cpu_s"]
    time.sleep(0.5)
    assert dom.query()["cpu_s"] - t < 0.05  # paused: no CPU
    host.unpause(dom)
    until(lambda: dom.query()["cpu_s"] - t > 0.05)
    t0 = time.monotonic()
    host.destroy(dom)
    assert time.monotonic() - t0 < 10 and dom.finished


def test_a_process_that_stops_reading_its_channel_is_killed(host: Host) -> None:
    dom = host.create(cfg("deaf", "halt"))
    os.kill(dom.pid, 19)  # SIGSTOP: it reads nothing more
    try:
        for _ in range(5000):  # domain 0 queues, never blocks; past its bound the process is killed
            dom.notify("console")
            dom.send({"t": "query", "id": -1})
        until(lambda: dom.finished, 20)
    finally:
        try:
            os.kill(dom.pid, 18)
        except ProcessLookupError:
            pass
    assert dom.outcome == "crash"


def test_control_protocol_over_a_socket(tmp_path: Path) -> None:
    from hyperdisco.toolstack.daemon import Daemon

    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(make_elf())
    d = Daemon(str(tmp_path / "c.sock"), engine="scripted")
    a, b = socket.socketpair()
    t = threading.Thread(target=d.handle, args=(b,), daemon=True)
    t.start()
    f = a.makefile("rb")

    def call(**req: object) -> dict[str, object]:
        a.sendall(json.dumps(req).encode() + b"\n")
        reply: dict[str, object] = json.loads(f.readline())
        return reply

    try:
        r = call(op="create", config={"name": "web", "memory": 32, "kernel": str(kernel),
                                      "cmdline": "scripted=say:up,halt"})
        assert r["ok"] is True and r["result"] == {"domid": 1, "name": "web"}
        assert call(op="create", config={"name": "web", "memory": 32, "kernel": str(kernel)})["ok"] is False
        assert call(op="destroy", dom=True)["ok"] is False  # not domain 1
        rows = call(op="list", long=True)["result"]
        assert isinstance(rows, list) and [r["name"] for r in rows] == ["Domain-0", "web"]
        assert call(op="pause", dom="web")["ok"] is True
        assert call(op="list")["result"][1]["state"][2] == "p"  # type: ignore[index]
        assert call(op="destroy", dom=1)["ok"] is True
        assert [r["name"] for r in call(op="list")["result"]] == ["Domain-0"]  # type: ignore[union-attr]
    finally:
        a.close()
        d.host.close()


def test_handles_are_listed_by_name_and_id(host: Host) -> None:
    dom = host.create(cfg("named", "halt"))
    assert host.find("named") is dom and host.find(dom.domid) is dom and host.find(str(dom.domid)) is dom
    assert isinstance(dom, DomainHandle)


def test_a_domain_that_cannot_be_built_fails_at_once(host: Host) -> None:
    t0 = time.monotonic()
    with pytest.raises(HyperdiscoError, match="command line"):
        host.create(cfg("long", "halt " + "x" * 5000))  # the loader refuses a 5 KB command line
    assert time.monotonic() - t0 < 4 and host.domains == {}


def test_adoption_trusts_nothing_a_process_claims(tmp_path: Path) -> None:
    """A socket in the adoption directory whose process claims another domain's ID is not adopted."""
    from hyperdisco.vmm.channel import Channel

    domains = tmp_path / "state" / "domains"
    domains.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(domains / "5.sock"))
    listener.listen(1)

    def impostor() -> None:
        conn, _ = listener.accept()
        ch = Channel(conn)
        ch.recv()
        special = os.memfd_create("impostor")
        os.ftruncate(special, 16 * 4096)
        ch.send({"t": "hello", "domid": 7, "name": "x", "console_port": 1, "pid": os.getpid()}, [special])
        os.close(special)

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    h = Host("scripted", run_dir=str(tmp_path), state_dir=str(tmp_path / "state"),
             config_of=lambda record: cfg("x", "halt"))
    try:
        assert h.domains == {}
        assert any("not adopted" in line and "domain 5" in line for line in h.dmesg)
        assert not (domains / "5.sock").exists()
    finally:
        h.close()
        listener.close()


def test_a_domain_that_reboots_while_domain0_is_dead_is_restarted_by_the_next(tmp_path: Path) -> None:
    """The guest reboots while no domain 0 listens: its process keeps the outcome until a new daemon
    adopts it, which then applies on_reboot (restart) as the old one would have."""
    import signal
    import subprocess
    import sys

    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(make_elf())
    cfg_path = tmp_path / "r.cfg"
    cfg_path.write_text(f'name = "r"\nmemory = 32\nkernel = "{kernel}"\n'
                        f'cmdline = "console=hvc0 scripted=spin:30,{REBOOT}"\n')
    sock = tmp_path / "hd.sock"
    env = dict(os.environ, HYPERDISCO_SOCKET=str(sock))

    def daemon(log: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--engine", "scripted", "-v"],
                             env=env, stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT)
        until(lambda: cli("list").returncode == 0)
        return p

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hyperdisco", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    first = daemon("d1.log")
    try:
        r = cli("create", str(cfg_path))
        assert r.returncode == 0, r.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(4)  # the script's 30 slices end in a reboot, with nobody to tell
        second = daemon("d2.log")
        try:
            def restarted() -> bool:
                rows = [ln.split() for ln in cli("list").stdout.splitlines()[1:]]
                return any(row[0] == "r" and row[1] != "1" for row in rows)

            try:
                until(restarted, timeout=60)  # a loaded host is slow to adopt and restart
            except AssertionError:
                raise AssertionError(f"not restarted; list: {cli('list').stdout!r}; domain 0's log:\n"
                                     + (tmp_path / "d2.log").read_text()) from None
            log = (tmp_path / "d2.log").read_text()
            assert "adopted domain 1 (r)" in log and "action restart" in log, log
        finally:
            cli("destroy", "r")
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
