"""Consoles follow the domain (issue 10), against a real daemon (scripted engine) on a socket:
`hyperdisco console` and `create -c` end with one line when the domain powers off, crashes or is
destroyed (or is stopped and preserved), and stay attached through a restart: one line says so, the new
incarnation's output arrives and the next key typed reaches it. The daemon's console stream itself
(Domain.console()) follows the same way and closes when the domain is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from unit_support import scripted_daemon, until

from hyperdisco.client import Connection, Error
from hyperdisco.dom0.handle import DomainHandle
from hyperdisco.platform import acpi
from hyperdisco.toolstack.daemon import Daemon

POWEROFF = f"out:{acpi.SLEEP_CONTROL_PORT}:{acpi.SLP_EN}"
REBOOT = f"out:{acpi.RESET_PORT}:6"
LIVES = "spin:500"  # about 5 s of a scripted guest's life: long enough to type into it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, Path]]:
    with scripted_daemon(tmp_path_factory.mktemp("console")) as served:
        yield served


@pytest.fixture
def typed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """Every keystroke the daemon hands a domain: (its ID, the bytes)."""
    got: list[tuple[int, bytes]] = []
    real_input = DomainHandle.input

    def record(self: DomainHandle, data: bytes) -> bool:
        got.append((self.domid, data))
        return real_input(self, data)

    monkeypatch.setattr(DomainHandle, "input", record)
    return got


class Cli:
    """`hyperdisco ARGS` with stdin kept open (a pipe), stdout and stderr read as they come."""

    def __init__(self, path: str, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "hyperdisco", *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(os.environ, HYPERDISCO_SOCKET=path))
        self.out = bytearray()
        self.err = bytearray()
        for stream, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, buf), daemon=True).start()

    def _pump(self, stream: IO[bytes] | None, buf: bytearray) -> None:
        assert stream is not None
        while data := stream.read1(4096):  # type: ignore[attr-defined]
            buf += data

    def type(self, data: bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def wait(self, timeout: float = 20.0) -> int:
        status = self.p.wait(timeout)
        time.sleep(0.1)  # the pumps take the last bytes
        return status

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def err_lines(self) -> list[str]:
        return bytes(self.err).decode().splitlines()


def test_console_follows_a_reboot_and_the_next_key_reaches_the_new_guest(
        served: tuple[Daemon, str, Path], typed: list[tuple[int, bytes]]) -> None:
    d, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "fw", "memory": 32, "kernel": str(kernel),
                           "cmdline": f"scripted=say:up,{LIVES},{REBOOT}"})
        cli = Cli(path, "console", "fw")
        try:
            until(lambda: b"up\n" in cli.out)
            until(lambda: any("rebooted" in ln for ln in cli.err_lines()), timeout=30)
            new = conn.lookup("fw")
            assert new.domid != dom.domid
            assert cli.err_lines() == [f"hyperdisco: domain fw rebooted; now domain {new.domid}"]
            until(lambda: cli.out.count(b"up\n") >= 2)  # the new incarnation's output
            cli.type(b"k")
            # The key reaches the new incarnation, or (on a slow host, when the guest's next scripted
            # reboot came first) a later one: never the first one, exactly once.
            until(lambda: [data for _, data in typed] == [b"k"])
            assert typed[0][0] >= new.domid
            assert cli.p.poll() is None  # still attached
            _destroy_while_it_restarts(conn, "fw", cli)
            assert cli.wait() == 0
            lines = cli.err_lines()
            assert lines[-1] == "hyperdisco: domain fw destroyed"
            assert all(" rebooted; now domain " in line for line in lines[:-1])
        finally:
            cli.close()
            for left in conn.domains():
                left.destroy()


def _destroy_while_it_restarts(conn: Connection, name: str, cli: Cli) -> None:
    """Destroy the domain called `name` even if it is just being restarted (retried until the attached
    console has ended)."""
    def gone() -> bool:
        try:
            conn.lookup(name).destroy()
        except Error:
            pass
        time.sleep(0.1)
        return cli.p.poll() is not None
    until(gone)


@pytest.mark.parametrize(("script", "extra", "said"), [
    (f"say:bye,spin:150,{POWEROFF}", {}, "powered off"),
    ("say:bye,spin:150,crash", {}, "crashed"),
    (f"say:bye,spin:150,{POWEROFF}", {"on_poweroff": "preserve"}, "powered off"),
    (f"say:bye,spin:150,{REBOOT}", {"on_reboot": "destroy"}, "rebooted (on_reboot does not restart it)"),
])
def test_console_ends_with_one_line(served: tuple[Daemon, str, Path], script: str, extra: dict[str, str],
                                    said: str) -> None:
    d, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "fe", "memory": 32, "kernel": str(kernel), "cmdline": f"scripted={script}",
                           **extra})
        cli = Cli(path, "console", "fe")
        try:
            assert cli.wait() == 0, cli.err
            assert b"bye\n" in cli.out
            assert cli.err_lines() == [f"hyperdisco: domain fe {said}"]
        finally:
            cli.close()
            if extra.get("on_poweroff") == "preserve":
                dom.destroy()
        assert conn.domains() == []


def test_console_of_a_domain_stopped_and_preserved_before(served: tuple[Daemon, str, Path]) -> None:
    _d, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "fp", "memory": 32, "kernel": str(kernel), "on_crash": "preserve",
                           "cmdline": "scripted=say:last,crash"})
        until(lambda: dom.info().state[4] == "c")
        cli = Cli(path, "console", "fp")
        try:
            assert cli.wait() == 0, cli.err
            assert b"last\n" in cli.out  # its history
            assert cli.err_lines() == ["hyperdisco: domain fp crashed"]
        finally:
            cli.close()
            dom.destroy()


def test_create_c_ends_when_the_domain_powers_off(served: tuple[Daemon, str, Path], tmp_path: Path) -> None:
    _d, path, kernel = served
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f'name = "fc"\nmemory = 32\nkernel = "{kernel}"\n'
                   f'cmdline = "scripted=say:hello,spin:150,{POWEROFF}"\n')
    cli = Cli(path, "create", str(cfg), "-c")
    try:
        assert cli.wait() == 0
        assert b"hello\n" in cli.out
        assert cli.err_lines()[-1] == "hyperdisco: domain fc powered off"
    finally:
        cli.close()


def test_ctrl_bracket_detaches_quietly(served: tuple[Daemon, str, Path]) -> None:
    _d, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "fd", "memory": 32, "kernel": str(kernel),
                           "cmdline": "scripted=say:hi,halt"})
        cli = Cli(path, "console", "fd")
        try:
            until(lambda: b"hi\n" in cli.out)
            cli.type(b"\x1d")
            assert cli.wait() == 0 and cli.err_lines() == []
            assert [r.name for r in conn.domains()] == ["fd"]  # detaching leaves it running
        finally:
            cli.close()
            dom.destroy()


def test_the_stream_follows_a_restart_and_closes_at_the_end(served: tuple[Daemon, str, Path],
                                                            typed: list[tuple[int, bytes]]) -> None:
    _d, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "fs", "memory": 32, "kernel": str(kernel), "on_crash": "restart",
                           "cmdline": f"scripted=say:up,{LIVES},crash"})
        with dom.console() as con:
            seen = b""
            while seen.count(b"up\n") < 2:  # the first incarnation, then the one restarted after its crash
                data = con.read()
                assert data
                seen += data
            new = conn.lookup("fs")
            assert new.domid != dom.domid
            con.write(b"x")
            until(lambda: (new.domid, b"x") in typed)
            new.destroy()
            t = time.monotonic()
            while con.read():
                pass
            assert time.monotonic() - t < 2.0  # closed when the domain went, not at the next key
