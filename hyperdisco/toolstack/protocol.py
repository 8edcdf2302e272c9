"""The daemon's control protocol: newline-delimited JSON over a Unix stream socket.

Each request is one JSON object with an "op"; each answer is one JSON object {"ok": true, "result": ...}
or {"ok": false, "error": "one line"}. After a successful "console" or "watch" answer the connection
turns into a stream (console: raw bytes both ways; watch: one JSON event per line). Access control is the
socket's file mode (0600, root's by default).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from ..errors import HyperdiscoError

DEFAULT_SOCKET = "/run/hyperdisco/control.sock"


def socket_path(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("HYPERDISCO_SOCKET") or DEFAULT_SOCKET)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class DaemonError(HyperdiscoError):
    """The daemon refused a request (or cannot be reached); `errno` is Xen's error name when a xenstore
    request was refused (ENOENT, EINVAL, EACCES, E2BIG...)."""

    def __init__(self, message: str, errno: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def _who_may(path: Path) -> str:
    """Who may use a socket, for a permission error: its owner and, when 0660, its group."""
    import grp
    import pwd

    try:
        st = path.stat()
    except OSError:
        return f"you may not enter {path.parent}"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    if st.st_mode & 0o060 == 0o060:
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return f"only {owner} and group {group} may use it, and you are in neither"
    return f"only {owner} may use it (mode {st.st_mode & 0o777:04o})"


class Client:
    def __init__(self, path: str | None = None) -> None:
        self.path = socket_path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(self.path))
        except PermissionError:
            self.sock.close()
            raise DaemonError(f"hyperdisco: permission denied on {self.path}: {_who_may(self.path)}; "
                              "the daemon's administrator can run it with --group NAME and add you to "
                              "NAME") from None
        except OSError as exc:
            self.sock.close()
            raise DaemonError(f"hyperdisco: cannot reach the daemon at {self.path} ({exc.strerror}); "
                              "start it with 'hyperdisco daemon'") from None
        self.file = self.sock.makefile("rb")

    def call(self, op: str, **args: Any) -> Any:
        self.sock.sendall(encode({"op": op, **args}))
        line = self.file.readline()
        if not line:
            raise DaemonError("hyperdisco: the daemon closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            err = str(reply.get("error", "unknown error"))
            errno = reply.get("errno")
            raise DaemonError(err if err.startswith("hyperdisco:") else f"hyperdisco: {err}",
                              errno if isinstance(errno, str) else None)
        return reply.get("result")

    def close(self) -> None:
        self.file.close()
        self.sock.close()
