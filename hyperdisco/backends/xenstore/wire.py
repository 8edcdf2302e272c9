"""The xenstore wire protocol: message types, header, error names, limits.

Facts from Xen's public header xen/include/public/io/xs_wire.h:
  - `enum xsd_sockmsg_type` numbers the messages from XS_CONTROL (formerly XS_DEBUG) = 0 up to
    XS_DIRECTORY_PART; value 20 was XS_RESTRICT, which later Xen removed; XS_INVALID = 0xffff.
  - `struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; }` precedes `len` payload bytes.
  - `struct xsd_errors xsd_errors[]` lists the error names sent (as strings, NUL terminated) in XS_ERROR
    replies: EINVAL EACCES EEXIST EISDIR ENOENT ENOMEM ENOSPC EIO ENOTEMPTY ENOSYS EROFS EBUSY EAGAIN
    EISCONN E2BIG.
  - XENSTORE_PAYLOAD_MAX 4096, XENSTORE_ABS_PATH_MAX 3072, XENSTORE_REL_PATH_MAX 2048.
Payload formats from docs/misc/xenstore.txt.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

XS_CONTROL = 0
XS_DEBUG = XS_CONTROL  # the old name (docs/misc/xenstore.txt: "DEBUG: Deprecated, now named CONTROL")
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESTRICT = 20  # removed from Xen; answered EINVAL like any unknown type
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22
XS_INVALID = 0xFFFF

TYPE_NAMES = {
    XS_CONTROL: "CONTROL", XS_DIRECTORY: "DIRECTORY", XS_READ: "READ", XS_GET_PERMS: "GET_PERMS",
    XS_WATCH: "WATCH", XS_UNWATCH: "UNWATCH", XS_TRANSACTION_START: "TRANSACTION_START",
    XS_TRANSACTION_END: "TRANSACTION_END", XS_INTRODUCE: "INTRODUCE", XS_RELEASE: "RELEASE",
    XS_GET_DOMAIN_PATH: "GET_DOMAIN_PATH", XS_WRITE: "WRITE", XS_MKDIR: "MKDIR", XS_RM: "RM",
    XS_SET_PERMS: "SET_PERMS", XS_WATCH_EVENT: "WATCH_EVENT", XS_ERROR: "ERROR",
    XS_IS_DOMAIN_INTRODUCED: "IS_DOMAIN_INTRODUCED", XS_RESUME: "RESUME", XS_SET_TARGET: "SET_TARGET",
    XS_RESTRICT: "RESTRICT", XS_RESET_WATCHES: "RESET_WATCHES", XS_DIRECTORY_PART: "DIRECTORY_PART",
}

# xs_wire.h's xsd_errors[]: the only names that travel on the wire.
ERROR_NAMES = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO", "ENOTEMPTY", "ENOSYS",
    "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG",
)

HEADER = struct.Struct("<IIII")  # struct xsd_sockmsg: type, req_id, tx_id, len
HEADER_SIZE = HEADER.size
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
ABS_PATH_MAX = 3072  # XENSTORE_ABS_PATH_MAX
REL_PATH_MAX = 2048  # XENSTORE_REL_PATH_MAX

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
