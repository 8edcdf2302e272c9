"""core/pagewalk.py: whether a supervisor write may reach a guest-virtual address, in each paging mode."""

from __future__ import annotations

import struct

from hyperdisco.core.pagewalk import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, supervisor_may_write

P, RW, PS = 1, 2, 0x80
ON = CR0_PG | CR0_WP | 1


class Mem:
    def __init__(self) -> None:
        self.b = bytearray(1 << 22)

    def u64(self, pa: int) -> int:
        return int(struct.unpack_from("<Q", self.b, pa)[0])

    def u32(self, pa: int) -> int:
        return int(struct.unpack_from("<I", self.b, pa)[0])

    def set64(self, pa: int, v: int) -> None:
        struct.pack_into("<Q", self.b, pa, v)

    def set32(self, pa: int, v: int) -> None:
        struct.pack_into("<I", self.b, pa, v)


def test_long_mode_4k_and_2m_pages() -> None:
    m = Mem()
    pml4, pdpt, pdir, pt = 0x1000, 0x2000, 0x3000, 0x4000
    m.set64(pml4, pdpt | P | RW)
    m.set64(pdpt, pdir | P | RW)
    m.set64(pdir + 0 * 8, pt | P | RW)          # 0..2 MiB through a page table
    m.set64(pdir + 1 * 8, 0x200000 | P | PS)     # 2..4 MiB: a read-only 2 MiB page
    m.set64(pt + 5 * 8, 0x5000 | P | RW)         # page 5 writable
    m.set64(pt + 6 * 8, 0x6000 | P)              # page 6 read-only

    def may(va: int, cr0: int = ON) -> bool:
        return supervisor_may_write(m.u64, m.u32, cr0, pml4, 0, True, va)

    assert may(0x5123) and not may(0x6000) and not may(0x200000 + 0x1234)
    assert may(0x7000)  # not present: the translation reports it, not the permission check
    assert may(0x6000, cr0=CR0_PG | 1)  # CR0.WP clear: supervisor writes ignore R/W
    assert may(0x6000, cr0=1)  # paging off
    m.set64(pdpt, pdir | P)  # a read-only upper level covers everything below it
    assert not may(0x5123)


def test_pae_and_two_level() -> None:
    m = Mem()
    pdpt, pdir, pt = 0x1000, 0x2000, 0x3000
    m.set64(pdpt, pdir | P)  # PAE PDPTEs have no R/W bit
    m.set64(pdir, pt | P | RW)
    m.set64(pt + 8, 0x1000 | P)
    assert not supervisor_may_write(m.u64, m.u32, ON, pdpt, CR4_PAE, False, 0x1000)
    assert supervisor_may_write(m.u64, m.u32, ON, pdpt, CR4_PAE, False, 0x2000)
    m2 = Mem()
    m2.set32(0x1000, 0x2000 | P | RW)                # PDE 0 -> page table
    m2.set32(0x1000 + 4, 0x400000 | P | PS)          # PDE 1: a read-only 4 MiB page (CR4.PSE)
    m2.set32(0x2000 + 3 * 4, 0x3000 | P)
    assert not supervisor_may_write(m2.u64, m2.u32, ON, 0x1000, CR4_PSE, False, 0x3000)
    assert not supervisor_may_write(m2.u64, m2.u32, ON, 0x1000, CR4_PSE, False, 0x400000)
    assert supervisor_may_write(m2.u64, m2.u32, ON, 0x1000, CR4_PSE, False, 0x4000)
