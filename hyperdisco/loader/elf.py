"""PVH kernel images: ELF32 or ELF64, little-endian, EM_386 or EM_X86_64 (Xen loads both classes for
PVH: a 32-bit kernel, or an ELF32 container around 64-bit code, as many unikernels ship), their loadable
segments and their Xen ELF notes (xen_notes.py).

The file is hostile input: every offset, size and count is checked against the file before it is used,
sums are checked for wrap-around, and nothing is allocated beyond slices of the file itself. Checks, as
Xen's libelf makes them (xen/common/libelf/libelf-loader.c elf_init, elf_parse_binary; libelf-tools.c
elf_phdr_is_loadable, elf_note_next; libelf-dominfo.c elf_xen_parse) plus our own where libelf only
marks an image "broken" or trusts the toolstack:

- the program and section header tables lie inside the file (libelf: "phdr overflow", "shdr overflow");
- a loadable segment is PT_LOAD with any of the R/W/X flags (libelf's elf_phdr_is_loadable); its file
  bytes lie inside the file, it holds no more file bytes than memory bytes, and it neither wraps around
  the class's address space nor overlaps another loadable segment (ours: libelf would copy over itself);
- no segment reaches past the largest guest RAM we build (ours: the loader checks the domain's actual
  RAM size later, loader/pvh.py);
- notes come from PT_NOTE segments (one with p_offset 0 is skipped: old binutils), else from SHT_NOTE
  sections; a note that runs past its segment is refused (libelf stops and marks the image broken); at
  most 65536 notes (libelf's ELF_MAX_TOTAL_NOTE_COUNT); descriptors are aligned to 8 bytes in an ELF64
  note segment aligned to 8, else to 4 (libelf's elf_note_round_up).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ImageError
from ..platform.layout import MAX_RAM
from .xen_notes import XenNote, XenNotes, check_pvh, parse_xen_notes

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
SHT_NOTE = 7
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_386, EM_X86_64 = 3, 62
MAX_NOTES = 65536  # libelf's ELF_MAX_TOTAL_NOTE_COUNT
MAX_STRING = 4096  # libelf's ELF_MAX_STRING_LENGTH

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr: type flags offset vaddr paddr filesz memsz align
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr: name type flags addr offset size link info align entsize
EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")  # Elf32_Ehdr
PHDR32 = struct.Struct("<IIIIIIII")  # Elf32_Phdr: type offset vaddr paddr filesz memsz flags align
SHDR32 = struct.Struct("<IIIIIIIIII")  # Elf32_Shdr
NHDR = struct.Struct("<III")  # namesz descsz type (the same in both classes)


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class KernelImage:
    segments: list[Segment]
    pvh_entry: int
    notes: dict[int, bytes]  # Xen note type -> descriptor (the last of each type)
    xen: XenNotes | None = None
    elf_class: int = ELFCLASS64

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


@dataclass(frozen=True)
class _Phdr:
    type: int
    flags: int
    offset: int
    paddr: int
    filesz: int
    memsz: int
    align: int


def _fail(name: str, why: str) -> ImageError:
    return ImageError(f"hyperdisco: {name}: {why}")


def check_header(data: bytes, name: str = "kernel") -> int:
    """The ELF class of a little-endian x86 ELF file; ImageError otherwise."""
    if len(data) < 16 or data[:4] != b"\x7fELF":
        raise _fail(name, "not an ELF kernel")
    cls, order = data[4], data[5]
    if cls not in (ELFCLASS32, ELFCLASS64):
        raise _fail(name, f"unknown ELF class {cls} (neither ELF32 nor ELF64)")
    if order != ELFDATA2LSB:
        raise _fail(name, "not a little-endian ELF kernel (x86 or x86-64 expected)")
    ehdr = EHDR if cls == ELFCLASS64 else EHDR32
    if len(data) < ehdr.size:
        raise _fail(name, "truncated ELF header")
    machine = struct.unpack_from("<H", data, 18)[0]
    if machine not in (EM_386, EM_X86_64):
        raise _fail(name, f"ELF kernel is for machine {machine}, not x86 (EM_386) or x86-64 (EM_X86_64)")
    return cls


def _program_headers(data: bytes, cls: int, name: str) -> list[_Phdr]:
    if cls == ELFCLASS64:
        _i, _t, _m, _v, _e, phoff, _sh, _f, _eh, phentsize, phnum, *_ = EHDR.unpack_from(data)
        want = PHDR
    else:
        _i, _t, _m, _v, _e, phoff, _sh, _f, _eh, phentsize, phnum, *_ = EHDR32.unpack_from(data)
        want = PHDR32
    if phnum == 0:
        raise _fail(name, "kernel has no program headers")
    if phentsize < want.size or phoff + phnum * phentsize > len(data):
        raise _fail(name, "truncated program headers")
    out = []
    for i in range(phnum):
        at = phoff + i * phentsize
        if cls == ELFCLASS64:
            typ, flags, off, _va, pa, filesz, memsz, align = PHDR.unpack_from(data, at)
        else:
            typ, off, _va, pa, filesz, memsz, flags, align = PHDR32.unpack_from(data, at)
        out.append(_Phdr(typ, flags, off, pa, filesz, memsz, align))
    return out


def _note_sections(data: bytes, cls: int, name: str) -> list[tuple[int, int, int]]:
    """(offset, size, alignment) of the SHT_NOTE sections; the section header table must lie inside the
    file whenever it has entries (libelf's elf_init refuses a "shdr overflow")."""
    if cls == ELFCLASS64:
        *_h, shoff, _f, _eh, _pe, _pn, shentsize, shnum, _ = EHDR.unpack_from(data)
        want = SHDR
    else:
        *_h, shoff, _f, _eh, _pe, _pn, shentsize, shnum, _ = EHDR32.unpack_from(data)
        want = SHDR32
    if shnum == 0:
        return []
    if shentsize < want.size or shoff + shnum * shentsize > len(data):
        raise _fail(name, "truncated section headers")
    out = []
    for i in range(1, shnum):  # section 0 is the null section
        if cls == ELFCLASS64:
            _n, typ, _fl, _a, off, size, _l, _in, align, _es = SHDR.unpack_from(data, shoff + i * shentsize)
        else:
            _n, typ, _fl, _a, off, size, _l, _in, align, _es = SHDR32.unpack_from(data, shoff + i * shentsize)
        if typ == SHT_NOTE:
            out.append((off, size, align))
    return out


def _notes_in(data: bytes, off: int, size: int, align: int, cls: int, name: str,
              count: list[int]) -> list[XenNote]:
    """The Xen-owned notes in data[off:off+size]; `count` counts every note seen."""
    if off + size > len(data):
        raise _fail(name, f"ELF note area at offset {off:#x} lies outside the file")
    step = 8 if cls == ELFCLASS64 and align > 4 else 4
    out = []
    pos, end = off, off + size
    while pos < end:
        count[0] += 1
        if count[0] > MAX_NOTES:
            raise _fail(name, f"more than {MAX_NOTES} ELF notes")
        if pos + NHDR.size > end:
            raise _fail(name, f"malformed ELF note at offset {pos:#x} (truncated header)")
        namesz, descsz, typ = NHDR.unpack_from(data, pos)
        name_at = pos + NHDR.size
        desc_at = name_at + namesz + (-(NHDR.size + namesz)) % step
        if name_at + namesz > end or desc_at + descsz > end:
            raise _fail(name, f"malformed ELF note at offset {pos:#x} (runs past its note area)")
        if data[name_at:name_at + namesz].split(b"\0", 1)[0] == b"Xen":
            # a string runs to its NUL, as libelf's elf_strval reads it: Linux's FEATURES note is an .ascii
            # without one, ended by the note's zero padding
            text = data[desc_at:desc_at + MAX_STRING]
            nul = text.find(b"\0")
            out.append(XenNote(typ, data[desc_at:desc_at + descsz], text[:nul] if nul >= 0 else None))
        pos = desc_at + descsz + (-descsz) % step
    return out


def parse_kernel(data: bytes, name: str = "kernel") -> KernelImage:
    """Check a PVH kernel ELF file and take out its loadable segments, entry point and Xen notes."""
    cls = check_header(data, name)
    phdrs = _program_headers(data, cls, name)
    limit = 1 << (64 if cls == ELFCLASS64 else 32)
    segments: list[Segment] = []
    raw_notes: list[XenNote] = []
    count = [0]
    pstart, pend = limit, 0
    for i, ph in enumerate(phdrs):
        if ph.type == PT_LOAD and ph.flags & (PF_R | PF_W | PF_X):
            if ph.offset + ph.filesz > len(data):
                raise _fail(name, f"segment {i} lies outside the file")
            if ph.filesz > ph.memsz:
                raise _fail(name, f"segment {i} has more file bytes ({ph.filesz:#x}) than memory bytes "
                                  f"({ph.memsz:#x})")
            if ph.paddr + ph.memsz > limit:
                raise _fail(name, f"segment {i} wraps around the address space")
            pstart, pend = min(pstart, ph.paddr), max(pend, ph.paddr + ph.memsz)
            if ph.memsz:
                if ph.paddr + ph.memsz > MAX_RAM:
                    raise _fail(name, f"segment {i} at {ph.paddr:#x} (+{ph.memsz:#x}) lies beyond any "
                                      f"guest RAM (at most {MAX_RAM >> 20} MiB)")
                segments.append(Segment(ph.paddr, data[ph.offset:ph.offset + ph.filesz], ph.memsz))
        elif ph.type == PT_NOTE and ph.offset != 0:  # p_offset 0: old binutils' bogus note segment
            raw_notes += _notes_in(data, ph.offset, ph.filesz, ph.align, cls, name, count)
    if not raw_notes:  # libelf falls back to SHT_NOTE sections when the segments hold no Xen note
        for off, size, align in _note_sections(data, cls, name):
            raw_notes += _notes_in(data, off, size, align, cls, name, count)
    if not segments:
        raise _fail(name, "kernel has no loadable segments")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.paddr < a.paddr + a.memsz:
            raise _fail(name, f"loadable segments at {a.paddr:#x} (+{a.memsz:#x}) and {b.paddr:#x} overlap")
    xen = parse_xen_notes(raw_notes, name)
    entry = check_pvh(xen, pstart, pend, name)
    return KernelImage(segments, entry, {n.type: n.desc for n in raw_notes}, xen, cls)


def xen_notes(data: bytes, name: str = "kernel") -> list[XenNote]:
    """The Xen notes (type, descriptor) of an ELF file, without checking its segments (for images/,
    which only asks whether a file is a PVH kernel before decompressing or caching it)."""
    cls = check_header(data, name)
    count = [0]
    out: list[XenNote] = []
    for ph in _program_headers(data, cls, name):
        if ph.type == PT_NOTE and ph.offset != 0:
            out += _notes_in(data, ph.offset, ph.filesz, ph.align, cls, name, count)
    if not out:
        for off, size, align in _note_sections(data, cls, name):
            out += _notes_in(data, off, size, align, cls, name, count)
    return out
