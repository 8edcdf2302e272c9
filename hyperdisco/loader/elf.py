"""ELF64 kernel images: loadable segments and the Xen ELF notes (xen/include/public/elfnote.h)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ImageError
from ..xen.abi import XEN_ELFNOTE_PHYS32_ENTRY

PT_LOAD, PT_NOTE = 1, 4
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
NHDR = struct.Struct("<III")


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class KernelImage:
    segments: list[Segment]
    pvh_entry: int
    notes: dict[int, bytes]

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def parse_kernel(data: bytes, name: str = "kernel") -> KernelImage:
    if len(data) < EHDR.size or data[:4] != b"\x7fELF":
        raise ImageError(f"hyperdisco: {name}: not an ELF kernel")
    ident, e_type, machine, _v, _entry, phoff, _sh, _fl, _eh, phentsize, phnum, *_ = EHDR.unpack_from(data)
    if ident[4] != 2 or ident[5] != 1 or machine != 62:
        raise ImageError(f"hyperdisco: {name}: not an x86-64 little-endian ELF")
    if phentsize < PHDR.size or phoff + phnum * phentsize > len(data):
        raise ImageError(f"hyperdisco: {name}: truncated program headers")
    segments: list[Segment] = []
    notes: dict[int, bytes] = {}
    for i in range(phnum):
        p_type, _f, off, _va, pa, filesz, memsz, _al = PHDR.unpack_from(data, phoff + i * phentsize)
        if off + filesz > len(data) or filesz > memsz and p_type == PT_LOAD:
            raise ImageError(f"hyperdisco: {name}: segment {i} lies outside the file")
        if p_type == PT_LOAD and memsz:
            segments.append(Segment(pa, data[off:off + filesz], memsz))
        elif p_type == PT_NOTE:
            notes.update(_xen_notes(data[off:off + filesz]))
    if XEN_ELFNOTE_PHYS32_ENTRY not in notes:
        raise ImageError(f"hyperdisco: {name}: kernel has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
    if not segments:
        raise ImageError(f"hyperdisco: {name}: kernel has no loadable segments")
    desc = notes[XEN_ELFNOTE_PHYS32_ENTRY]
    entry = int.from_bytes(desc[:8].ljust(8, b"\0"), "little") & 0xFFFFFFFF
    return KernelImage(segments, entry, notes)


def _xen_notes(blob: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    o = 0
    while o + NHDR.size <= len(blob):
        namesz, descsz, typ = NHDR.unpack_from(blob, o)
        name_end = o + NHDR.size + namesz
        desc_off = o + NHDR.size + ((namesz + 3) & ~3)
        if desc_off + descsz > len(blob):
            break
        if blob[o + NHDR.size:name_end].rstrip(b"\0") == b"Xen":
            out[typ] = blob[desc_off:desc_off + descsz]
        o = desc_off + ((descsz + 3) & ~3)
    return out
