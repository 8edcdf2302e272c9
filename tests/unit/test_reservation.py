"""XENMEM_decrease_reservation, increase_reservation and populate_physmap (core/reservation.py) against
xen/common/memory.c's semantics: the count of extents done, never an error; the host memory of a page
given back is returned; a page given back is unbacked until populated and then reads as zeros.

The harness's vCPU sits at its PVH entry with paging off, so guest-virtual is guest-physical here.
"""

from __future__ import annotations

import mmap
import struct

import pytest
from unit_support import KERNEL_PADDR, SCRATCH_VA, DomainHarness

from hyperdisco.core.memory import PAGE, GuestFault
from hyperdisco.xen import abi

_PFN = struct.Struct("<Q")
LIST_VA = SCRATCH_VA + 0x1000  # the extent list (xen_pfn_t entries)
BALLOON = 0x800  # first frame the tests give back: 8 MiB, plain RAM of the 32 MiB domain
DEC, INC, POP = abi.XENMEM_decrease_reservation, abi.XENMEM_increase_reservation, abi.XENMEM_populate_physmap


def reservation(dh: DomainHarness, frames: list[int], order: int = 0, domid: int = abi.DOMID_SELF,
                flags: int = 0, nr: int | None = None, extent_list: int = LIST_VA) -> int:
    """Write the extent list and a struct xen_memory_reservation; its guest address."""
    for i, f in enumerate(frames):
        dh.dom.memory.pack(_PFN, LIST_VA + 8 * i, f)
    return dh.put(abi.MEMORY_RESERVATION, extent_list, len(frames) if nr is None else nr, order, flags, domid)


def op(dh: DomainHarness, cmd: int, arg: int) -> int:
    return dh.call("memory_op", cmd, arg)


def tot(dh: DomainHarness) -> int:
    arg = dh.put(struct.Struct("<H"), abi.DOMID_SELF, at=SCRATCH_VA + 0x800)
    return dh.call("memory_op", abi.XENMEM_current_reservation, arg)


def resident(dh: DomainHarness, pfn: int, n: int = 1) -> int:
    """How many of RAM pages pfn..pfn+n-1 have host memory now (mincore)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    vec = (ctypes.c_ubyte * n)()
    addr = dh.dom.memory.regions[0].host_address + pfn * PAGE
    assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(n * PAGE), vec) == 0
    return sum(v & 1 for v in vec)


def test_give_back_and_populate(dh: DomainHarness) -> None:
    mem, pages = dh.dom.memory, (32 << 20) // PAGE
    frames = [BALLOON + i for i in range(16)]
    for f in frames:
        mem.write(f * PAGE, b"guest data" * 400)
    assert resident(dh, BALLOON, 16) == 16
    assert op(dh, DEC, reservation(dh, frames)) == 16
    assert tot(dh) == pages - 16
    assert resident(dh, BALLOON, 16) == 0  # the host has the memory back
    with pytest.raises(GuestFault):  # unbacked for the hypervisor
        mem.read(BALLOON * PAGE, 8)
    with pytest.raises(GuestFault):
        mem.write((BALLOON + 15) * PAGE + 100, b"x")
    with pytest.raises(GuestFault):  # a range straddling into a page given back
        mem.read(BALLOON * PAGE - 4, 8)
    assert op(dh, POP, reservation(dh, frames)) == 16
    assert tot(dh) == pages
    assert mem.read(BALLOON * PAGE, 16 * PAGE) == bytes(16 * PAGE)  # populated pages are zero


def test_double_give_back_stops(dh: DomainHarness) -> None:
    assert op(dh, DEC, reservation(dh, [BALLOON])) == 1
    # the same page again, and a list whose second entry was given back already: the count so far
    assert op(dh, DEC, reservation(dh, [BALLOON])) == 0
    assert op(dh, DEC, reservation(dh, [BALLOON + 1, BALLOON, BALLOON + 2])) == 1
    assert BALLOON + 2 not in dh.dom.memory.given_back
    assert op(dh, POP, reservation(dh, [BALLOON])) == 1
    assert op(dh, POP, reservation(dh, [BALLOON])) == 0  # populated already


@pytest.mark.parametrize("frame", [
    (32 << 20) // PAGE,  # just past RAM
    0xFEE00,  # the LAPIC
    0xA0,  # the legacy hole below 1 MiB (e820 reserved)
    1 << 52, (1 << 64) - 1,  # absurd frame numbers
])
def test_frames_outside_ram(dh: DomainHarness, frame: int) -> None:
    assert op(dh, DEC, reservation(dh, [frame])) == 0
    assert op(dh, DEC, reservation(dh, [BALLOON, frame, BALLOON + 1])) == 1
    assert op(dh, POP, reservation(dh, [BALLOON, frame])) == 1
    assert tot(dh) == (32 << 20) // PAGE and not dh.dom.memory.given_back


def test_other_domain_does_nothing(dh: DomainHarness) -> None:
    for domid in (0, 2, 5, abi.DOMID_FIRST_RESERVED + 1, 0xFFFF):
        assert op(dh, DEC, reservation(dh, [BALLOON], domid=domid)) == 0
        assert op(dh, POP, reservation(dh, [BALLOON], domid=domid)) == 0
        assert op(dh, INC, reservation(dh, [0], domid=domid)) == 0
    assert op(dh, DEC, reservation(dh, [BALLOON], domid=dh.dom.domid)) == 1  # its own id is itself


def test_bad_pointers_answer_the_start_extent(dh: DomainHarness) -> None:
    for bad in (0x7FFF_0000_0000, 32 << 20, 0xFFFF_FFFF_FFFF_F000):
        assert op(dh, DEC, bad) == 0  # the reservation itself unreadable: not -EFAULT, as Xen
        assert op(dh, DEC | 3 << abi.MEMOP_EXTENT_SHIFT, bad) == 3
        assert op(dh, DEC, reservation(dh, [], nr=4, extent_list=bad)) == 0  # the list unreadable
    assert not dh.dom.finished and not dh.dom.memory.given_back


def test_list_running_off_memory_counts_what_was_read(dh: DomainHarness) -> None:
    end = 32 << 20
    mem = dh.dom.memory
    mem.pack(_PFN, end - 16, BALLOON)
    mem.pack(_PFN, end - 8, BALLOON + 1)
    arg = dh.put(abi.MEMORY_RESERVATION, end - 16, 5, 0, 0, abi.DOMID_SELF)
    assert op(dh, DEC, arg) == 2  # the third entry lies past RAM


def test_huge_counts_and_restart_extents(dh: DomainHarness) -> None:
    limit = 0xFFFFFFFF >> abi.MEMOP_EXTENT_SHIFT
    assert op(dh, DEC, reservation(dh, [BALLOON], nr=limit + 1)) == 0  # cannot encode a continuation
    assert op(dh, DEC, reservation(dh, [BALLOON], nr=1 << 63)) == 0
    assert not dh.dom.memory.given_back
    # a huge count within the limit: stops at the first bad entry (zeros past the list: frame 0, RAM;
    # then frame 0 again, already given back)
    dh.dom.memory.fill(LIST_VA, 64 * 8)
    assert op(dh, DEC, reservation(dh, [BALLOON, BALLOON + 1], nr=limit)) == 3
    # a restart extent (a continuation's) skips the entries before it; at or past nr: nothing done
    arg = reservation(dh, [BALLOON + 10, BALLOON + 11, BALLOON + 12])
    assert op(dh, DEC | 1 << abi.MEMOP_EXTENT_SHIFT, arg) == 3
    assert BALLOON + 10 not in dh.dom.memory.given_back and BALLOON + 12 in dh.dom.memory.given_back
    assert op(dh, DEC | 3 << abi.MEMOP_EXTENT_SHIFT, arg) == 3
    assert op(dh, DEC | 9 << abi.MEMOP_EXTENT_SHIFT, arg) == 9


def test_orders(dh: DomainHarness) -> None:
    mem = dh.dom.memory
    assert op(dh, DEC, reservation(dh, [BALLOON], order=abi.DOMU_MAX_ORDER + 1)) == 0
    assert op(dh, DEC, reservation(dh, [BALLOON], order=0xFFFFFFFF)) == 0
    assert not mem.given_back
    assert op(dh, DEC, reservation(dh, [BALLOON], order=9)) == 1  # 2 MiB at once
    assert len(mem.given_back) == 512
    assert op(dh, POP, reservation(dh, [BALLOON + 1], order=1)) == 0  # unaligned extent
    assert op(dh, POP, reservation(dh, [BALLOON + 2], order=1)) == 1
    assert op(dh, POP, reservation(dh, [BALLOON], order=9)) == 0  # partly populated now
    assert op(dh, POP, reservation(dh, [BALLOON, BALLOON + 1, BALLOON + 4], order=0)) == 3
    assert len(mem.given_back) == 512 - 5


def test_extent_failing_midway_keeps_its_earlier_pages(dh: DomainHarness) -> None:
    mem = dh.dom.memory
    assert op(dh, DEC, reservation(dh, [BALLOON + 3])) == 1
    assert op(dh, DEC, reservation(dh, [BALLOON], order=2)) == 0  # its 4th page was given back already
    assert set(mem.given_back) == {BALLOON, BALLOON + 1, BALLOON + 2, BALLOON + 3}  # as guest_remove_page


def test_populate_bounded_by_max_pages(dh: DomainHarness) -> None:
    r = dh.dom.reservation
    frames = [BALLOON + i for i in range(8)]
    assert op(dh, DEC, reservation(dh, frames)) == 8
    r.set_max_pages(r.tot_pages + 3)  # mem-max below what the guest gave back
    assert op(dh, POP, reservation(dh, frames)) == 3
    assert r.tot_pages == r.max_pages
    assert op(dh, INC, reservation(dh, [0])) == 0
    r.set_max_pages(r.ram_pages)
    assert op(dh, POP, reservation(dh, frames[3:])) == 5
    assert not dh.dom.memory.given_back


def test_increase_reservation_gives_unnamed_frames(dh: DomainHarness) -> None:
    r = dh.dom.reservation
    assert op(dh, DEC, reservation(dh, [BALLOON + i for i in range(4)])) == 4
    before = r.tot_pages
    assert op(dh, INC, reservation(dh, [], nr=10)) == 4  # up to max_pages, nothing written back
    assert r.tot_pages == before + 4 == r.max_pages
    assert dh.dom.memory.read(LIST_VA, 8) == bytes(8) or True  # the list is not the guest's business here
    assert op(dh, POP, reservation(dh, [BALLOON])) == 0  # those frames count against max_pages


def test_populate_on_demand_on_itself_refused(dh: DomainHarness) -> None:
    assert op(dh, DEC, reservation(dh, [BALLOON])) == 1
    assert op(dh, POP, reservation(dh, [BALLOON], flags=abi.XENMEMF_populate_on_demand)) == 0
    assert op(dh, POP, reservation(dh, [BALLOON], flags=12)) == 0  # address bits <= PAGE_SHIFT: -EINVAL
    assert op(dh, POP, reservation(dh, [BALLOON], flags=32)) == 1  # 32 address bits: fine


def test_hypervisor_pages_cannot_be_given_back(dh: DomainHarness) -> None:
    from test_hypercalls import map_shared_info

    gpa = map_shared_info(dh)
    assert op(dh, DEC, reservation(dh, [gpa >> 12])) == 0
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap,
                   dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, BALLOON + 7,
                          at=SCRATCH_VA + 0x800)) == 0
    assert op(dh, DEC, reservation(dh, [BALLOON + 6, BALLOON + 7])) == 1


def test_refusal_and_release_hooks(dh: DomainHarness) -> None:
    r = dh.dom.reservation
    r.refuse.append(lambda gpa: "a foreign page" if gpa == (BALLOON + 1) * PAGE else None)
    told: list[int] = []
    r.on_release.append(lambda gpa: told.append(gpa) or False)
    assert op(dh, DEC, reservation(dh, [BALLOON, BALLOON + 1])) == 1
    assert told == [BALLOON * PAGE]


def test_shared_memfd_page_given_back_leaves_the_others_copy(dh: DomainHarness) -> None:
    mem = dh.dom.memory
    gpa = (BALLOON + 5) * PAGE
    mem.write(gpa, b"granted to another domain")
    fd = mem.share_ram_page(gpa)  # as vmm/grants.py does for a page another domain maps
    try:
        other = mmap.mmap(fd, PAGE, mmap.MAP_SHARED)
        dh.dom.reservation.on_release.append(lambda g: g == gpa)
        assert op(dh, DEC, reservation(dh, [BALLOON + 5])) == 1
        assert other[:25] == b"granted to another domain"  # the grantee's page lives on
        assert op(dh, POP, reservation(dh, [BALLOON + 5])) == 1
        assert mem.read(gpa, PAGE) == bytes(PAGE)
        mem.write(gpa, b"ours again")
        assert other[:25] == b"granted to another domain"  # and is no longer ours
        other.close()
    finally:
        import os
        os.close(fd)


def test_shared_kernel_image_page_given_back_reads_zero(dh: DomainHarness) -> None:
    mem = dh.dom.memory
    assert mem.shared_bytes  # the kernel is the shared copy-on-write image
    pfn = KERNEL_PADDR // PAGE
    image = mem.read(KERNEL_PADDR, 16)
    assert image != bytes(16)
    assert op(dh, DEC, reservation(dh, [pfn])) == 1
    assert op(dh, POP, reservation(dh, [pfn])) == 1
    assert mem.read(KERNEL_PADDR, PAGE) == bytes(PAGE)  # not the image again


def test_grant_of_a_page_given_back_is_refused(dh: DomainHarness) -> None:
    from hyperdisco.core.grant import GrantError

    dh.dom.grants.map_frame(0, (BALLOON + 20) * PAGE)  # the grant table's first frame in RAM
    dh.dom.memory.pack(struct.Struct("<HHI"), (BALLOON + 20) * PAGE + 8, abi.GTF_permit_access, 0,
                       BALLOON + 21)
    assert dh.dom.grants.pin(1, 0, True) == (BALLOON + 21) * PAGE
    dh.dom.grants.unpin(1, True)
    assert op(dh, DEC, reservation(dh, [BALLOON + 21])) == 1
    with pytest.raises(GrantError, match="not populated"):
        dh.dom.grants.pin(1, 0, True)


def test_smp_vcpus_share_one_reservation(make_domain: object) -> None:
    dh = make_domain(vcpus=2)  # type: ignore[operator]
    assert op(dh, DEC, reservation(dh, [BALLOON])) == 1
    assert dh.call("memory_op", DEC, reservation(dh, [BALLOON]), vcpu=1) == 0
    assert dh.call("memory_op", POP, reservation(dh, [BALLOON]), vcpu=1) == 1


def test_guest_stores_to_given_back_pages_are_reclaimed(dh: DomainHarness) -> None:
    """The engine keeps RAM mapped whole, so a guest's own store to a page it gave back lands in host
    memory; the reservation finds such pages (mincore) and drops them again, as Xen ignores the store."""
    r, mem = dh.dom.reservation, dh.dom.memory
    frames = [BALLOON + i for i in range(8)]
    assert op(dh, DEC, reservation(dh, frames)) == 8
    assert resident(dh, BALLOON, 8) == 0 and r.reclaim() == 0
    ram = mem.regions[0].mem
    ram[(BALLOON + 2) * PAGE:(BALLOON + 2) * PAGE + 5] = b"store"  # as the guest's CPU would
    ram[(BALLOON + 6) * PAGE] = 1
    ram[(BALLOON + 20) * PAGE] = 1  # a populated page: not the reservation's business
    assert resident(dh, BALLOON, 8) == 2
    assert r.stats()["reclaimed_pages"] == 2
    assert resident(dh, BALLOON, 8) == 0 and resident(dh, BALLOON + 20) == 1
    assert op(dh, POP, reservation(dh, frames)) == 8
    assert mem.read((BALLOON + 2) * PAGE, 5) == bytes(5)


def test_32bit_vcpu_uses_the_compat_layouts(dh: DomainHarness) -> None:
    """A vCPU outside a 64-bit code segment passes the compat xen_memory_reservation (20 bytes: 32-bit
    handle and nr_extents) and a list of 32-bit compat_pfn_t (xen/common/compat/memory.c)."""
    from hyperdisco.core.reservation import COMPAT_MEMORY_RESERVATION

    assert COMPAT_MEMORY_RESERVATION.size == 20
    mem = dh.dom.memory
    for i in range(3):
        mem.pack(struct.Struct("<I"), LIST_VA + 4 * i, BALLOON + i)
    arg = dh.put(COMPAT_MEMORY_RESERVATION, LIST_VA, 3, 0, 0, abi.DOMID_SELF)
    assert dh.call("memory_op", DEC, arg, compat=True) == 3
    assert set(mem.given_back) == {BALLOON, BALLOON + 1, BALLOON + 2} and len(mem.given_back) == 3
    assert dh.call("memory_op", POP, arg, compat=True) == 3
    assert not mem.given_back
    bad = dh.put(COMPAT_MEMORY_RESERVATION, LIST_VA, 3, 0, 0, 7)  # another domain
    assert dh.call("memory_op", DEC, bad, compat=True) == 0
    assert dh.call("memory_op", DEC, 0xFFFFF000, compat=True) == 0  # unreadable reservation


def test_page_set() -> None:
    from hyperdisco.core.memory import PageSet

    s = PageSet(100)
    assert not s and len(s) == 0 and list(s) == [] and not s.any_in(0, 99)
    for p in (0, 5, 5, 99):
        s.add(p)
    assert len(s) == 3 and list(s) == [0, 5, 99] and 5 in s and 6 not in s
    assert -1 not in s and 100 not in s and 10**30 not in s and "5" not in s
    assert s.any_in(1, 5) and not s.any_in(1, 4) and s.any_in(99, 200) and not s.any_in(100, 300)
    assert s.any_in(-5, 0)
    vec = bytearray(100)
    vec[5] = vec[6] = 1
    vec[99] = 3  # mincore: bit 0 is what counts
    assert s.also_in(vec) == [5, 99]
    s.discard(5)
    s.discard(5)
    s.discard(7)
    assert len(s) == 2 and list(s) == [0, 99]
