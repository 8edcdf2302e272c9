"""The client side of xenstore's operations, over any transport that carries one raw request and its
reply: domain 0's in-process connection (server.LocalConnection) and a domain process's relayed one
(vmm/remote_xenstore.py) share it."""

from __future__ import annotations

from collections.abc import Sequence

from .wire import (
    XS_DIRECTORY,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_PERMS,
    XS_MKDIR,
    XS_READ,
    XS_RM,
    XS_SET_PERMS,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WRITE,
    XsError,
)


class XenstoreClient:
    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        """One raw request: (reply type, reply payload); XS_ERROR with b"EACCES\\0" and the like."""
        raise NotImplementedError

    def _ok(self, msg_type: int, payload: bytes, tx: int = 0) -> bytes:
        rtype, reply = self.request(msg_type, payload, tx)
        if rtype == XS_ERROR:
            raise XsError(reply.rstrip(b"\0").decode("latin-1"))
        return reply

    def read_bytes(self, path: str, tx: int = 0) -> bytes | None:
        try:
            return self._ok(XS_READ, _z(path), tx)
        except XsError as e:
            if e.name == "ENOENT":
                return None
            raise

    def read(self, path: str, tx: int = 0) -> str | None:
        value = self.read_bytes(path, tx)
        return None if value is None else value.decode("utf-8", "surrogateescape")

    def write(self, path: str, value: str | bytes, tx: int = 0) -> None:
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        self._ok(XS_WRITE, _z(path) + data, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self._ok(XS_MKDIR, _z(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self._ok(XS_RM, _z(path), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        reply = self._ok(XS_DIRECTORY, _z(path), tx)
        return [] if not reply else reply[:-1].decode("latin-1").split("\0")

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        return self._ok(XS_GET_PERMS, _z(path), tx)[:-1].decode("latin-1").split("\0")

    def set_perms(self, path: str, perms: Sequence[str], tx: int = 0) -> None:
        self._ok(XS_SET_PERMS, _z(path) + b"".join(_z(p) for p in perms), tx)

    def watch(self, path: str, token: str) -> None:
        self._ok(XS_WATCH, _z(path) + _z(token))

    def unwatch(self, path: str, token: str) -> None:
        self._ok(XS_UNWATCH, _z(path) + _z(token))

    def transaction_start(self) -> int:
        return int(self._ok(XS_TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> bool:
        """True if committed (or aborted as asked); False on EAGAIN: the caller should retry."""
        try:
            self._ok(XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
        except XsError as e:
            if e.name == "EAGAIN":
                return False
            raise
        return True

    def get_domain_path(self, domid: int) -> str:
        return self._ok(XS_GET_DOMAIN_PATH, _z(str(domid)))[:-1].decode()

    def close(self) -> None:
        pass


def _z(s: str) -> bytes:
    return s.encode("latin-1") + b"\0"
