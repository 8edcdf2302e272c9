"""A domain's memory reservation: XENMEM_increase_reservation, decrease_reservation, populate_physmap,
current_reservation and maximum_reservation (xen/include/public/memory.h), with Xen's semantics.

Xen keeps two numbers per domain: tot_pages, the pages it owns now, and max_pages, the most it may own
(set by the toolstack: xl's `maxmem`, `mem-max`). A guest's balloon driver (Linux drivers/xen/balloon.c)
gives pages back with XENMEM_decrease_reservation, naming them by guest frame number, and takes memory
back with XENMEM_populate_physmap at frame numbers it chooses; both are bounded here exactly as in
xen/common/memory.c:

- the three ops return the number of extents done, never an error: a reservation that cannot be read, a
  count too large to encode a continuation (nr_extents > UINT_MAX >> MEMOP_EXTENT_SHIFT), a restart
  extent at or past nr_extents, another domain (xsm_memory_adjust_reservation refuses a guest acting on
  anyone but itself), or address bits of 1..12 in mem_flags all answer the start extent (do_memory_op);
- an extent_order above the guest's limit (DOMU_MAX_ORDER, 9) does nothing and answers the start extent;
- the extents are then done in order, and the first that fails ends the call with the count so far
  (Xen's `goto out`): an extent list entry that cannot be read; for decrease, a page that is not RAM of
  this domain, is not populated (a second give-back of the same page), or is no ordinary page of the
  guest's (a frame the hypervisor keeps there: shared info, vcpu_info, grant table; another domain's page
  mapped there); for populate, a frame outside the domain's RAM or already populated, an unaligned
  extent, populate-on-demand asked for by the guest itself, or tot_pages reaching max_pages; for
  increase, max_pages. Pages of a decrease extent removed before the one that failed stay removed, as
  in Xen (guest_remove_page one page at a time).
- increase_reservation gives an auto-translated guest frames it has no name for (Xen writes machine frame
  numbers back only for PV guests): they count in tot_pages and cost no host memory.

Xen preempts a long call and resumes it with a continuation (the restart extent in the command's high
bits); here a call is bounded by the domain's RAM (every page can be given back or populated once), so it
runs to the end, and a restart extent the guest passes itself is honoured as Xen's would be.

A page given back is returned to the host at once (core/memory.py: release_ram_page) and is unbacked for
the hypervisor until populated again, when it reads as zeros. Grant mappings hook in (vmm/grants.py):
a page other domains map is replaced here and theirs is left to them; a page that holds another
domain's page cannot be given back.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..xen import abi
from .memory import PAGE, GuestFault

if TYPE_CHECKING:
    from .domain import Domain
    from .memory import VirtualAccess

_PFN = struct.Struct("<Q")
# the 32-bit ABI (core/compat32.py): Xen's compat xen_memory_reservation (guest handle, xen_ulong_t
# nr_extents, extent_order, mem_flags, domid; 20 bytes) and its extent lists of 32-bit compat_pfn_t
COMPAT_MEMORY_RESERVATION = struct.Struct("<IIIIH2x")
_PFN32 = struct.Struct("<I")
UINT_MAX = 0xFFFFFFFF
MAX_EXTENT_CONTINUATION = UINT_MAX >> abi.MEMOP_EXTENT_SHIFT  # the most extents one call may name
LIST_CHUNK = 512  # extent-list entries read at a time (one page of xen_pfn_t)


class Reservation:
    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.ram_pages = dom.memory.ram_bytes // PAGE
        self.max_pages = self.ram_pages  # Xen's d->max_pages (the toolstack's mem-max)
        self.unnamed = 0  # pages increase_reservation gave that have no guest frame (auto-translated guest)
        self.released = 0  # pages given back over the domain's life (statistics)
        self.populated = 0  # pages populated again
        self.reclaimed = 0  # host pages the guest made by touching pages it had given back, dropped again
        self._lock = threading.Lock()  # one reservation change at a time (vCPUs of an SMP guest)
        # a page that cannot be given back: a reason, else None (grant mappings of other domains' pages)
        self.refuse: list[Callable[[int], str | None]] = []
        # told of a page given back, before its memory goes; True: the page's host memory is shared with
        # another process (a memfd a grant mapping made), so it must be replaced, not just discarded
        self.on_release: list[Callable[[int], bool]] = []

    @property
    def tot_pages(self) -> int:
        """Xen's d->tot_pages: the RAM pages populated now, plus frames handed out without a name."""
        return self.ram_pages - len(self.dom.memory.given_back) + self.unnamed

    def set_max_pages(self, pages: int) -> None:
        """The toolstack's mem-max (xc_domain_setmaxmem). Lowering it below tot_pages takes nothing
        away (as Xen: it only stops further allocations)."""
        if pages < 0:
            raise ValueError("max_pages must not be negative")
        with self._lock:
            self.max_pages = pages

    def reclaim(self) -> int:
        """Drop host memory behind pages given back that the guest touched since (its stores reach the
        host page at that address; Xen would have dropped them): how many."""
        mem = self.dom.memory
        with self._lock:
            touched = mem.resident_unbacked()
            for pfn in touched:
                mem.discard_ram_page(pfn)
            self.reclaimed += len(touched)
        return len(touched)

    def stats(self) -> dict[str, int]:
        """For list/top (on every query): also reclaims what the guest touched of its given-back pages."""
        self.reclaim()
        return {"tot_pages": self.tot_pages, "max_pages": self.max_pages,
                "unbacked_pages": len(self.dom.memory.given_back), "released_pages": self.released,
                "populated_pages": self.populated, "reclaimed_pages": self.reclaimed}

    # -- memory_op ----------------------------------------------------------------------------------------
    def memory_op(self, va: VirtualAccess, cmd: int, arg: int, compat: bool = False) -> int:
        """XENMEM_increase_reservation, decrease_reservation, populate_physmap (`cmd` with its restart
        extent in the bits above MEMOP_CMD_MASK): the number of extents done. `compat`: a 32-bit vCPU's
        call, with the compat layouts (xen/common/compat/memory.c)."""
        op, start = cmd & abi.MEMOP_CMD_MASK, (cmd & 0xFFFFFFFFFFFFFFFF) >> abi.MEMOP_EXTENT_SHIFT
        layout = COMPAT_MEMORY_RESERVATION if compat else abi.MEMORY_RESERVATION
        pfn = _PFN32 if compat else _PFN
        try:
            extent_list, nr_extents, order, mem_flags, domid = va.unpack(layout, arg)
        except GuestFault:
            return start
        if nr_extents > MAX_EXTENT_CONTINUATION or start >= nr_extents:
            return start
        if domid not in (abi.DOMID_SELF, self.dom.domid):
            return start  # xsm_memory_adjust_reservation: a guest acts on itself only
        address_bits = mem_flags & 0xFF
        if 0 < address_bits <= 12:  # construct_memop_from_reservation: -EINVAL, answered as start
            return start
        if order > abi.DOMU_MAX_ORDER:
            return start
        with self._lock:
            if op == abi.XENMEM_increase_reservation:
                return self._increase(start, nr_extents, order)
            if op == abi.XENMEM_decrease_reservation:
                return self._decrease(va, pfn, extent_list, start, nr_extents, order)
            if mem_flags & abi.XENMEMF_populate_on_demand:
                return start  # populate_physmap: "Disallow populating PoD pages on oneself"
            return self._populate(va, pfn, extent_list, start, nr_extents, order)

    def _frames(self, va: VirtualAccess, pfn: struct.Struct, extent_list: int, start: int,
                nr: int) -> list[int]:
        """Extent-list entries start..nr-1, read a chunk at a time; stops at the first unreadable one."""
        out: list[int] = []
        i = start
        while i < nr:
            n = min(LIST_CHUNK - (i % LIST_CHUNK), nr - i)
            try:
                data = va.read(extent_list + i * pfn.size, n * pfn.size)
            except GuestFault:
                # fall back to one entry at a time: the readable ones before the fault still count
                for j in range(i, i + n):
                    try:
                        out.append(va.unpack(pfn, extent_list + j * pfn.size)[0])
                    except GuestFault:
                        return out
                return out  # not reached: a chunk that faults has an entry that faults
            out.extend(v for (v,) in pfn.iter_unpack(data))
            i += n
            if len(out) >= self.ram_pages + 1:  # a call can do at most this many: the rest is never read
                break
        return out

    def _increase(self, start: int, nr: int, order: int) -> int:
        done = start
        while done < nr and self.tot_pages + (1 << order) <= self.max_pages:
            self.unnamed += 1 << order
            done += 1
        return done

    def _decrease(self, va: VirtualAccess, pfn: struct.Struct, extent_list: int, start: int, nr: int,
                  order: int) -> int:
        done = start
        for gfn in self._frames(va, pfn, extent_list, start, nr):
            for j in range(1 << order):
                if not self._remove(gfn + j):
                    return done
            done += 1
        return done

    def _remove(self, pfn: int) -> bool:
        """Xen's guest_remove_page for one frame: False if it cannot be removed."""
        dom, mem = self.dom, self.dom.memory
        if not self._is_ram_frame(pfn) or pfn in mem.given_back:
            return False
        gpa = pfn * PAGE
        if dom.hypervisor_page(gpa) is not None or any(f(gpa) is not None for f in self.refuse):
            return False
        shared = False
        for hook in self.on_release:
            shared = hook(gpa) or shared
        mem.release_ram_page(pfn, shared)
        self.released += 1
        return True

    def _populate(self, va: VirtualAccess, pfn: struct.Struct, extent_list: int, start: int, nr: int,
                  order: int) -> int:
        done = start
        mem = self.dom.memory
        for gfn in self._frames(va, pfn, extent_list, start, nr):
            count = 1 << order
            if gfn % count or self.tot_pages + count > self.max_pages:
                return done
            pfns = range(gfn, gfn + count)
            if not all(self._is_ram_frame(p) and p in mem.given_back for p in pfns):
                return done
            for p in pfns:
                mem.populate_ram_page(p)
            self.populated += count
            done += 1
        return done

    def _is_ram_frame(self, pfn: int) -> bool:
        return 0 <= pfn < self.ram_pages and self.dom.is_ram(pfn * PAGE)
