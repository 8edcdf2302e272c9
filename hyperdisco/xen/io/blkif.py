"""xen/include/public/io/blkif.h: the block protocol as the 64-bit (x86_64-abi) frontend lays it out.

Request codes, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, struct blkif_request
/ _discard / _indirect / _segment, struct blkif_response, BLKIF_RSP_*, VDISK_*; the ring of them follows
ring.h (ring.py). Struct layouts below are the natural x86-64 C layouts of those declarations (u64 fields
8-aligned). The `virtual-device` number blkif.h refers to is encoded as docs/misc/vbd-interface.txt says.
"""

from __future__ import annotations

import struct

from ..xen import PAGE
from .ring import ring_size

__all__ = [
    "SECTOR", "SECTORS_PER_PAGE", "OP_READ", "OP_WRITE", "OP_WRITE_BARRIER", "OP_FLUSH_DISKCACHE",
    "OP_RESERVED_1", "OP_DISCARD", "OP_INDIRECT", "OP_NAMES", "MAX_SEGMENTS_PER_REQUEST",
    "MAX_INDIRECT_PAGES_PER_REQUEST", "RSP_OKAY", "RSP_ERROR", "RSP_EOPNOTSUPP", "VDISK_CDROM",
    "VDISK_REMOVABLE", "VDISK_READONLY", "REQUEST_HEAD", "REQUEST_SIZE", "SEGMENT",
    "SEGMENTS_PER_INDIRECT_PAGE", "DISCARD", "DISCARD_SECURE", "INDIRECT", "RESPONSE", "RING_SIZE",
    "XVD_MAJOR", "EXTENDED_VBD", "vdev_to_devid", "devid_to_vdev",
]

SECTOR = 512
SECTORS_PER_PAGE = PAGE // SECTOR  # last_sect may be at most 7 (blkif.h: 512-byte units in a frame)

# request codes (blkif.h)
OP_READ = 0
OP_WRITE = 1
OP_WRITE_BARRIER = 2
OP_FLUSH_DISKCACHE = 3
OP_RESERVED_1 = 4
OP_DISCARD = 5
OP_INDIRECT = 6
OP_NAMES = {OP_READ: "read", OP_WRITE: "write", OP_WRITE_BARRIER: "barrier", OP_FLUSH_DISKCACHE: "flush",
            OP_DISCARD: "discard", OP_INDIRECT: "indirect"}

MAX_SEGMENTS_PER_REQUEST = 11  # BLKIF_MAX_SEGMENTS_PER_REQUEST
MAX_INDIRECT_PAGES_PER_REQUEST = 8  # BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST

# status codes (blkif.h)
RSP_OKAY = 0
RSP_ERROR = -1
RSP_EOPNOTSUPP = -2

# the "info" node's bits (blkif.h)
VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

# struct blkif_request: operation u8, nr_segments u8, handle u16, (pad 4), id u64, sector_number u64,
# then seg[11] from offset 24
REQUEST_HEAD = struct.Struct("<BBHxxxxQQ")
REQUEST_SIZE = REQUEST_HEAD.size + MAX_SEGMENTS_PER_REQUEST * 8  # 112 bytes: the ring's entry size
# struct blkif_request_segment: gref u32, first_sect u8, last_sect u8, (pad 2)
SEGMENT = struct.Struct("<IBBxx")
SEGMENTS_PER_INDIRECT_PAGE = PAGE // SEGMENT.size  # 512
# struct blkif_request_discard: operation u8, flag u8, handle u16, (pad), id u64, sector_number u64,
# nr_sectors u64
DISCARD = struct.Struct("<BBHxxxxQQQ")
DISCARD_SECURE = 1
# struct blkif_request_indirect (x86-64, no trailing pad): operation u8, indirect_op u8, nr_segments u16,
# (pad), id u64, sector_number u64, handle u16, (pad 2), indirect_grefs[8] u32
INDIRECT = struct.Struct("<BBHxxxxQQHxx8I")
# struct blkif_response: id u64, operation u8, (pad), status i16, (pad to 16)
RESPONSE = struct.Struct("<QBxhxxxx")

RING_SIZE = ring_size(REQUEST_SIZE)  # DEFINE_RING_TYPES(blkif, ...): 32 entries in one 4 KiB page

# Linux (include/uapi/linux/major.h, drivers/block/xen-blkfront.c): xvd disks are major 202, 16 minors
# per disk for the first 16; beyond that the "extended" vbd encoding (docs/misc/vbd-interface.txt).
XVD_MAJOR = 202
EXTENDED_VBD = 1 << 28


def vdev_to_devid(vdev: str) -> int:
    """xvdX -> the xenstore device id xl uses: 202<<8 | index<<4 for the first 16 disks (xvda -> 51712),
    then (1<<28) | index<<8 (docs/misc/vbd-interface.txt)."""
    letters = vdev[3:]
    if not vdev.startswith("xvd") or not letters or any(not "a" <= c <= "z" for c in letters):
        raise ValueError(f"vdev {vdev!r} is not xvd[a-z]+")
    idx = 0
    for c in letters:
        idx = idx * 26 + (ord(c) - ord("a") + 1)
    idx -= 1
    if idx < 16:
        return XVD_MAJOR << 8 | idx << 4
    if idx >= 1 << 20:
        raise ValueError(f"vdev {vdev!r} is out of range")
    return EXTENDED_VBD | idx << 8


def devid_to_vdev(devid: int) -> str:
    if devid & EXTENDED_VBD:
        idx = (devid & ~EXTENDED_VBD) >> 8
    elif devid >> 8 == XVD_MAJOR:
        idx = (devid & 0xFF) >> 4
    else:
        return str(devid)
    name = ""
    idx += 1
    while idx:
        idx, r = divmod(idx - 1, 26)
        name = chr(ord("a") + r) + name
    return "xvd" + name
