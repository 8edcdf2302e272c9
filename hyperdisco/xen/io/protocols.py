"""xen/include/public/io/protocols.h: the values of a frontend's `protocol` node."""

from __future__ import annotations

__all__ = ["PROTO_X86_64"]

# the "protocol" node (xen/include/public/io/protocols.h): XEN_IO_PROTO_ABI_X86_64
PROTO_X86_64 = "x86_64-abi"
