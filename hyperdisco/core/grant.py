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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..xen.grant_table import (
    ENTRIES_PER_FRAME,
    GRANT_ENTRY_V1,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_type_mask,
    GTF_writing,
)
from .memory import PAGE

if TYPE_CHECKING:
    from .domain import Domain

_FLAGS = struct.Struct("<H")  # the flags field at offset 0 of struct grant_entry_v1


class GrantError(Exception):
    """A grant reference that does not permit what was asked (the request using it fails)."""


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
        self._busy: dict[int, int] = {}  # ref -> number of users (busy bits stay while > 0)
        self._lock = threading.Lock()

    def nr_entries(self) -> int:
        frames = self.dom.grant_frames
        n = 0
        while n in frames:
            n += 1
        return n * ENTRIES_PER_FRAME

    def _entry_gpa(self, ref: int) -> int:
        if not 0 <= ref < self.nr_entries():
            raise GrantError(f"grant reference {ref} out of range")
        frame, idx = divmod(ref, ENTRIES_PER_FRAME)
        return self.dom.grant_frames[frame] + idx * GRANT_ENTRY_V1.size

    @contextmanager
    def access(self, ref: int, grantee: int, write: bool) -> Iterator[GrantedPage]:
        """Use the page behind `ref` for the duration of the `with` block."""
        mem = self.dom.memory
        with self._lock:
            at = self._entry_gpa(ref)
            flags, domid, frame = mem.unpack(GRANT_ENTRY_V1, at)
            if flags & GTF_type_mask != GTF_permit_access:
                raise GrantError(f"grant {ref} does not permit access")
            if domid != grantee:
                raise GrantError(f"grant {ref} is for domain {domid}, not {grantee}")
            if write and flags & GTF_readonly:
                raise GrantError(f"grant {ref} is read-only")
            gpa = frame * PAGE
            if not self.dom.is_ram(gpa):
                raise GrantError(f"grant {ref} names frame {frame:#x}, not the granter's RAM")
            busy = GTF_reading | (GTF_writing if write else 0)
            mem.pack(_FLAGS, at, flags | busy)
            self._busy[ref] = self._busy.get(ref, 0) + 1
        try:
            yield GrantedPage(self.dom, gpa, write)
        finally:
            with self._lock:
                n = self._busy.get(ref, 1) - 1
                if n <= 0:
                    self._busy.pop(ref, None)
                    cur = mem.unpack(_FLAGS, at)[0]
                    mem.pack(_FLAGS, at, cur & ~(GTF_reading | GTF_writing))
                else:
                    self._busy[ref] = n
