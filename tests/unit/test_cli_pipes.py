"""Piping any verb into `head` is quiet (issue 10): a reader that goes away ends the command with
status 0 or 141 (as SIGPIPE would) and no BrokenPipeError traceback; the same error from the control
socket is still one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdisco.client import Connection
from hyperdisco.toolstack.daemon import Daemon


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("pipes")
    d = Daemon(str(tmp / "c.sock"), engine="scripted", xenstored_socket="none")
    server = d.listen()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with Connection(str(tmp / "c.sock")) as conn:  # enough of a store that `ls /` outgrows a pipe's buffer
        conn.xenstore.transaction([{"cmd": "write", "path": f"/tool/pipes/n{i}", "value": "v" * 900}
                                   for i in range(200)])
    yield str(tmp / "c.sock")
    server.shutdown()
    server.server_close()
    d.host.close()


def _env(sock: str) -> dict[str, str]:
    return dict(os.environ, HYPERDISCO_SOCKET=sock)


@pytest.mark.parametrize("verb", [["xenstore", "ls", "/"], ["list"], ["dmesg"], ["list", "-l"]])
def test_a_reader_already_gone(served: str, verb: list[str]) -> None:
    """stdout is a pipe whose reader has closed before the verb writes anything: every write fails."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "hyperdisco", *verb], stdout=w, stderr=subprocess.PIPE,
                           text=True, timeout=60, env=_env(served))
    finally:
        os.close(w)
    assert p.returncode in (0, 141) and p.stderr == "", p.stderr


@pytest.mark.parametrize("verb", ["xenstore ls /", "list", "dmesg"])
def test_piped_into_head(served: str, verb: str) -> None:
    p = subprocess.run(["bash", "-c", f"{sys.executable} -m hyperdisco {verb} | head -1; "
                                      "echo status ${PIPESTATUS[0]}"],
                       capture_output=True, text=True, timeout=60, env=_env(served))
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and lines[1] in ("status 0", "status 141"), p.stdout
    assert p.stderr == "", p.stderr


def test_the_daemon_going_away_is_still_an_error(tmp_path: Path) -> None:
    """A broken pipe on the control socket, not stdout: one line and status 1."""
    import socket

    path = tmp_path / "fake.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def hang_up() -> None:
        c, _ = srv.accept()
        c.close()

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    p = subprocess.run([sys.executable, "-m", "hyperdisco", "list"], capture_output=True, text=True,
                       timeout=60, env=_env(str(path)))
    t.join(5)
    srv.close()
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.startswith("hyperdisco: "), p.stderr
