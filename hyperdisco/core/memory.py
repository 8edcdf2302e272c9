"""Guest memory: host mappings the core owns and engines map in (Disco's physical-to-machine map).

Each domain's RAM is one memfd mapping; extra regions (special pages, grant-table frames) are mappings of
their own. Every access the hypervisor makes on a guest's behalf goes through `GuestMemory`, which checks
that the whole range lies inside memory this domain owns: a guest can never make the hypervisor read or
write anything else.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..xen.abi import PAGE

if TYPE_CHECKING:
    from ..loader.shared_image import SharedImage


class GuestFault(Exception):
    """A guest-supplied address does not lie in memory the guest owns (becomes -EFAULT)."""


@dataclass
class Region:
    gpa: int
    size: int
    mem: mmap.mmap
    name: str
    writable: bool = True  # False: a read-only foreign page (a read-only grant another domain made)

    @property
    def host_address(self) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self.mem))

    @property
    def end(self) -> int:
        return self.gpa + self.size


class PageSet:
    """A set of page numbers below a bound, one byte per page: the pages a guest gave back. A balloon of
    a 3 GiB guest costs 768 KiB here, where a Python set of its page numbers would cost tens of MiB."""

    def __init__(self, pages: int) -> None:
        self.bits = bytearray(pages)
        self.count = 0

    def __contains__(self, pfn: object) -> bool:
        return isinstance(pfn, int) and 0 <= pfn < len(self.bits) and self.bits[pfn] != 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[int]:
        i = self.bits.find(1)
        while i >= 0:
            yield i
            i = self.bits.find(1, i + 1)

    def add(self, pfn: int) -> None:
        if not self.bits[pfn]:
            self.bits[pfn] = 1
            self.count += 1

    def discard(self, pfn: int) -> None:
        if pfn in self:
            self.bits[pfn] = 0
            self.count -= 1

    def any_in(self, first: int, last: int) -> bool:
        """Whether a page first..last (inclusive) is in the set."""
        return self.count > 0 and self.bits.find(1, max(0, first), last + 1) >= 0

    def also_in(self, vec: bytes | bytearray) -> list[int]:
        """The pages of the set whose byte in `vec` (one per page, as mincore fills it) has bit 0 set."""
        n = min(len(self.bits), len(vec))
        both = int.from_bytes(self.bits[:n], "little") & int.from_bytes(vec[:n], "little")
        both_bytes = both.to_bytes(n, "little")
        out, i = [], both_bytes.find(1)
        while i >= 0:
            out.append(i)
            i = both_bytes.find(1, i + 1)
        return out


class PhysicalPages:
    """Guest-physical memory as a list of mapped regions, with bounds-checked accessors: an access that
    does not lie wholly inside one region raises GuestFault. `on_write(gpa, n)` is told of every write made
    through them (the domain points it at the engine's Vcpu.host_wrote: translated code stays coherent)."""

    def __init__(self) -> None:
        self.regions: list[Region] = []
        # RAM page numbers the guest gave back (XENMEM_decrease_reservation, core/reservation.py): no
        # host memory behind them and no hypervisor access to them until they are populated again
        self.given_back = PageSet(0)
        self.on_write: Callable[[int, int], None] | None = None

    def _locate(self, gpa: int, n: int, write: bool = False) -> tuple[mmap.mmap, int]:
        if n < 0:
            raise GuestFault(f"negative length {n}")
        for r in self.regions:
            if r.gpa <= gpa and gpa + n <= r.end:
                if write and not r.writable:
                    raise GuestFault(f"guest-physical range {gpa:#x}+{n:#x} is read-only")
                if self.given_back and self.given_back.any_in(gpa // PAGE, (gpa + max(n, 1) - 1) // PAGE):
                    raise GuestFault(f"guest-physical range {gpa:#x}+{n:#x} was given back (unpopulated)")
                return r.mem, gpa - r.gpa
        raise GuestFault(f"guest-physical range {gpa:#x}+{n:#x} is not guest memory")

    def _changed(self, gpa: int, n: int) -> None:
        if self.on_write is not None:
            self.on_write(gpa, n)

    def read(self, gpa: int, n: int) -> bytes:
        mem, off = self._locate(gpa, n)
        return mem[off:off + n]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        mem, off = self._locate(gpa, len(data), write=True)
        mem[off:off + len(data)] = data
        self._changed(gpa, len(data))

    def fill(self, gpa: int, n: int, byte: int = 0) -> None:
        if n < 0:
            raise GuestFault(f"negative length {n}")
        self.write(gpa, bytes([byte]) * n)

    def host_address(self, gpa: int, n: int) -> int:
        """The host address of the writable guest range [gpa, gpa + n), which must lie in one region and
        be populated (GuestFault otherwise): for atomic operations on words the guest shares
        (core/atomic.py). Valid as long as the region is mapped."""
        mem, off = self._locate(gpa, n, write=True)
        return ctypes.addressof(ctypes.c_char.from_buffer(mem)) + off

    def unpack(self, fmt: struct.Struct, gpa: int) -> tuple[int, ...]:
        mem, off = self._locate(gpa, fmt.size)
        return fmt.unpack_from(mem, off)

    def pack(self, fmt: struct.Struct, gpa: int, *values: int) -> None:
        mem, off = self._locate(gpa, fmt.size, write=True)
        fmt.pack_into(mem, off, *values)
        self._changed(gpa, fmt.size)

    def u8(self, gpa: int) -> int:
        mem, off = self._locate(gpa, 1)
        return mem[off]

    def set_u8(self, gpa: int, v: int) -> None:
        mem, off = self._locate(gpa, 1, write=True)
        mem[off] = v & 0xFF
        self._changed(gpa, 1)

    def u32(self, gpa: int) -> int:
        """An aligned 32-bit read in one access: shared-ring indices that another CPU (the guest's vCPU,
        another process) updates concurrently are never seen torn. struct's '<I' reads byte by byte."""
        mem, off = self._locate(gpa, 4)
        if off % 4:
            return int(_U32.unpack_from(mem, off)[0])
        return int(ctypes.c_uint32.from_buffer(mem, off).value)

    def set_u32(self, gpa: int, v: int) -> None:
        """An aligned 32-bit write in one store (see u32): a guest reading a ring index while it changes
        from 0x0FF to 0x100 must see one or the other, not 0x000."""
        mem, off = self._locate(gpa, 4, write=True)
        if off % 4:
            _U32.pack_into(mem, off, v & 0xFFFFFFFF)
        else:
            ctypes.c_uint32.from_buffer(mem, off).value = v & 0xFFFFFFFF
        self._changed(gpa, 4)

    def u64(self, gpa: int) -> int:
        return self.unpack(_U64, gpa)[0]

    def set_u64(self, gpa: int, v: int) -> None:
        self.pack(_U64, gpa, v & 0xFFFFFFFFFFFFFFFF)

    def close(self) -> None:
        for r in self.regions:
            r.mem.close()
        self.regions.clear()


class GuestMemory(PhysicalPages):
    def __init__(self, ram_bytes: int, name: str = "guest") -> None:
        if ram_bytes <= 0 or ram_bytes % PAGE:
            raise ValueError("RAM size must be a positive multiple of the page size")
        # Private anonymous memory: untouched pages cost nothing, and the host kernel may merge pages
        # with identical contents across domains (KSM) when it is enabled (page_sharing.py).
        ram = mmap.mmap(-1, ram_bytes, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                        mmap.PROT_READ | mmap.PROT_WRITE)
        ram.madvise(mmap.MADV_MERGEABLE)
        self.ram_bytes = ram_bytes
        self.foreign_ram: set[int] = set()  # RAM pages replaced in place by another domain's (grants)
        self.shared_bytes = 0  # RAM backed by shared copy-on-write images (loader/shared_image.py)
        self._cow_ranges: list[tuple[int, int]] = []  # those ranges: (gpa, size)
        super().__init__()
        self.given_back = PageSet(ram_bytes // PAGE)
        self.regions.append(Region(0, ram_bytes, ram, "ram"))

    def add_region(self, gpa: int, size: int, name: str, fd: int | None = None) -> Region:
        """A page-aligned region outside RAM: anonymous shared memory, or the first `size` bytes of the
        file `fd` (a memfd another process maps too) when given."""
        if gpa % PAGE or size <= 0 or size % PAGE:
            raise ValueError("regions are page aligned")
        for r in self.regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise ValueError(f"region {name} at {gpa:#x} overlaps {r.name}")
        if fd is None:
            mem = mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        else:
            if os.fstat(fd).st_size < size:
                raise ValueError(f"region {name}: its file is smaller than {size} bytes")
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED)
        reg = Region(gpa, size, mem, name)
        self.regions.append(reg)
        return reg

    def remove_region(self, region: Region) -> None:
        if region.name == "ram":
            raise ValueError("RAM cannot be removed")
        self.regions.remove(region)
        region.mem.close()

    def map_shared_image(self, img: SharedImage) -> None:
        """Back [img.gpa, img.gpa + img.size) of RAM with a copy-on-write mapping of a shared image."""
        ram = self.regions[0]
        if img.gpa % PAGE or img.gpa < 0 or img.gpa + img.size > ram.end:
            raise ValueError("shared image outside RAM")
        map_copy_on_write(ram.host_address + img.gpa, img.fd, img.size)
        _madvise(ram.host_address + img.gpa, img.size, mmap.MADV_MERGEABLE)  # its private copies too
        self.shared_bytes += img.size
        self._cow_ranges.append((img.gpa, img.size))

    def map_file_pages(self, gpa: int, fd: int, offset: int, size: int) -> None:
        """Back RAM [gpa, gpa + size) with a copy-on-write (MAP_PRIVATE) mapping of file `fd` from
        page-aligned `offset`: a restore from a save file (vmm/snapshot.py). Every domain restored from
        one file shares its pages in the host's page cache until it writes one; its copies are mergeable."""
        ram = self.regions[0]
        if gpa % PAGE or offset % PAGE or size <= 0 or size % PAGE or gpa < 0 or gpa + size > ram.end:
            raise ValueError("file pages outside RAM or not page aligned")
        map_copy_on_write(ram.host_address + gpa, fd, size, offset)
        _madvise(ram.host_address + gpa, size, mmap.MADV_MERGEABLE)
        self.shared_bytes += size
        self._cow_ranges.append((gpa, size))

    # -- pages given back and populated again (XENMEM_decrease_reservation / populate_physmap) --------
    def release_ram_page(self, pfn: int, shared: bool = False) -> None:
        """Give RAM page `pfn` back to the host: it is marked unbacked first (hypervisor accesses fault
        from then on), then its host memory is dropped. A private anonymous page is discarded in place
        (MADV_DONTNEED: the host frees it, or drops this domain's reference to a page the host's
        same-page merging shares, never the other holders' copy). A page mapped from elsewhere (the
        shared kernel image's copy-on-write mapping, or `shared`: a memfd page other domains map
        through a grant) gets fresh anonymous memory at the same host address instead, so the others'
        page is left alone and nothing of it stays reachable here. The guest's own loads from an
        unbacked page read zeros (the engine keeps the host address mapped); see docs/ballooning.md."""
        ram = self.regions[0]
        gpa = pfn * PAGE
        if not 0 <= gpa < ram.end:
            raise ValueError(f"page {pfn:#x} is not RAM")
        self.given_back.add(pfn)
        if shared or any(a <= gpa < a + s for a, s in self._cow_ranges):
            _map_fixed(ram.host_address + gpa, PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1)
            _madvise(ram.host_address + gpa, PAGE, mmap.MADV_MERGEABLE)
        else:
            _madvise(ram.host_address + gpa, PAGE, mmap.MADV_DONTNEED)
        self._changed(gpa, PAGE)  # its contents are now zeros

    def resident_unbacked(self) -> list[int]:
        """Pages given back that have host memory again: the guest's own stores (or loads) reached them,
        since the engine keeps all of RAM mapped (mincore over RAM)."""
        if not self.given_back:
            return []
        ram = self.regions[0]
        vec = (ctypes.c_ubyte * (ram.size // PAGE))()
        if _libc.mincore(ctypes.c_void_p(ram.host_address), ctypes.c_size_t(ram.size), vec) != 0:
            return []
        return self.given_back.also_in(bytes(vec))

    def discard_ram_page(self, pfn: int) -> None:
        """Drop the host memory of a page given back again (what the guest stored there is lost, as a
        store to memory Xen has no page behind)."""
        if pfn in self.given_back:
            _madvise(self.regions[0].host_address + pfn * PAGE, PAGE, mmap.MADV_DONTNEED)
            self._changed(pfn * PAGE, PAGE)

    def populate_ram_page(self, pfn: int) -> None:
        """Back an unbacked RAM page again with a zero page (whatever the guest stored there meanwhile is
        discarded first: Xen hands out a scrubbed page). The host allocates it when it is first touched."""
        ram = self.regions[0]
        if pfn not in self.given_back:
            raise ValueError(f"page {pfn:#x} is populated")
        _madvise(ram.host_address + pfn * PAGE, PAGE, mmap.MADV_DONTNEED)
        self.given_back.discard(pfn)
        self._changed(pfn * PAGE, PAGE)

    def owns_ram_page(self, gpa: int) -> bool:
        """True when page `gpa` is RAM of this domain's own (not outside RAM, not given back, not another
        domain's page mapped over it): what Xen's get_page_from_gfn(..., P2M_ALLOC) and
        get_page_type(PGT_writable_page) accept for a page the hypervisor writes on the guest's behalf."""
        return (gpa % PAGE == 0 and 0 <= gpa < self.ram_bytes and gpa not in self.foreign_ram
                and gpa // PAGE not in self.given_back)

    def region_at(self, gpa: int) -> Region | None:
        for r in self.regions:
            if r.gpa <= gpa < r.end:
                return r
        return None

    # -- pages shared with other domain processes (grant mappings, vmm/grants.py) ----------------------
    # The caller keeps the guest's vCPUs out of guest code around each of these (Domain.quiesced): a
    # guest store between the copy and the remap would be lost.
    def share_ram_page(self, gpa: int) -> int:
        """Back RAM page `gpa` with a new one-page memfd holding its content, mapped MAP_SHARED at the same
        host address (the engine keeps using that address, so the guest sees no change). Returns the
        memfd, sealed against resizing (another process that maps it cannot make our accesses fault)."""
        ram = self.regions[0]
        if gpa % PAGE or not 0 <= gpa < ram.end:
            raise ValueError(f"{gpa:#x} is not a RAM page")
        fd = os.memfd_create(f"grant-{gpa:#x}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, PAGE)
            os.pwrite(fd, ram.mem[gpa:gpa + PAGE], 0)
            _map_fixed(ram.host_address + gpa, PAGE, mmap.MAP_SHARED, fd)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def unshare_ram_page(self, gpa: int, fd: int) -> None:
        """Give RAM page `gpa` private memory again, with the shared page's current content; closes `fd`.
        Whoever still maps that memfd keeps a page nobody else sees."""
        ram = self.regions[0]
        try:
            data = os.pread(fd, PAGE, 0)
            _map_fixed(ram.host_address + gpa, PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1)
            ram.mem[gpa:gpa + PAGE] = data.ljust(PAGE, b"\0")
            _madvise(ram.host_address + gpa, PAGE, mmap.MADV_MERGEABLE)
        finally:
            os.close(fd)

    def map_foreign_page(self, gpa: int, fd: int, writable: bool) -> Region | None:
        """Make guest-physical page `gpa` alias page 0 of memfd `fd` (another domain's granted page).
        Inside RAM (writable only) the RAM page's host memory is replaced in place and None is returned;
        outside RAM the page becomes a region of its own (the caller maps it into the engine)."""
        ram = self.regions[0]
        if gpa % PAGE or gpa < 0:
            raise ValueError(f"{gpa:#x} is not a page address")
        if os.fstat(fd).st_size < PAGE:
            raise ValueError("the shared page's file is smaller than a page")
        if gpa < ram.end:
            if not writable:
                raise ValueError("a read-only foreign page cannot replace a RAM page")
            _map_fixed(ram.host_address + gpa, PAGE, mmap.MAP_SHARED, fd)
            self._changed(gpa, PAGE)  # other contents at the same address: no stale translated code
            self.foreign_ram.add(gpa)
            return None
        for r in self.regions:
            if gpa < r.end and r.gpa < gpa + PAGE:
                raise ValueError(f"{gpa:#x} overlaps {r.name}")
        if writable:
            mem = mmap.mmap(fd, PAGE, mmap.MAP_SHARED)
        else:  # a page of address space of our own, then the file read-only over it (host_address works)
            mem = mmap.mmap(-1, PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:
                _map_fixed(ctypes.addressof(ctypes.c_char.from_buffer(mem)), PAGE, mmap.MAP_SHARED, fd,
                           mmap.PROT_READ)
            except BaseException:
                mem.close()
                raise
        reg = Region(gpa, PAGE, mem, f"foreign-{gpa:#x}", writable)
        self.regions.append(reg)
        return reg

    def unmap_foreign_page(self, gpa: int, region: Region | None) -> None:
        """Undo map_foreign_page: a RAM page gets fresh private memory (zeros, as a page Xen repopulates);
        a region of its own is removed (the caller has unmapped it from the engine first)."""
        if region is None:
            ram = self.regions[0]
            self.foreign_ram.discard(gpa)
            _map_fixed(ram.host_address + gpa, PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1)
            _madvise(ram.host_address + gpa, PAGE, mmap.MADV_MERGEABLE)
            self._changed(gpa, PAGE)
        else:
            self.remove_region(region)


class ForeignPages(PhysicalPages):
    """Domain 0's mapping of a few pages another process's guest owns (Xen's foreign mapping): each
    (gpa, offset) maps one page of the memfd `fd` at `offset`. Nothing else of that guest is reachable."""

    def __init__(self, fd: int, pages: list[tuple[int, int]]) -> None:
        super().__init__()
        size = os.fstat(fd).st_size
        try:
            for gpa, offset in pages:
                if gpa % PAGE or offset % PAGE or offset + PAGE > size:
                    raise ValueError(f"foreign page {gpa:#x} at offset {offset:#x} is not in the file")
                self.regions.append(Region(gpa, PAGE, mmap.mmap(fd, PAGE, mmap.MAP_SHARED, offset=offset),
                                           f"foreign-{gpa:#x}"))
        except BaseException:
            self.close()
            raise


MAP_FIXED = 0x10  # <sys/mman.h> (Linux, all architectures); Python's mmap module does not export it
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]


_libc.madvise.restype = ctypes.c_int
_libc.mincore.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _madvise(host_address: int, size: int, advice: int) -> None:
    if _libc.madvise(host_address, size, advice) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"madvise failed: {os.strerror(err)}")


def _map_fixed(host_address: int, size: int, flags: int, fd: int,
               prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> None:
    """Replace the host pages at `host_address` (inside one of our mappings) by a mapping of `fd` from
    offset 0 (flags MAP_SHARED), or of fresh anonymous memory (fd -1, MAP_ANONYMOUS)."""
    res = _libc.mmap(host_address, size, prot, flags | MAP_FIXED, fd, 0)
    if res != host_address:
        err = ctypes.get_errno()
        raise OSError(err, f"remapping guest memory failed: {os.strerror(err)}")


def map_copy_on_write(host_address: int, fd: int, size: int, offset: int = 0) -> None:
    """Replace the host pages at `host_address` by a private (copy-on-write) mapping of file `fd` from
    page-aligned `offset`."""
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    res = _libc.mmap(host_address, size, prot, mmap.MAP_PRIVATE | MAP_FIXED, fd, offset)
    if res != host_address:
        err = ctypes.get_errno()
        raise OSError(err, f"mapping a shared image failed: {os.strerror(err)}")


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class VirtualAccess:
    """Reads and writes at guest-virtual addresses (hypercall buffers), translated page by page through
    the guest's own page tables; every page must lie in memory the guest owns."""

    def __init__(self, mem: GuestMemory, translate: Callable[[int], int | None],
                 may_write: Callable[[int], bool] | None = None) -> None:
        self.mem = mem
        self.translate = translate
        self.may_write = may_write  # the guest's page tables allow a write there (core/pagewalk.py)

    def _pieces(self, va: int, n: int) -> list[tuple[int, int]]:
        if n < 0 or n > 1 << 24:
            raise GuestFault(f"bad buffer length {n}")
        out = []
        while n > 0:
            pa = self.translate(va)
            if pa is None:
                raise GuestFault(f"guest-virtual address {va:#x} is not mapped")
            c = min(n, PAGE - (va & (PAGE - 1)))
            out.append((pa, c))
            va += c
            n -= c
        return out

    def read(self, va: int, n: int) -> bytes:
        return b"".join(self.mem.read(pa, c) for pa, c in self._pieces(va, n))

    def write(self, va: int, data: bytes) -> None:
        pieces = self._pieces(va, len(data))
        if self.may_write is not None:  # as Xen's copy_to_guest: a read-only page is -EFAULT, nothing written
            o = 0
            for _pa, c in pieces:
                if not self.may_write(va + o):
                    raise GuestFault(f"guest-virtual address {va + o:#x} is read-only")
                o += c
        o = 0
        for pa, c in pieces:
            self.mem.write(pa, data[o:o + c])
            o += c

    def unpack(self, fmt: struct.Struct, va: int) -> tuple[int, ...]:
        return fmt.unpack(self.read(va, fmt.size))

    def pack(self, fmt: struct.Struct, va: int, *values: int) -> None:
        self.write(va, fmt.pack(*values))
