"""xen/include/public/io/console.h: struct xencons_interface, the PV console ring page.

The page holds `in[1024]`, `out[2048]`, then in_cons, in_prod, out_cons, out_prod (XENCONS_RING_IDX,
uint32_t each).
"""

from __future__ import annotations

import struct

__all__ = ["IN_SIZE", "OUT_SIZE", "IDX", "IDX_OFF"]

IN_SIZE, OUT_SIZE = 1024, 2048  # char in[1024], out[2048]
IDX = struct.Struct("<IIII")  # in_cons, in_prod, out_cons, out_prod
IDX_OFF = IN_SIZE + OUT_SIZE
