"""A client that disconnects releases what it held at once (issue 10): a killed `exec` client gives up
the domain's exec lock within a second (not at its 120 s timeout), and one killed while it waits for the
lock gives up its turn: its command is never started for nobody."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_support import scripted_daemon, until

from hyperdisco.client import Connection
from hyperdisco.dom0.handle import DomainHandle
from hyperdisco.toolstack.daemon import Daemon


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, Path]]:
    with scripted_daemon(tmp_path_factory.mktemp("exec")) as served:
        yield served


def exec_client(path: str, dom: str) -> subprocess.Popen[bytes]:
    """`hyperdisco exec` that never gets an answer: the scripted guest prints no shell prompt."""
    return subprocess.Popen([sys.executable, "-m", "hyperdisco", "exec", dom, "echo hi"],
                            env=dict(os.environ, HYPERDISCO_SOCKET=path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_a_killed_exec_client_releases_the_lock(served: tuple[Daemon, str, Path]) -> None:
    d, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "x1", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt"})
        p = exec_client(path, "x1")
        try:
            until(lambda: dom.domid in d.exec_locks and d.exec_locks[dom.domid].locked())
        finally:
            p.kill()
            p.wait()
        t = time.monotonic()
        until(lambda: not d.exec_locks[dom.domid].locked(), timeout=5)
        assert time.monotonic() - t < 1.0
        dom.destroy()


def test_a_client_killed_while_it_waits_never_runs(served: tuple[Daemon, str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    d, path, kernel = served
    typed: list[bytes] = []
    real_input = DomainHandle.input

    def record(self: DomainHandle, data: bytes) -> bool:
        typed.append(data)
        return real_input(self, data)

    monkeypatch.setattr(DomainHandle, "input", record)
    with Connection(path) as conn:
        dom = conn.create({"name": "x2", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt"})
        d.host.find("x2").guest_up = True  # as if it had booted: an exec starts by asking for a prompt
        first = exec_client(path, "x2")
        waiter: subprocess.Popen[bytes] | None = None
        try:
            # the first holds the lock, waiting for a prompt: its request is a newline (after the answer
            # to a cursor query the shell may have left: nothing was printed yet, sessions.prompt_asked)
            until(lambda: len(typed) == 1 and typed[0].endswith(b"\n"))
            waiter = exec_client(path, "x2")
            time.sleep(0.5)  # queued behind the first
            waiter.kill()
            waiter.wait()
            time.sleep(0.5)  # the daemon notices that one has gone
        finally:
            first.kill()
            first.wait()
            if waiter is not None and waiter.poll() is None:
                waiter.kill()
                waiter.wait()
        until(lambda: not d.exec_locks[dom.domid].locked(), timeout=5)
        time.sleep(0.5)
        assert typed[1:] == [b"\x03"]  # after the first's prompt request its interrupt; nothing else
        assert not d.exec_locks[dom.domid].locked()
        dom.destroy()
