"""The xenstore wire protocol: framing, error replies and payload parsing.

The constants of Xen's public header xen/include/public/io/xs_wire.h (message types, struct xsd_sockmsg,
xsd_errors[] names, path and payload limits) are defined in hyperdisco/xen/io/xs_wire.py and re-exported
here, so `wire.XS_READ` and `from .wire import HEADER` keep working. Payload formats from
docs/misc/xenstore.txt.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...xen.io.xs_wire import *  # noqa: F403
from ...xen.io.xs_wire import ERROR_NAMES, HEADER, TYPE_NAMES

OK = b"OK\0"  # docs/misc/xenstore.txt: "success responses have the following payload: OK|"


class XsError(Exception):
    """A request fails with one of xsd_errors' names; becomes an XS_ERROR reply."""

    def __init__(self, name: str, why: str = "") -> None:
        if name not in ERROR_NAMES:
            # xenstored answers EINVAL for an errno it cannot translate; do the same.
            name = "EINVAL"
        super().__init__(f"{name}: {why}" if why else name)
        self.name = name
        self.why = why


@dataclass(frozen=True)
class Header:
    type: int
    req_id: int
    tx_id: int
    len: int

    @classmethod
    def unpack(cls, data: bytes | bytearray) -> Header:
        t, r, x, n = HEADER.unpack_from(data, 0)
        return cls(t, r, x, n)


def encode(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    return HEADER.pack(msg_type, req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


def error_payload(name: str) -> bytes:
    return name.encode() + b"\0"


def type_name(msg_type: int) -> str:
    return TYPE_NAMES.get(msg_type, f"type#{msg_type}")


def one_string(payload: bytes) -> str:
    """Payload `<string>|`: exactly one NUL, at the end (xenstored's onearg())."""
    if not payload or payload[-1] != 0 or payload.index(0) != len(payload) - 1:
        raise XsError("EINVAL", "expected one NUL-terminated string")
    return _decode(payload[:-1])


def strings(payload: bytes, count: int) -> list[str]:
    """Payload of at least `count` NUL-terminated strings (`<a>|<b>|?` formats allow a trailing
    reserved part, which is ignored)."""
    parts = payload.split(b"\0")
    # every string must be terminated: the last split element follows the last NUL
    if len(parts) - 1 < count:
        raise XsError("EINVAL", f"expected {count} NUL-terminated strings")
    return [_decode(p) for p in parts[:count]]


def all_strings(payload: bytes) -> list[str]:
    """Payload `<s>|+`: every string NUL-terminated, nothing after the last NUL."""
    if not payload or payload[-1] != 0:
        raise XsError("EINVAL", "expected NUL-terminated strings")
    return [_decode(p) for p in payload[:-1].split(b"\0")]


def path_and_value(payload: bytes) -> tuple[str, bytes]:
    """WRITE's `<path>|<value|>`."""
    nul = payload.find(b"\0")
    if nul < 0:
        raise XsError("EINVAL", "path without its NUL")
    return _decode(payload[:nul]), payload[nul + 1:]


def _decode(b: bytes) -> str:
    # latin-1 maps bytes 1:1 onto str, so tokens may hold any byte but NUL; paths are checked against
    # xenstore's character set separately (store.py).
    return b.decode("latin-1")
