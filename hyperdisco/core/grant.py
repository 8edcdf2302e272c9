"""Grant tables, version 1 (xen/include/public/grant_table.h), as domain 0's backends use them.

A guest shares a page by filling an entry of its grant table (in its grant frames, which it placed with
XENMEM_add_to_physmap): struct grant_entry_v1 {uint16_t flags; domid_t domid; uint32_t frame;}. A backend
may touch the page only while the entry permits it: type GTF_permit_access, `domid` the backend's domain,
GTF_readonly clear for writes, and the frame one of the granter's own RAM pages. While a backend uses a
grant, the GTF_reading / GTF_writing busy bits are set, so the guest's gnttab_end_foreign_access sees the
page still in use and does not reuse it; they are cleared when the backend is done. The entry's layout
and flags are in hyperdisco/xen/grant_table.py.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..platform import layout
from ..xen import abi
from ..xen.grant_table import (
    ENTRIES_PER_FRAME,
    GRANT_ENTRY_V1,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_type_mask,
    GTF_writing,
)
from .memory import PAGE, GuestFault

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

_FLAGS = struct.Struct("<H")  # the flags field at offset 0 of struct grant_entry_v1


class GrantError(Exception):
    """A grant reference that does not permit what was asked (the request using it fails)."""


class GrantReadOnly(GrantError):
    """A write asked of a read-only grant."""


class GrantOutOfRange(GrantError):
    """A reference past the granter's table (GNTST_bad_gntref; every other GrantError of a map is
    GNTST_general_error, as Xen's _set_status_v1 answers)."""


class GrantBadFrame(GrantError):
    """An entry naming a frame that is not the granter's populated RAM (Xen's get_paged_frame:
    GNTST_bad_page)."""


class GrantedPage:
    """One granted guest page, bounded: offsets outside the page are refused."""

    def __init__(self, dom: Domain, gpa: int, writable: bool) -> None:
        self.dom = dom
        self.gpa = gpa
        self.writable = writable

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > PAGE:
            raise GrantError(f"access {offset}+{length} outside the granted page")
        return self.dom.memory.read(self.gpa + offset, length)

    def u32(self, offset: int) -> int:
        """A ring index, read in one access (core/memory.py)."""
        if offset < 0 or offset + 4 > PAGE:
            raise GrantError(f"access {offset}+4 outside the granted page")
        return self.dom.memory.u32(self.gpa + offset)

    def set_u32(self, offset: int, value: int) -> None:
        if not self.writable:
            raise GrantError("write to a read-only grant")
        if offset < 0 or offset + 4 > PAGE:
            raise GrantError(f"access {offset}+4 outside the granted page")
        self.dom.memory.set_u32(self.gpa + offset, value)

    def write(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise GrantError("write to a read-only grant")
        if offset < 0 or offset + len(data) > PAGE:
            raise GrantError(f"access {offset}+{len(data)} outside the granted page")
        self.dom.memory.write(self.gpa + offset, data)


class GrantTable:
    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        # ref -> [readers, writers]: GTF_writing stays while writers > 0, GTF_reading while either is
        self._busy: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def map_frame(self, idx: int, gpa: int, ctx: VcpuContext | None = None) -> int:
        """XENMAPSPACE_grant_table: put grant-table frame `idx` at `gpa`, a RAM page or a fresh page in the
        unpopulated space above RAM (below the platform's MMIO and special pages). Re-mapping an index
        moves it. 0 or -errno."""
        dom = self.dom
        if dom.grant_frames.get(idx) == gpa:
            return 0  # already there (a resumed guest re-maps its frames)
        in_ram = dom.is_ram(gpa)
        above = dom.memory.ram_bytes <= gpa < layout.MMIO_START or gpa >= 1 << 32
        if not in_ram and (not above or dom.memory.region_at(gpa) is not None):
            return -abi.EINVAL
        old = dom.grant_frames.pop(idx, None)
        old_reg = dom.memory.region_at(old) if old is not None else None
        if old_reg is not None and not old_reg.name.startswith("grant-frame"):
            old_reg = None
        if old_reg is not None or not in_ram:
            # Every vCPU's engine maps the page: with the other vCPUs out of guest code, since an engine
            # must not be changed from another thread while it runs (unicorn frees the memory map and TLB
            # that the running vCPU is using: a SIGSEGV of the domain process)
            with dom.quiesced(ctx):
                if old_reg is not None:
                    for v in dom.vcpus:
                        v.ev.unmap_ram(old_reg.gpa, old_reg.size)
                    dom.memory.remove_region(old_reg)
                if not in_ram:
                    reg = dom.memory.add_region(gpa, PAGE, f"grant-frame-{idx}")
                    for v in dom.vcpus:
                        v.ev.map_ram(gpa, PAGE, reg.host_address)
        dom.memory.fill(gpa, PAGE)
        dom.grant_frames[idx] = gpa
        return 0

    def nr_entries(self) -> int:
        frames = self.dom.grant_frames
        n = 0
        while n in frames:
            n += 1
        return n * ENTRIES_PER_FRAME

    def _entry_gpa(self, ref: int) -> int:
        if not 0 <= ref < self.nr_entries():
            raise GrantOutOfRange(f"grant reference {ref} out of range")
        frame, idx = divmod(ref, ENTRIES_PER_FRAME)
        return self.dom.grant_frames[frame] + idx * GRANT_ENTRY_V1.size

    def pin(self, ref: int, grantee: int, write: bool,
            check: Callable[[int], str | None] | None = None) -> int:
        """Xen's checks of entry `ref` for `grantee` (permit_access, granted to it, not read-only for a
        write, a frame of the granter's RAM, and `check(gpa)` when given: None or why not), then set the
        busy bits as Xen does while a grant is in use. Returns the page's guest-physical address; each pin
        is ended by one unpin(ref, write)."""
        mem = self.dom.memory
        with self._lock:
            at = self._entry_gpa(ref)
            flags, domid, frame = mem.unpack(GRANT_ENTRY_V1, at)
            if flags & GTF_type_mask != GTF_permit_access:
                raise GrantError(f"grant {ref} does not permit access")
            if domid != grantee:
                raise GrantError(f"grant {ref} is for domain {domid}, not {grantee}")
            if write and flags & GTF_readonly:
                raise GrantReadOnly(f"grant {ref} is read-only")
            gpa = frame * PAGE
            if not self.dom.is_ram(gpa):
                raise GrantBadFrame(f"grant {ref} names frame {frame:#x}, not the granter's RAM")
            if frame in mem.given_back:  # given back (core/reservation.py): Xen finds no page there
                raise GrantBadFrame(f"grant {ref} names frame {frame:#x}, which is not populated")
            why = check(gpa) if check is not None else None
            if why is not None:
                raise GrantError(f"grant {ref} names frame {frame:#x}: {why}")
            busy = GTF_reading | (GTF_writing if write else 0)
            mem.pack(_FLAGS, at, flags | busy)
            count = self._busy.setdefault(ref, [0, 0])
            count[1 if write else 0] += 1
        return gpa

    def unpin(self, ref: int, write: bool) -> None:
        """End one pin of `ref`: its busy bits clear when no user of that kind is left."""
        mem = self.dom.memory
        with self._lock:
            count = self._busy.get(ref)
            if count is None or count[1 if write else 0] <= 0:
                return
            count[1 if write else 0] -= 1
            clear = (0 if count[1] else GTF_writing) | (0 if count[0] or count[1] else GTF_reading)
            if not count[0] and not count[1]:
                del self._busy[ref]
            try:
                at = self._entry_gpa(ref)
                mem.pack(_FLAGS, at, mem.unpack(_FLAGS, at)[0] & ~clear)
            except (GrantError, GuestFault):
                pass  # the table moved or the domain is going: nothing left to tell the guest

    def swap(self, ref_a: int, ref_b: int) -> int:
        """GNTTABOP_swap_grant_ref (grant_table.c swap_grant_ref): exchange two entries of the table, neither
        in use. A GNTST_* status."""
        mem = self.dom.memory
        with self._lock:
            n = self.nr_entries()
            if not 0 <= ref_a < n or not 0 <= ref_b < n:
                return abi.GNTST_bad_gntref
            if ref_a == ref_b:
                return abi.GNTST_okay
            if ref_a in self._busy or ref_b in self._busy:
                return abi.GNTST_eagain
            at_a, at_b = self._entry_gpa(ref_a), self._entry_gpa(ref_b)
            a, b = mem.read(at_a, GRANT_ENTRY_V1.size), mem.read(at_b, GRANT_ENTRY_V1.size)
            mem.write(at_a, b)
            mem.write(at_b, a)
        return abi.GNTST_okay

    @contextmanager
    def access(self, ref: int, grantee: int, write: bool) -> Iterator[GrantedPage]:
        """Use the page behind `ref` for the duration of the `with` block."""
        gpa = self.pin(ref, grantee, write)
        try:
            yield GrantedPage(self.dom, gpa, write)
        finally:
            self.unpin(ref, write)
