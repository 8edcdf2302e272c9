"""Domain state change events (issue 11): the daemon's `events` stream, Connection.events() and
`hyperdisco events`, against a real daemon (scripted engine) on a socket: create, pause, unpause,
destroy, a guest that powers off, one that crashes and is restarted; a client that stops reading is
dropped and never holds the daemon up."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
from unit_support import scripted_daemon, until

from hyperdisco.cli.main import main as cli_main
from hyperdisco.client import Connection, DomainEvent, EventStream
from hyperdisco.platform import acpi
from hyperdisco.toolstack import daemon as daemon_module
from hyperdisco.toolstack.daemon import Daemon

POWEROFF = f"out:{acpi.SLEEP_CONTROL_PORT}:{acpi.SLP_EN}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, Path]]:
    with scripted_daemon(tmp_path_factory.mktemp("events")) as served:
        yield served


def take(events: EventStream, n: int) -> list[DomainEvent]:
    return [next(events) for _ in range(n)]


def seq(evs: list[DomainEvent]) -> list[tuple[str, int, str, str | None]]:
    return [(e.event, e.domid, e.domain, e.outcome) for e in evs]


def test_create_pause_unpause_destroy(served: tuple[Daemon, str, Path]) -> None:
    _d, path, kernel = served
    with Connection(path) as conn, conn.events(timeout=20) as events:
        t0 = time.time()
        dom = conn.create({"name": "e1", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt"})
        dom.pause()
        dom.unpause()
        dom.destroy()
        got = take(events, 4)
        n = dom.domid
        assert seq(got) == [("created", n, "e1", None), ("paused", n, "e1", None),
                            ("unpaused", n, "e1", None), ("destroyed", n, "e1", "destroyed")]
        assert all(t0 - 1 <= e.time <= time.time() + 1 for e in got)
        assert [e.time for e in got] == sorted(e.time for e in got)


def test_a_guest_that_powers_off_and_one_that_crashes_and_restarts(served: tuple[Daemon, str, Path]) -> None:
    _d, path, kernel = served
    with Connection(path) as conn, conn.events(timeout=20) as events:
        off = conn.create({"name": "e2", "memory": 32, "kernel": str(kernel),
                           "cmdline": f"scripted={POWEROFF}"})
        assert seq(take(events, 3)) == [("created", off.domid, "e2", None),
                                        ("shutdown", off.domid, "e2", "poweroff"),
                                        ("destroyed", off.domid, "e2", "poweroff")]
        bad = conn.create({"name": "e3", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=crash",
                           "on_crash": "restart"})
        got = take(events, 5)
        assert seq(got[:3]) == [("created", bad.domid, "e3", None), ("crashed", bad.domid, "e3", "crash"),
                                ("destroyed", bad.domid, "e3", "crash")]
        new = got[3].domid
        assert new != bad.domid
        assert seq(got[3:]) == [("created", new, "e3", None), ("restarted", new, "e3", "crash")]

        def gone() -> bool:  # each incarnation crashes and is restarted again: destroy until none is left
            for d in conn.domains():
                try:
                    d.destroy()
                except Exception:
                    pass  # it crashed meanwhile
            time.sleep(0.3)
            if conn.domains():
                return False
            time.sleep(0.5)  # none listed may be a restart under way (old removed, new not yet created)
            return not conn.domains()

        until(gone)


def test_several_subscribers_see_the_same_sequence(served: tuple[Daemon, str, Path]) -> None:
    _d, path, kernel = served
    with Connection(path) as conn, conn.events(timeout=20) as a, conn.events(timeout=20) as b:
        dom = conn.create({"name": "e4", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt"})
        dom.pause()
        dom.destroy()
        assert seq(take(a, 3)) == seq(take(b, 3))


def test_a_client_that_stops_reading_is_dropped(served: tuple[Daemon, str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    d, path, _ = served
    monkeypatch.setattr(daemon_module, "CLIENT_QUEUE_BYTES", 64 * 1024)
    until(lambda: not d.host._listeners)  # the earlier tests' streams have been noticed gone
    listeners = 0
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(path)
    slow.sendall(b'{"op": "events"}\n')
    until(lambda: len(d.host._listeners) == listeners + 1)
    fake = SimpleNamespace(name="x" * 64, domid=9999)
    t0 = time.monotonic()
    for _ in range(20000):  # ~3 MB of events: far more than the socket and the queue hold
        d.host._event(fake, "paused")  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 10  # the host never waited for the client
    until(lambda: len(d.host._listeners) == listeners)  # dropped: its listener is gone
    slow.settimeout(20)
    received = b""
    while chunk := slow.recv(65536):  # what was sent before the drop, then the end
        received += chunk
    slow.close()
    assert received.startswith(b'{"ok":true') and len(received) < 20000 * 100


def test_the_cli_prints_a_line_per_event(served: tuple[Daemon, str, Path]) -> None:
    d, path, kernel = served
    out = io.StringIO()
    until(lambda: not d.host._listeners)
    listeners = 0
    status: list[int] = []

    def run() -> None:
        with redirect_stdout(out):
            status.append(cli_main(["events", "--socket", path, "-n", "3"]))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    until(lambda: len(d.host._listeners) == listeners + 1)
    with Connection(path) as conn:
        dom = conn.create({"name": "e5", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt"})
        dom.pause()
        dom.destroy()
    t.join(20)
    assert status == [0]
    lines = out.getvalue().splitlines()
    assert [ln.split()[2:] for ln in lines] == [["created", str(dom.domid), "e5"],
                                                ["paused", str(dom.domid), "e5"],
                                                ["destroyed", str(dom.domid), "e5", "(destroyed)"]]
