"""One direction of a byte ring in a shared page: the PV console (xencons_interface, io/console.h) and
the xenstore ring (xenstore_domain_interface, io/xs_wire.h) are two of these each.

`size` bytes of data and two free-running u32 indices, consumer and producer, stored at `idx % size`
(MASK_XENCONS_IDX, MASK_XENSTORE_IDX). The other end is the guest: its index is read once per call, in
one access (PhysicalPages.u32), and never trusted: a producer more than a ring ahead of the consumer, or
a consumer past the producer, is inconsistent. Our own index is written only after the data.
"""

from __future__ import annotations

from ..core.memory import PhysicalPages

_M32 = 0xFFFFFFFF


class RingIndexError(Exception):
    """The indices the guest left cannot be right."""


class ByteRing:
    def __init__(self, mem: PhysicalPages, data_gpa: int, size: int, cons_gpa: int, prod_gpa: int) -> None:
        self.mem = mem
        self.data = data_gpa
        self.size = size
        self.cons = cons_gpa
        self.prod = prod_gpa

    def take(self, limit: int, clamp: bool = False) -> bytes:
        """Consume up to `limit` bytes (we are the consumer). A producer more than a ring ahead raises
        RingIndexError, or with `clamp` counts as one ring's worth (the console's choice: keep going)."""
        cons = self.mem.u32(self.cons)
        prod = self.mem.u32(self.prod)
        avail = (prod - cons) & _M32
        if avail > self.size:
            if not clamp:
                raise RingIndexError(f"producer {prod:#x} is {avail} bytes ahead of the consumer {cons:#x}")
            avail = self.size
        n = min(avail, limit)
        if n <= 0:
            return b""
        start = cons % self.size
        first = min(n, self.size - start)
        data = self.mem.read(self.data + start, first)
        if n > first:
            data += self.mem.read(self.data, n - first)
        self.mem.set_u32(self.cons, (cons + n) & _M32)
        return data

    def put(self, data: bytes | bytearray | memoryview) -> int:
        """Produce as much of `data` as there is room for (we are the producer); returns how much. A
        consumer past the producer raises RingIndexError."""
        cons = self.mem.u32(self.cons)
        prod = self.mem.u32(self.prod)
        used = (prod - cons) & _M32
        if used > self.size:
            raise RingIndexError(f"consumer {cons:#x} is past the producer {prod:#x}")
        n = min(self.size - used, len(data))
        if n <= 0:
            return 0
        start = prod % self.size
        first = min(n, self.size - start)
        self.mem.write(self.data + start, bytes(data[:first]))
        if n > first:
            self.mem.write(self.data, bytes(data[first:n]))
        # the data is in place before the producer moves (stores are not reordered on x86)
        self.mem.set_u32(self.prod, (prod + n) & _M32)
        return n
