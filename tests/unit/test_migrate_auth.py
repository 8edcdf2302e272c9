"""toolstack/migrate_ops.py: the TCP migration listener's key file and handshake: a peer that cannot
prove it holds the shared key gets one line and nothing else; a key file others may read, or a short one,
is refused in one line."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from hyperdisco.errors import HyperdiscoError
from hyperdisco.toolstack import migrate_ops
from hyperdisco.toolstack.requests import RequestError

KEY = b"a-secret-of-enough-bytes"


def _key_file(tmp_path: Path, data: bytes, mode: int) -> str:
    p = tmp_path / "key"
    p.write_bytes(data)
    os.chmod(p, mode)
    return str(p)


def test_key_file_checks(tmp_path: Path) -> None:
    assert migrate_ops.read_key(_key_file(tmp_path, KEY + b"\n", 0o600)) == KEY
    with pytest.raises(HyperdiscoError, match="only its owner"):
        migrate_ops.read_key(_key_file(tmp_path, KEY, 0o644))
    with pytest.raises(HyperdiscoError, match="at least 16 bytes"):
        migrate_ops.read_key(_key_file(tmp_path, b"short", 0o600))
    with pytest.raises(HyperdiscoError, match="No such file"):
        migrate_ops.read_key(str(tmp_path / "missing"))


def _handshake(server_key: bytes, client_key: bytes | None) -> tuple[bool, str]:
    a, b = socket.socketpair()
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(migrate_ops.server_handshake(a, server_key)))
    t.start()
    error = ""
    try:
        migrate_ops._client_handshake(b, "127.0.0.1:1", client_key)
        b.settimeout(5)
        if not result:
            t.join(5)
        if not result[0]:
            error = b.recv(1024).decode()
    except RequestError as exc:
        error = str(exc)
        b.close()  # the client gives up: the listener's read ends
    t.join(15)
    a.close()
    b.close()
    return bool(result and result[0]), error


def test_handshake() -> None:
    assert _handshake(KEY, KEY) == (True, "")
    ok, error = _handshake(KEY, b"another-key-of-enough-bytes")
    assert not ok and "not the migration key" in error
    ok, error = _handshake(KEY, None)
    assert not ok and "needs the migration key" in error
