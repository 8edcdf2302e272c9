"""The byte ring shared by the console and xenstore backends: wrap-around, hostile indices."""

from __future__ import annotations

import pytest

from hyperdisco.backends.byte_ring import ByteRing, RingIndexError
from hyperdisco.core.memory import PAGE, GuestMemory


def ring(mem: GuestMemory, size: int = 16) -> ByteRing:
    return ByteRing(mem, 0x100, size, 0x200, 0x204)


def test_put_take_wraps_around() -> None:
    mem = GuestMemory(4 * PAGE)
    r = ring(mem)
    mem.set_u32(0x200, 0xFFFFFFF8)  # free-running indices near the wrap of u32 and of the ring
    mem.set_u32(0x204, 0xFFFFFFF8)
    assert r.put(b"0123456789abcdefXYZ") == 16  # one ring's worth, no more
    assert r.put(b"more") == 0
    assert r.take(5) == b"01234"
    assert r.put(b"XYZ") == 3
    assert r.take(100) == b"56789abcdefXYZ"
    assert mem.u32(0x200) == mem.u32(0x204) == (0xFFFFFFF8 + 19) & 0xFFFFFFFF
    mem.close()


def test_hostile_indices() -> None:
    mem = GuestMemory(4 * PAGE)
    r = ring(mem)
    mem.set_u32(0x204, 1000)  # a producer far ahead of the consumer
    with pytest.raises(RingIndexError):
        r.take(10)
    assert len(r.take(100, clamp=True)) == 16  # the console's choice: one ring's worth
    mem.set_u32(0x200, 50)
    mem.set_u32(0x204, 40)  # a consumer past the producer
    with pytest.raises(RingIndexError):
        r.put(b"x")
    mem.close()
