"""xen/include/public/io/ring.h: the generic shared ring (DEFINE_RING_TYPES).

The shared ring starts with req_prod, req_event, rsp_prod, rsp_event (RING_IDX = uint32_t) and 48 bytes
of pvt/__pad, then the entries, each the union of the protocol's request and response; __RING_SIZE rounds
the entry count down to a power of two.
"""

from __future__ import annotations

import struct

from ..xen import PAGE

__all__ = ["RING_INDEX", "REQ_PROD", "REQ_EVENT", "RSP_PROD", "RSP_EVENT", "RING_HEADER", "ring_size"]

# the shared ring (ring.h): four RING_IDX then pad to 64 bytes, then the entries
RING_INDEX = struct.Struct("<I")
REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT = 0, 4, 8, 12
RING_HEADER = 64


def ring_size(entry: int, page_bytes: int = PAGE) -> int:
    """__RING_SIZE: the number of `entry`-byte entries that fit after the header, rounded down to a power
    of two."""
    n = (page_bytes - RING_HEADER) // entry
    return 1 << (n.bit_length() - 1) if n else 0
