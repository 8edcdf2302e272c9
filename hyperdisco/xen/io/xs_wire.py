"""xen/include/public/io/xs_wire.h: the xenstore wire protocol's message types, header, error names and
limits.

  - `enum xsd_sockmsg_type` numbers the messages from XS_CONTROL (formerly XS_DEBUG) = 0 up to
    XS_DIRECTORY_PART; value 20 was XS_RESTRICT, which later Xen removed; XS_INVALID = 0xffff.
  - `struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; }` precedes `len` payload bytes.
  - `struct xsd_errors xsd_errors[]` lists the error names sent (as strings, NUL terminated) in XS_ERROR
    replies: EINVAL EACCES EEXIST EISDIR ENOENT ENOMEM ENOSPC EIO ENOTEMPTY ENOSYS EROFS EBUSY EAGAIN
    EISCONN E2BIG.
  - XENSTORE_PAYLOAD_MAX 4096, XENSTORE_ABS_PATH_MAX 3072, XENSTORE_REL_PATH_MAX 2048.
"""

from __future__ import annotations

import struct

__all__ = [
    "XS_CONTROL", "XS_DEBUG", "XS_DIRECTORY", "XS_READ", "XS_GET_PERMS", "XS_WATCH", "XS_UNWATCH",
    "XS_TRANSACTION_START", "XS_TRANSACTION_END", "XS_INTRODUCE", "XS_RELEASE", "XS_GET_DOMAIN_PATH",
    "XS_WRITE", "XS_MKDIR", "XS_RM", "XS_SET_PERMS", "XS_WATCH_EVENT", "XS_ERROR", "XS_IS_DOMAIN_INTRODUCED",
    "XS_RESUME", "XS_SET_TARGET", "XS_RESTRICT", "XS_RESET_WATCHES", "XS_DIRECTORY_PART", "XS_INVALID",
    "TYPE_NAMES", "ERROR_NAMES", "HEADER", "HEADER_SIZE", "PAYLOAD_MAX", "ABS_PATH_MAX", "REL_PATH_MAX",
]

XS_CONTROL = 0
# the old name (xs_wire.h: #define XS_DEBUG XS_CONTROL; docs/misc/xenstore.txt: "DEBUG: Deprecated, now
# named CONTROL")
XS_DEBUG = XS_CONTROL
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

# the names of enum xsd_sockmsg_type's values, without the XS_ prefix
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
