"""The PVH kernel loader as Xen's libelf: ELF32 and ELF64 images, every Xen note, program and section
header checks, and crafted hostile files that must give one ImageError, never another exception."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_support import KERNEL_PADDR, elf_note, make_elf

from hyperdisco.core.memory import GuestMemory
from hyperdisco.errors import ImageError
from hyperdisco.images.bzimage import kernel_elf_from_bytes, pvh_entry
from hyperdisco.loader.elf import EHDR, EHDR32, NHDR, PHDR, PHDR32, Segment, parse_kernel
from hyperdisco.loader.pvh import load_pvh
from hyperdisco.platform.layout import MAX_RAM
from hyperdisco.xen import features as ft

MiB = 1 << 20
ENTRY_NOTE = elf_note(b"Xen", 18, struct.pack("<I", KERNEL_PADDR))


def note8(name: bytes, typ: int, desc: bytes) -> bytes:
    """A note in the 8-byte aligned layout of an ELF64 note segment with p_align 8."""
    n = name + b"\0"
    head = NHDR.pack(len(n), len(desc), typ) + n
    return head.ljust((len(head) + 7) & ~7, b"\0") + desc.ljust((len(desc) + 7) & ~7, b"\0")


# -- classes and machines -------------------------------------------------------------------------------
@pytest.mark.parametrize("machine", [3, 62])  # a 32-bit kernel; an ELF32 container around 64-bit code
def test_elf32_kernel(machine: int) -> None:
    k = parse_kernel(make_elf(cls=32, machine=machine, entry=KERNEL_PADDR + 8, code=b"\x90" * 64,
                              memsz=0x3000))
    assert k.elf_class == 1
    assert k.pvh_entry == KERNEL_PADDR + 8
    assert k.segments == [Segment(KERNEL_PADDR, b"\x90" * 64, 0x3000)]


def test_elf64_with_em_386() -> None:
    assert parse_kernel(make_elf(machine=3)).elf_class == 2


def test_elf32_loads_into_guest_memory() -> None:
    mem = GuestMemory(64 * MiB)
    try:
        k = parse_kernel(make_elf(cls=32, code=b"\xeb\xfe" * 8, memsz=0x2000,
                                  extra_loads=((KERNEL_PADDR + 0x4000, b"data", 0x1000),)))
        load_pvh(mem, k, None, "", 1)
        assert mem.read(KERNEL_PADDR, 16) == b"\xeb\xfe" * 8
        assert mem.read(KERNEL_PADDR + 0x4000, 5) == b"data\0"
    finally:
        mem.close()


def test_bzimage_layer_accepts_elf32() -> None:
    elf = make_elf(cls=32, machine=3)
    assert kernel_elf_from_bytes(elf) == elf
    assert pvh_entry(elf) == KERNEL_PADDR


@pytest.mark.parametrize("cut", [16, 30, EHDR32.size - 1])
def test_truncated_elf32_header(cut: int) -> None:
    with pytest.raises(ImageError, match="truncated ELF header"):
        parse_kernel(make_elf(cls=32)[:cut])


# -- program and section headers ------------------------------------------------------------------------
def _patch32(data: bytes, **fields: int) -> bytes:
    names = ["ident", "type", "machine", "version", "entry", "phoff", "shoff", "flags", "ehsize",
             "phentsize", "phnum", "shentsize", "shnum", "shstrndx"]
    vals = list(EHDR32.unpack_from(data))
    for k, v in fields.items():
        vals[names.index(k)] = v
    return EHDR32.pack(*vals) + data[EHDR32.size:]


@pytest.mark.parametrize("fields", [
    {"phoff": 0xFFFFFF00}, {"phnum": 1000}, {"phentsize": PHDR32.size - 1}, {"phnum": 0},
])
def test_bad_elf32_program_headers(fields: dict[str, int]) -> None:
    with pytest.raises(ImageError, match="program headers"):
        parse_kernel(_patch32(make_elf(cls=32), **fields))


def test_section_header_table_outside_the_file() -> None:
    with pytest.raises(ImageError, match="truncated section headers"):
        parse_kernel(_patch32(make_elf(cls=32, notes=b""), shoff=0x1000, shnum=3, shentsize=40))


def _load_phdr_at(data: bytes, index: int, cls: int = 64, **fields: int) -> bytes:
    """Rewrite program header `index` (0 is the note, 1 the first load)."""
    if cls == 64:
        names = ["type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align"]
        fmt, at = PHDR, EHDR.size + index * PHDR.size
    else:
        names = ["type", "offset", "vaddr", "paddr", "filesz", "memsz", "flags", "align"]
        fmt, at = PHDR32, EHDR32.size + index * PHDR32.size
    vals = list(fmt.unpack_from(data, at))
    for k, v in fields.items():
        vals[names.index(k)] = v
    return data[:at] + fmt.pack(*vals) + data[at + fmt.size:]


@pytest.mark.parametrize("cls", [32, 64])
def test_segment_checks(cls: int) -> None:
    data = make_elf(cls=cls)
    with pytest.raises(ImageError, match="outside the file"):
        parse_kernel(_load_phdr_at(data, 1, cls, offset=0xFFFFF000))
    with pytest.raises(ImageError, match="more file bytes"):
        parse_kernel(_load_phdr_at(data, 1, cls, filesz=16, memsz=8))
    top = (1 << cls) - 0x1000
    with pytest.raises(ImageError, match="wraps around"):
        parse_kernel(_load_phdr_at(data, 1, cls, paddr=top, memsz=0x2000))
    with pytest.raises(ImageError, match="beyond any guest RAM"):
        parse_kernel(_load_phdr_at(data, 1, cls, paddr=MAX_RAM - 0x1000, memsz=0x2000))
    # a PT_LOAD without R/W/X is not loadable (libelf's elf_phdr_is_loadable): no segment left
    with pytest.raises(ImageError, match="no loadable"):
        parse_kernel(_load_phdr_at(data, 1, cls, flags=0))


def test_huge_memsz_is_refused_before_any_allocation() -> None:
    with pytest.raises(ImageError, match="beyond any guest RAM"):
        parse_kernel(make_elf(memsz=1 << 60))


@pytest.mark.parametrize("cls", [32, 64])
def test_overlapping_segments(cls: int) -> None:
    with pytest.raises(ImageError, match="overlap"):
        parse_kernel(make_elf(cls=cls, memsz=0x2000, extra_loads=((KERNEL_PADDR + 0x1000, b"x", 0x10),)))
    with pytest.raises(ImageError, match="overlap"):  # listed out of order, still found
        parse_kernel(make_elf(cls=cls, memsz=0x2000, extra_loads=((KERNEL_PADDR - 0x10, b"x", 0x20),)))
    k = parse_kernel(make_elf(cls=cls, memsz=0x2000, extra_loads=((KERNEL_PADDR + 0x2000, b"x", 0x10),)))
    assert len(k.segments) == 2  # touching is fine


# -- notes ----------------------------------------------------------------------------------------------
def test_notes_from_section_when_no_note_segment() -> None:
    for cls in (32, 64):
        assert parse_kernel(make_elf(cls=cls, section_notes=True)).pvh_entry == KERNEL_PADDR


def test_note_segment_at_offset_zero_is_skipped() -> None:
    data = _load_phdr_at(make_elf(), 0, 64, offset=0)
    with pytest.raises(ImageError, match="PVH entry note"):
        parse_kernel(data)


def test_eight_byte_aligned_notes_in_elf64() -> None:
    notes = note8(b"Xen", 6, b"linux\0") + note8(b"Xen", 18, struct.pack("<I", KERNEL_PADDR + 4))
    k = parse_kernel(make_elf(notes=notes, note_align=8))
    assert k.pvh_entry == KERNEL_PADDR + 4 and k.xen is not None and k.xen.strings["GUEST_OS"] == "linux"


def test_too_many_notes() -> None:
    one = elf_note(b"X", 1, b"")
    many = one * 65536
    with pytest.raises(ImageError, match="more than 65536 ELF notes"):
        parse_kernel(make_elf(notes=many + ENTRY_NOTE))
    assert parse_kernel(make_elf(notes=many[:-len(one)] + ENTRY_NOTE)).pvh_entry == KERNEL_PADDR


def test_every_xen_note_is_read() -> None:
    notes = (elf_note(b"Xen", 1, struct.pack("<Q", 0xFFFFFFFF81000000))  # ENTRY (PV)
             + elf_note(b"Xen", 2, struct.pack("<Q", 0xFFFFFFFF81001000))  # HYPERCALL_PAGE (PV)
             + elf_note(b"Xen", 3, struct.pack("<Q", 0xFFFFFFFF80000000))  # VIRT_BASE
             + elf_note(b"Xen", 4, struct.pack("<Q", 0))  # PADDR_OFFSET
             + elf_note(b"Xen", 5, b"xen-3.0\0") + elf_note(b"Xen", 6, b"linux\0")
             + elf_note(b"Xen", 7, b"2.6\0") + elf_note(b"Xen", 8, b"generic\0")
             + elf_note(b"Xen", 9, b"yes\0")
             + elf_note(b"Xen", 10, b"!writable_page_tables|pae_pgdir_above_4gb|frobnicate\0")
             + elf_note(b"Xen", 12, struct.pack("<Q", 0xFFFF800000000000))
             + elf_note(b"Xen", 13, struct.pack("<QQ", 1, 1))  # 16 bytes: numeric 0, as libelf
             + elf_note(b"Xen", 14, struct.pack("<I", 1))
             + elf_note(b"Xen", 17, struct.pack("<I", 1 << ft.XENFEAT_hvm_callback_vector))
             + elf_note(b"Xen", 16, b"\1")
             + elf_note(b"Xen", 99, b"whatever") + elf_note(b"Xen", 0, b"")
             + ENTRY_NOTE)
    k = parse_kernel(make_elf(notes=notes))
    x = k.xen
    assert x is not None
    assert x.numbers == {"ENTRY": 0xFFFFFFFF81000000, "HYPERCALL_PAGE": 0xFFFFFFFF81001000,
                         "VIRT_BASE": 0xFFFFFFFF80000000, "PADDR_OFFSET": 0,
                         "HV_START_LOW": 0xFFFF800000000000,
                         "L1_MFN_VALID": 0, "SUSPEND_CANCEL": 1, "MOD_START_PFN": 1,
                         "PHYS32_ENTRY": KERNEL_PADDR}
    assert x.strings == {"XEN_VERSION": "xen-3.0", "GUEST_OS": "linux", "GUEST_VERSION": "2.6",
                         "LOADER": "generic", "PAE_MODE": "yes",
                         "FEATURES": "!writable_page_tables|pae_pgdir_above_4gb|frobnicate"}
    assert x.features_required == 1 << ft.XENFEAT_writable_page_tables
    assert x.features_supported == (1 << ft.XENFEAT_writable_page_tables | 1 << ft.XENFEAT_pae_pgdir_above_4gb
                                    | 1 << ft.XENFEAT_hvm_callback_vector)
    assert x.ignored == (99, 0)
    assert k.pvh_entry == KERNEL_PADDR  # for PVH the entry is PHYS32_ENTRY, never ENTRY


@pytest.mark.parametrize("desc,entry", [(b"\x00\x00\x00\x01", 0x1000000), (b"\x00\x00\x00", 0),
                                        (struct.pack("<H", 0x1234), 0x1234)])
def test_numeric_sizes_as_libelf(desc: bytes, entry: int) -> None:
    notes = elf_note(b"Xen", 18, desc)
    if entry == KERNEL_PADDR:
        assert parse_kernel(make_elf(notes=notes)).pvh_entry == entry
    else:  # a 3-byte descriptor reads as 0, outside the image
        with pytest.raises(ImageError, match=f"entry point {entry:#x} lies outside"):
            parse_kernel(make_elf(notes=notes))


def test_entry_bounds_as_xen() -> None:
    with pytest.raises(ImageError, match="lies outside the kernel image"):
        parse_kernel(make_elf(entry=KERNEL_PADDR - 1))
    with pytest.raises(ImageError, match="lies outside the kernel image"):
        parse_kernel(make_elf(entry=KERNEL_PADDR + 0x2001, memsz=0x2000))
    # libelf's bound is inclusive at the end
    end = KERNEL_PADDR + 0x2000
    assert parse_kernel(make_elf(entry=end, memsz=0x2000)).pvh_entry == end


def test_init_p2m_inside_the_image() -> None:
    with pytest.raises(ImageError, match="INIT_P2M"):
        parse_kernel(make_elf(notes=ENTRY_NOTE + elf_note(b"Xen", 15, struct.pack("<Q", KERNEL_PADDR + 8))))
    parse_kernel(make_elf(notes=ENTRY_NOTE + elf_note(b"Xen", 15, struct.pack("<Q", 1 << 40))))


@pytest.mark.parametrize("features,match", [
    (b"!dom0\0", "XENFEAT_dom0"),
    (b"writable_page_tables|!frobnicate\0", "requires Xen feature 'frobnicate'"),
    (b"!\0", "requires Xen feature ''"),
])
def test_required_features_refused(features: bytes, match: str) -> None:
    with pytest.raises(ImageError, match=match):
        parse_kernel(make_elf(notes=ENTRY_NOTE + elf_note(b"Xen", 10, features)))


def test_supported_dom0_is_fine() -> None:
    k = parse_kernel(make_elf(notes=ENTRY_NOTE + elf_note(b"Xen", 10, b"dom0|hvm_callback_vector\0")))
    assert k.xen is not None and k.xen.features_required == 0


def test_string_note_without_nul() -> None:
    with pytest.raises(ImageError, match="GUEST_OS is not a NUL-terminated string"):
        parse_kernel(make_elf(notes=ENTRY_NOTE + elf_note(b"Xen", 6, b"linu"), code=b"\xf4" * 64))
    # a string without NUL in its descriptor ends in the note's padding, as Linux's FEATURES note
    k = parse_kernel(make_elf(notes=elf_note(b"Xen", 10, b"!writable_page_tables") + ENTRY_NOTE))
    assert k.xen is not None and k.xen.strings["FEATURES"] == "!writable_page_tables"


# -- hostile files --------------------------------------------------------------------------------------
@pytest.fixture
def seeds() -> Iterator[random.Random]:
    yield random.Random(1305)


def test_mutated_images_give_one_line_errors(seeds: random.Random) -> None:
    """Random byte changes in the headers and notes of valid ELF32/ELF64 images: parse_kernel either
    accepts the image or raises ImageError with one line, never anything else."""
    bases = [make_elf(), make_elf(cls=32), make_elf(section_notes=True),
             make_elf(notes=ENTRY_NOTE + elf_note(b"Xen", 10, b"!writable_page_tables\0"))]
    accepted = refused = 0
    for _ in range(3000):
        data = bytearray(seeds.choice(bases))
        for _ in range(seeds.randint(1, 4)):
            at = seeds.randrange(min(len(data), 0x180))
            data[at] = seeds.choice([0, 0xFF, 0x7F, 0x80, seeds.randrange(256)])
        try:
            parse_kernel(bytes(data))
            accepted += 1
        except ImageError as exc:
            assert "\n" not in str(exc)
            refused += 1
    assert accepted and refused


# -- through the command line: one line, status 2 -----------------------------------------------------
@pytest.mark.parametrize("image,needle", [
    (make_elf(cls=32, memsz=0x2000, extra_loads=((KERNEL_PADDR + 0x1000, b"x", 0x10),)), "overlap"),
    (make_elf(notes=ENTRY_NOTE + elf_note(b"Xen", 10, b"!dom0\0")), "XENFEAT_dom0"),
    (make_elf(memsz=1 << 60), "beyond any guest RAM"),
    (make_elf(cls=32, entry=KERNEL_PADDR - 0x1000), "outside the kernel image"),
    (make_elf(notes=ENTRY_NOTE[:-2]), "malformed ELF note"),
    (make_elf(cls=32, paddr=64 << 20), "does not fit in 32 MiB"),
])
def test_hostile_kernels_through_the_cli(tmp_path: Path, image: bytes, needle: str) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(image)
    p = subprocess.run([sys.executable, "-m", "hyperdisco", "run", "--kernel", str(kernel), "--memory", "32"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyperdisco: ") and needle in lines[0], p.stderr
