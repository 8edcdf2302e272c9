"""GuestMemory bounds checks and VirtualAccess translation, on their own."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from hyperdisco.core.memory import PAGE, GuestFault, GuestMemory, VirtualAccess

RAM = 16 * PAGE
SPECIAL = 0x100000


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(RAM, "unit")
    m.add_region(SPECIAL, 2 * PAGE, "special")
    yield m
    m.close()


def test_ram_size_must_be_positive_page_multiple() -> None:
    for bad in (0, -PAGE, PAGE + 1):
        with pytest.raises(ValueError):
            GuestMemory(bad)


def test_read_write_inside_ram(mem: GuestMemory) -> None:
    mem.write(0x1234, b"hello")
    assert mem.read(0x1234, 5) == b"hello"
    mem.write(RAM - 4, b"tail")
    assert mem.read(RAM - 4, 4) == b"tail"
    mem.write(0, b"head")
    assert mem.read(0, 4) == b"head"


def test_ram_starts_zeroed(mem: GuestMemory) -> None:
    assert mem.read(0, RAM) == bytes(RAM)


def test_scalar_accessors(mem: GuestMemory) -> None:
    mem.set_u8(0x10, 0x1FF)
    assert mem.u8(0x10) == 0xFF
    mem.set_u32(0x20, 0x1_2345_6789)
    assert mem.u32(0x20) == 0x2345_6789
    mem.set_u64(0x30, -1)
    assert mem.u64(0x30) == (1 << 64) - 1
    fmt = struct.Struct("<HIQ")
    mem.pack(fmt, 0x40, 1, 2, 3)
    assert mem.unpack(fmt, 0x40) == (1, 2, 3)
    assert mem.read(0x40, 2) == b"\x01\x00"


def test_fill(mem: GuestMemory) -> None:
    mem.fill(0x100, 16, 0xAB)
    assert mem.read(0x100, 16) == b"\xab" * 16
    mem.fill(0x100, 8)
    assert mem.read(0x100, 16) == bytes(8) + b"\xab" * 8


def test_special_region_access(mem: GuestMemory) -> None:
    mem.write(SPECIAL + PAGE + 10, b"xyz")
    assert mem.read(SPECIAL + PAGE + 10, 3) == b"xyz"
    mem.set_u64(SPECIAL + 2 * PAGE - 8, 7)
    assert mem.u64(SPECIAL + 2 * PAGE - 8) == 7
    reg = mem.region_at(SPECIAL + 5)
    assert reg is not None and reg.name == "special" and reg.end == SPECIAL + 2 * PAGE
    assert reg.host_address != 0


def test_regions_are_separate_memory(mem: GuestMemory) -> None:
    mem.write(SPECIAL, b"S")
    assert mem.read(0, 1) == b"\0"
    assert mem.region_at(RAM) is None
    assert mem.region_at(RAM - 1).name == "ram"  # type: ignore[union-attr]


@pytest.mark.parametrize(("gpa", "n"), [
    (RAM - 4, 5),  # crosses the end of RAM
    (RAM - 1, 2),
    (RAM, 1),  # just past RAM
    (SPECIAL - 1, 2),  # starts in the hole before the special region
    (SPECIAL + 2 * PAGE - 4, 8),  # crosses the end of the special region
    (SPECIAL + 2 * PAGE, 1),
    (0x80000, 4),  # in the hole between RAM and the special region
    (-1, 1),
    (-PAGE, PAGE + 1),  # negative start reaching into RAM
    (1 << 64, 1),
    (0, RAM + 1),
])
def test_out_of_bounds_faults(mem: GuestMemory, gpa: int, n: int) -> None:
    with pytest.raises(GuestFault):
        mem.read(gpa, n)
    with pytest.raises(GuestFault):
        mem.write(gpa, b"\xcc" * n)
    if 0 <= gpa < RAM:
        # a refused write must not have touched the part that was inside guest memory
        assert mem.read(gpa, min(n, RAM - gpa)) == bytes(min(n, RAM - gpa))


def test_range_spanning_two_regions_faults() -> None:
    """Two adjacent regions are still two mappings: one access may not straddle them."""
    m = GuestMemory(4 * PAGE)
    m.add_region(4 * PAGE, PAGE, "next")
    m.read(4 * PAGE - 4, 4)
    m.read(4 * PAGE, 4)
    with pytest.raises(GuestFault):
        m.read(4 * PAGE - 4, 8)
    m.close()


@pytest.mark.parametrize("accessor", ["u8", "u32", "u64"])
def test_scalar_out_of_bounds(mem: GuestMemory, accessor: str) -> None:
    with pytest.raises(GuestFault):
        getattr(mem, accessor)(RAM - 1 if accessor != "u8" else RAM)
    with pytest.raises(GuestFault):
        getattr(mem, "set_" + accessor)(RAM - 1 if accessor != "u8" else RAM, 0)


def test_negative_length_faults(mem: GuestMemory) -> None:
    with pytest.raises(GuestFault):
        mem.read(0x100, -1)
    with pytest.raises(GuestFault):
        mem.read(RAM + 8, -16)


def test_fill_negative_length_faults(mem: GuestMemory) -> None:
    with pytest.raises(GuestFault):
        mem.fill(0x100, -1)


def test_zero_length_at_region_end_is_allowed(mem: GuestMemory) -> None:
    assert mem.read(RAM, 0) == b""


def test_add_region_validation(mem: GuestMemory) -> None:
    with pytest.raises(ValueError):
        mem.add_region(SPECIAL + 1, PAGE, "unaligned")
    with pytest.raises(ValueError):
        mem.add_region(0x200000, 100, "short")
    with pytest.raises(ValueError):
        mem.add_region(0x200000, 0, "empty")
    with pytest.raises(ValueError, match="overlaps"):
        mem.add_region(RAM - PAGE, 2 * PAGE, "over-ram")
    with pytest.raises(ValueError, match="overlaps"):
        mem.add_region(SPECIAL + PAGE, PAGE, "over-special")
    r = mem.add_region(SPECIAL + 2 * PAGE, PAGE, "adjacent")
    assert mem.region_at(SPECIAL + 2 * PAGE) is r


# -- VirtualAccess --------------------------------------------------------------------------------------
VA_BASE = 0xFFFF_8000_0000_0000


def _va(mem: GuestMemory, mapping: dict[int, int]) -> VirtualAccess:
    """`mapping`: virtual page -> physical page; anything else is unmapped."""

    def translate(va: int) -> int | None:
        page = mapping.get(va & ~(PAGE - 1))
        return None if page is None else page | (va & (PAGE - 1))

    return VirtualAccess(mem, translate)


def test_va_reads_through_translation(mem: GuestMemory) -> None:
    mem.write(3 * PAGE + 16, b"data")
    va = _va(mem, {VA_BASE: 3 * PAGE})
    assert va.read(VA_BASE + 16, 4) == b"data"
    va.write(VA_BASE + 100, b"back")
    assert mem.read(3 * PAGE + 100, 4) == b"back"


def test_va_cross_page_stitches_discontiguous_frames(mem: GuestMemory) -> None:
    # virtual pages in order map to physical pages in reverse order
    va = _va(mem, {VA_BASE: 5 * PAGE, VA_BASE + PAGE: 2 * PAGE, VA_BASE + 2 * PAGE: SPECIAL})
    mem.write(6 * PAGE - 3, b"abc")
    mem.write(2 * PAGE, b"d" * PAGE)
    mem.write(SPECIAL, b"efg")
    got = va.read(VA_BASE + PAGE - 3, 3 + PAGE + 3)
    assert got == b"abc" + b"d" * PAGE + b"efg"
    payload = bytes(range(256)) * 20  # 5120 bytes over three pages
    va.write(VA_BASE + PAGE - 100, payload)
    assert mem.read(6 * PAGE - 100, 100) == payload[:100]
    assert mem.read(2 * PAGE, PAGE) == payload[100:100 + PAGE]
    assert mem.read(SPECIAL, len(payload) - 100 - PAGE) == payload[100 + PAGE:]
    assert va.read(VA_BASE + PAGE - 100, len(payload)) == payload


def test_va_pack_unpack_across_page_boundary(mem: GuestMemory) -> None:
    va = _va(mem, {VA_BASE: 7 * PAGE, VA_BASE + PAGE: PAGE})
    fmt = struct.Struct("<QQ")
    va.pack(fmt, VA_BASE + PAGE - 4, 0x1122334455667788, 0x99)
    assert va.unpack(fmt, VA_BASE + PAGE - 4) == (0x1122334455667788, 0x99)
    assert mem.read(8 * PAGE - 4, 4) == bytes.fromhex("88776655")
    assert mem.read(PAGE, 4) == bytes.fromhex("44332211")


def test_va_unmapped_page_faults(mem: GuestMemory) -> None:
    va = _va(mem, {VA_BASE: 3 * PAGE})
    with pytest.raises(GuestFault, match="not mapped"):
        va.read(VA_BASE + PAGE, 1)
    # the second page of a crossing read is unmapped
    with pytest.raises(GuestFault):
        va.read(VA_BASE + PAGE - 2, 4)
    with pytest.raises(GuestFault):
        va.write(VA_BASE + PAGE - 2, b"xxxx")


def test_va_write_that_faults_midway_touches_nothing_before_the_fault_page(mem: GuestMemory) -> None:
    """The translation of every page is checked before anything is written."""
    va = _va(mem, {VA_BASE: 3 * PAGE})
    with pytest.raises(GuestFault):
        va.write(VA_BASE + PAGE - 2, b"zzzz")
    assert mem.read(4 * PAGE - 2, 2) == b"\0\0"


def test_va_translation_to_non_guest_memory_faults(mem: GuestMemory) -> None:
    va = _va(mem, {VA_BASE: 0x7FFF_0000, VA_BASE + PAGE: RAM - PAGE})
    with pytest.raises(GuestFault):
        va.read(VA_BASE, 8)
    # the last page of RAM is fine, the next virtual page is not mapped
    va.read(VA_BASE + PAGE, PAGE)
    with pytest.raises(GuestFault):
        va.read(VA_BASE + PAGE, PAGE + 1)


@pytest.mark.parametrize("n", [-1, (1 << 24) + 1, 1 << 40])
def test_va_bad_lengths_fault_without_translating(mem: GuestMemory, n: int) -> None:
    calls: list[int] = []

    def translate(va: int) -> int | None:
        calls.append(va)
        return va

    with pytest.raises(GuestFault):
        VirtualAccess(mem, translate).read(0, n)
    assert calls == []


def test_va_zero_length(mem: GuestMemory) -> None:
    assert _va(mem, {}).read(VA_BASE, 0) == b""
