"""Grant mappings between domain processes: GNTTABOP_map_grant_ref / unmap_grant_ref brokered by domain 0
(vmm/grants.py, dom0/grants.py), with two real domains joined through the real broker the way their
channels would (descriptors duplicated as SCM_RIGHTS would)."""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from unit_support import DomainHarness

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.core.grant import GrantError, GrantReadOnly
from hyperdisco.core.memory import PAGE, GuestFault, GuestMemory
from hyperdisco.dom0.grants import GrantBroker
from hyperdisco.engine.tcg.engine import TcgEngine, TcgVcpu
from hyperdisco.loader.elf import KernelImage
from hyperdisco.platform import layout
from hyperdisco.vmm.grants import BrokeredGrants
from hyperdisco.xen import abi

GRANT_FRAME = 0x400000  # A's grant table frame 0 (a RAM page)
SHARED = 0x500000  # the page A grants
PLACE = 0x8000000  # where B maps it: above B's 32 MiB of RAM, as Linux's unpopulated space
BUSY = abi.GTF_reading | abi.GTF_writing


class ProcessEnd:
    """Domain 0's end of one domain process, dispatching into its BrokeredGrants as domain_process.py."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.finished = False
        self.grants: BrokeredGrants | None = None
        self.delivered: list[int] = []  # memfds domain 0 handed this process (copies kept by the test)

    def send(self, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        assert self.grants is not None
        if self.finished:
            return
        copies = [os.dup(fd) for fd in fds]
        t = msg["t"]
        if t == "gnt-mapped":
            self.delivered += [os.dup(fd) for fd in copies]
            self.grants.mapped(msg, copies)
        elif t == "gnt-peer-map":
            self.grants.peer_request("map", msg)
        elif t == "gnt-peer-unmap":
            self.grants.peer_request("unmap", msg)


class FakeHost:
    def __init__(self) -> None:
        self.ends: dict[int, ProcessEnd] = {}
        self.grants = GrantBroker(self)  # type: ignore[arg-type]

    def domain(self, domid: int) -> ProcessEnd | None:
        return self.ends.get(domid)


def brokered(dom: Domain, host: FakeHost) -> ProcessEnd:
    end = ProcessEnd(dom.domid)
    host.ends[dom.domid] = end

    def to_dom0(msg: dict[str, Any], fds: list[int]) -> None:
        copies = [os.dup(fd) for fd in fds]  # the channel copies; the sender keeps its own
        t = msg["t"]
        if t == "gnt-map":
            host.grants.map(end, msg)  # type: ignore[arg-type]
        elif t == "gnt-unmap":
            host.grants.unmap(end, msg)  # type: ignore[arg-type]
        elif t == "gnt-shared":
            host.grants.shared(end, msg, copies)  # type: ignore[arg-type]
            copies = []
        for fd in copies:
            os.close(fd)

    end.grants = BrokeredGrants(dom, to_dom0)
    dom.remote_grants = end.grants
    return end


@pytest.fixture
def trio(kernel: KernelImage, engine: TcgEngine,
         clock: Clock) -> Iterator[tuple[DomainHarness, DomainHarness, DomainHarness, FakeHost]]:
    host = FakeHost()
    hs = []
    for domid in (1, 2, 3):
        cfg = DomainConfig(f"d{domid}", kernel, None, "console=hvc0", 32)
        dom = Domain(domid, cfg, engine, clock, lambda b: None, lambda m: None)
        brokered(dom, host)
        h = DomainHarness(dom, [])
        h.call("memory_op", abi.XENMEM_add_to_physmap,
               h.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0,
                     GRANT_FRAME >> 12))
        hs.append(h)
    yield hs[0], hs[1], hs[2], host
    for end in host.ends.values():
        for fd in end.delivered:
            os.close(fd)
    for h in hs:
        h.dom.close()


def grant(h: DomainHarness, ref: int, grantee: int, gpa: int = SHARED, readonly: bool = False) -> None:
    flags = abi.GTF_permit_access | (abi.GTF_readonly if readonly else 0)
    h.dom.memory.pack(abi.GRANT_ENTRY_V1, GRANT_FRAME + ref * abi.GRANT_ENTRY_V1.size, flags, grantee,
                      gpa >> 12)


def entry_flags(h: DomainHarness, ref: int) -> int:
    return int(h.dom.memory.unpack(abi.GRANT_ENTRY_V1, GRANT_FRAME + ref * abi.GRANT_ENTRY_V1.size)[0])


def settle(h: DomainHarness) -> None:
    """Wait for the granter's grant thread to finish what domain 0 asked of it."""
    g = h.dom.remote_grants
    assert isinstance(g, BrokeredGrants)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and g._work.unfinished_tasks > 0:
        time.sleep(0.002)


def map_ref(h: DomainHarness, remote: int, ref: int, at: int = PLACE,
            flags: int = abi.GNTMAP_host_map) -> tuple[int, int]:
    arg = h.put(abi.GNTTAB_MAP_GRANT_REF, at, flags, ref, remote, 0, 0, 0)
    assert h.call("grant_table_op", abi.GNTTABOP_map_grant_ref, arg, 1) == 0
    _a, _f, _r, _d, status, handle, _bus = h.dom.memory.unpack(abi.GNTTAB_MAP_GRANT_REF, arg)
    return status, handle


def unmap_ref(h: DomainHarness, handle: int, at: int = PLACE) -> int:
    arg = h.put(abi.GNTTAB_UNMAP_GRANT_REF, at, 0, handle, 0)
    assert h.call("grant_table_op", abi.GNTTABOP_unmap_grant_ref, arg, 1) == 0
    return int(h.dom.memory.unpack(abi.GNTTAB_UNMAP_GRANT_REF, arg)[3])


def engine_read(h: DomainHarness, gpa: int, n: int) -> bytes:
    ev = h.dom.vcpus[0].ev
    assert isinstance(ev, TcgVcpu)
    return bytes(ev.uc.mem_read(gpa, n))


def test_map_aliases_the_granted_page_until_unmap(trio: tuple[Any, ...]) -> None:
    a, b, _c, host = trio
    a.dom.memory.write(SHARED, b"from A")
    grant(a, 5, grantee=2)
    status, handle = map_ref(b, 1, 5)
    assert status == abi.GNTST_okay and handle
    assert b.dom.memory.read(PLACE, 6) == b"from A"
    assert engine_read(b, PLACE, 6) == b"from A"  # the guest's CPU sees it too
    assert entry_flags(a, 5) & BUSY == BUSY  # in use, as Xen marks it
    b.dom.memory.write(PLACE + 100, b"answer")  # B writes, A reads at its own page
    assert a.dom.memory.read(SHARED + 100, 6) == b"answer"
    a.dom.memory.write(SHARED + 200, b"again")
    assert engine_read(b, PLACE + 200, 5) == b"again"
    assert len(host.grants.live()) == 1
    kept = host.ends[2].delivered[0]  # what a compromised B could keep after unmapping

    assert unmap_ref(b, handle) == abi.GNTST_okay
    settle(a)
    assert entry_flags(a, 5) & BUSY == 0
    assert host.grants.live() == {}
    with pytest.raises(GuestFault):
        b.dom.memory.read(PLACE, 1)  # gone from B
    assert a.dom.memory.read(SHARED + 100, 6) == b"answer"  # A kept the content
    a.dom.memory.write(SHARED, b"secret")  # ...in private memory again: the kept memfd sees nothing more
    assert os.pread(kept, 6, 0) == b"from A"
    assert unmap_ref(b, handle) == abi.GNTST_bad_handle


def test_grant_for_another_domain_is_refused(trio: tuple[Any, ...]) -> None:
    a, b, c, host = trio
    grant(a, 6, grantee=3)  # for C, not B
    status, _h = map_ref(b, 1, 6)
    assert status != abi.GNTST_okay
    assert entry_flags(a, 6) & BUSY == 0 and host.grants.live() == {}
    status, handle = map_ref(c, 1, 6)
    assert status == abi.GNTST_okay
    assert unmap_ref(c, handle) == abi.GNTST_okay
    # grant_table.c: not granted (or granted to another) is general_error, past the table bad_gntref
    assert map_ref(b, 1, 7)[0] == abi.GNTST_general_error
    assert map_ref(b, 1, 1 << 20)[0] == abi.GNTST_bad_gntref
    assert map_ref(b, 9, 6)[0] == abi.GNTST_bad_domain  # no such domain
    assert map_ref(b, 2, 6)[0] == abi.GNTST_bad_domain  # itself


def test_read_only_grant(trio: tuple[Any, ...]) -> None:
    a, b, _c, host = trio
    a.dom.memory.write(SHARED, b"read me")
    grant(a, 8, grantee=2, readonly=True)
    assert map_ref(b, 1, 8)[0] == abi.GNTST_general_error  # a writable mapping ("write-pin a r/o entry")
    assert entry_flags(a, 8) & BUSY == 0
    status, handle = map_ref(b, 1, 8, flags=abi.GNTMAP_host_map | abi.GNTMAP_readonly)
    assert status == abi.GNTST_okay
    assert entry_flags(a, 8) & BUSY == abi.GTF_reading
    assert b.dom.memory.read(PLACE, 7) == b"read me"
    with pytest.raises(GuestFault):
        b.dom.memory.write(PLACE, b"x")
    fd = host.ends[2].delivered[-1]
    with pytest.raises(PermissionError):
        mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(OSError):
        os.pwrite(fd, b"x", 0)
    assert unmap_ref(b, handle) == abi.GNTST_okay
    settle(a)
    assert entry_flags(a, 8) & BUSY == 0


def test_places_that_cannot_take_a_foreign_page(trio: tuple[Any, ...]) -> None:
    a, b, _c, host = trio
    grant(a, 5, grantee=2)
    for at in (PLACE + 8, layout.SPECIAL_BASE, GRANT_FRAME, layout.MMIO_START, 1 << 41):
        assert map_ref(b, 1, 5, at=at)[0] == abi.GNTST_bad_virt_addr, hex(at)
    assert map_ref(b, 1, 5, flags=0)[0] == abi.GNTST_bad_gntref  # no host/device map: "Bad flags"
    assert entry_flags(a, 5) & BUSY == 0 and host.grants.live() == {}
    status, handle = map_ref(b, 1, 5)
    assert map_ref(b, 1, 5)[0] == abi.GNTST_bad_virt_addr  # that page is taken
    assert unmap_ref(b, handle, at=PLACE + PAGE) == abi.GNTST_general_error  # not where it is
    assert unmap_ref(b, handle) == abi.GNTST_okay


def test_a_mapped_page_in_ram_and_a_page_mapped_twice(trio: tuple[Any, ...]) -> None:
    a, b, c, _host = trio
    a.dom.memory.write(SHARED, b"twice")
    grant(a, 5, grantee=2)
    grant(a, 6, grantee=3)
    in_ram = 0x600000
    b.dom.memory.write(in_ram, b"mine")
    s1, h1 = map_ref(b, 1, 5, at=in_ram)  # a RAM page of B's (a balloon page) stands in
    s2, h2 = map_ref(c, 1, 6)
    assert s1 == s2 == abi.GNTST_okay
    assert b.dom.memory.read(in_ram, 5) == b"twice" == engine_read(b, in_ram, 5)
    c.dom.memory.write(PLACE, b"C was here")
    assert b.dom.memory.read(in_ram, 10) == b"C was here"
    grant(c, 1, grantee=2, gpa=PLACE)  # C may not lend B what it maps from A
    assert map_ref(b, 3, 1, at=PLACE)[0] != abi.GNTST_okay
    assert unmap_ref(b, h1, at=in_ram) == abi.GNTST_okay
    settle(a)
    assert b.dom.memory.read(in_ram, 4) == bytes(4)  # a fresh page, as Xen repopulates it
    assert entry_flags(a, 5) & BUSY == 0 and entry_flags(a, 6) & BUSY == BUSY
    c.dom.memory.write(PLACE, b"still")
    assert a.dom.memory.read(SHARED, 5) == b"still"  # C's mapping is untouched by B's unmap
    assert unmap_ref(c, h2) == abi.GNTST_okay


def test_grantee_death_releases_the_granter(trio: tuple[Any, ...]) -> None:
    a, b, _c, host = trio
    grant(a, 5, grantee=2)
    assert map_ref(b, 1, 5)[0] == abi.GNTST_okay
    host.ends[2].finished = True
    host.grants.domain_gone(2)
    settle(a)
    assert entry_flags(a, 5) & BUSY == 0 and host.grants.live() == {}
    ga = a.dom.remote_grants
    assert isinstance(ga, BrokeredGrants) and ga.lent() == []


def test_granter_death_leaves_the_grantee_its_page(trio: tuple[Any, ...]) -> None:
    a, b, _c, host = trio
    a.dom.memory.write(SHARED, b"last words")
    grant(a, 5, grantee=2)
    status, handle = map_ref(b, 1, 5)
    host.ends[1].finished = True
    host.grants.domain_gone(1)
    assert b.dom.memory.read(PLACE, 10) == b"last words"
    assert unmap_ref(b, handle) == abi.GNTST_okay  # domain 0 has nothing more to tell


def test_pin_counts_and_checks(trio: tuple[Any, ...]) -> None:
    a, _b, _c, _host = trio
    gt = a.dom.grants
    grant(a, 5, grantee=2)
    assert gt.pin(5, 2, write=False) == SHARED
    assert gt.pin(5, 2, write=True) == SHARED
    assert entry_flags(a, 5) & BUSY == BUSY
    gt.unpin(5, write=True)
    assert entry_flags(a, 5) & BUSY == abi.GTF_reading  # a reader is left
    gt.unpin(5, write=False)
    assert entry_flags(a, 5) & BUSY == 0
    with pytest.raises(GrantError):
        gt.pin(5, 3, write=False)
    grant(a, 6, grantee=2, readonly=True)
    with pytest.raises(GrantReadOnly):
        gt.pin(6, 2, write=True)
    grant(a, 7, grantee=2, gpa=GRANT_FRAME)
    with pytest.raises(GrantError):
        gt.pin(7, 2, write=False, check=a.dom.hypervisor_page)
    grant(a, 9, grantee=2, gpa=layout.SPECIAL_BASE)
    with pytest.raises(GrantError):
        gt.pin(9, 2, write=False)


def test_share_and_unshare_a_ram_page() -> None:
    mem = GuestMemory(4 << 20)
    try:
        mem.write(0x3000, b"content")
        fd = mem.share_ram_page(0x3000)
        assert os.pread(fd, 7, 0) == b"content"
        other = mmap.mmap(fd, PAGE, mmap.MAP_SHARED)  # another process's view
        other[0:5] = b"OTHER"
        assert mem.read(0x3000, 7) == b"OTHERnt"
        mem.write(0x3008, b"both")
        assert other[8:12] == b"both"
        with pytest.raises(OSError):
            os.ftruncate(fd, 0)  # sealed: nobody can make our accesses fault
        with pytest.raises(OSError):
            os.ftruncate(fd, 2 * PAGE)
        mem.unshare_ram_page(0x3000, fd)
        other[0:5] = b"later"
        assert mem.read(0x3000, 12) == b"OTHERnt\0both"  # private again, content kept
        other.close()
        assert mem.read(0x2FF8, 8) == bytes(8) and mem.read(0x4000, 8) == bytes(8)  # neighbours intact
        with pytest.raises(ValueError):
            mem.share_ram_page(0x3001)
    finally:
        mem.close()


def give_back(h: DomainHarness, gpa: int, cmd: int = abi.XENMEM_decrease_reservation) -> int:
    """XENMEM_decrease_reservation (or populate_physmap) of the one page `gpa`: extents done."""
    h.dom.memory.pack(struct.Struct("<Q"), 0x201000, gpa >> 12)
    arg = h.put(abi.MEMORY_RESERVATION, 0x201000, 1, 0, 0, abi.DOMID_SELF, at=0x202000)
    return h.call("memory_op", cmd, arg)


def test_granter_gives_back_a_page_another_domain_maps(trio: tuple[Any, ...]) -> None:
    a, b, _c, _host = trio
    a.dom.memory.write(SHARED, b"lent to B")
    grant(a, 5, grantee=2)
    status, handle = map_ref(b, 1, 5)
    assert status == abi.GNTST_okay
    assert give_back(a, SHARED) == 1  # as Xen: the page leaves A's physmap, B's mapping keeps it
    assert b.dom.memory.read(PLACE, 9) == b"lent to B"
    with pytest.raises(GuestFault):
        a.dom.memory.read(SHARED, 1)
    assert give_back(a, SHARED, abi.XENMEM_populate_physmap) == 1
    assert a.dom.memory.read(SHARED, PAGE) == bytes(PAGE)  # A's new page is a new page
    a.dom.memory.write(SHARED, b"A's new data")
    assert b.dom.memory.read(PLACE, 9) == b"lent to B"  # not B's
    assert unmap_ref(b, handle) == abi.GNTST_okay
    settle(a)
    assert a.dom.memory.read(SHARED, 12) == b"A's new data"  # the unmap copied nothing back over it
    assert entry_flags(a, 5) & BUSY == 0


def test_a_page_holding_a_foreign_page_cannot_be_given_back(trio: tuple[Any, ...]) -> None:
    a, b, _c, _host = trio
    grant(a, 5, grantee=2)
    in_ram = 0x600000
    status, handle = map_ref(b, 1, 5, at=in_ram)
    assert status == abi.GNTST_okay
    assert give_back(b, in_ram) == 0  # guest_remove_page finds another domain's page: stop
    assert unmap_ref(b, handle, at=in_ram) == abi.GNTST_okay
    settle(a)
    assert give_back(b, in_ram) == 1
