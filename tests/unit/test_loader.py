"""ELF64 kernel parsing (Xen notes) and PVH placement (hvm_start_info, initrd, memory map)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from unit_support import KERNEL_PADDR, elf_note, make_elf

from hyperdisco.core.memory import GuestMemory
from hyperdisco.errors import ConfigError, ImageError
from hyperdisco.loader.elf import EHDR, PHDR, KernelImage, Segment, parse_kernel
from hyperdisco.loader.pvh import load_pvh
from hyperdisco.platform import layout
from hyperdisco.xen import abi

MiB = 1 << 20


# -- ELF ------------------------------------------------------------------------------------------------
def test_parse_synthetic_kernel() -> None:
    k = parse_kernel(make_elf(entry=0x1000040, code=b"\x90" * 100, memsz=0x5000))
    assert k.pvh_entry == 0x1000040
    assert k.segments == [Segment(KERNEL_PADDR, b"\x90" * 100, 0x5000)]
    assert k.end == KERNEL_PADDR + 0x5000
    assert set(k.notes) == {abi.XEN_ELFNOTE_PHYS32_ENTRY}


def test_entry_note_eight_bytes_is_truncated_to_32_bits() -> None:
    notes = elf_note(b"Xen", 18, struct.pack("<Q", 0xFFFFFFFF_01000000))
    assert parse_kernel(make_elf(notes=notes)).pvh_entry == 0x01000000


def test_multiple_notes_and_foreign_owners() -> None:
    notes = (elf_note(b"GNU", 18, b"\x11" * 4)  # same type, wrong owner: ignored
             + elf_note(b"Xen", 6, b"linux\0")
             + elf_note(b"Linux", 1, b"abc")
             + elf_note(b"Xen", 18, struct.pack("<I", 0x1000100)))
    k = parse_kernel(make_elf(notes=notes))
    assert k.pvh_entry == 0x1000100
    assert k.notes[6] == b"linux\0"
    assert set(k.notes) == {6, 18}
    assert k.xen is not None and k.xen.strings == {"GUEST_OS": "linux"}


@pytest.mark.parametrize("notes", [
    b"",
    elf_note(b"Xen", 17, b"\0" * 4),  # another Xen note only
    elf_note(b"Xe", 18, b"\0" * 4),  # wrong owner
    elf_note(b"GNU", 18, b"\0" * 4),
])
def test_missing_pvh_note(notes: bytes) -> None:
    with pytest.raises(ImageError, match="PVH entry note"):
        parse_kernel(make_elf(notes=notes))


def test_truncated_note_is_refused_not_overread() -> None:
    good = elf_note(b"Xen", 18, struct.pack("<I", KERNEL_PADDR))
    bad = struct.pack("<III", 4, 0xFFFFFFF0, 18) + b"Xen\0"
    with pytest.raises(ImageError, match="malformed ELF note"):
        parse_kernel(make_elf(notes=bad + good))
    with pytest.raises(ImageError, match="malformed ELF note"):
        parse_kernel(make_elf(notes=good[:-2]))
    with pytest.raises(ImageError, match="malformed ELF note"):
        parse_kernel(make_elf(notes=good + b"\0" * 8))  # a header cut short


@pytest.mark.parametrize("cut", [0, 3, 4, 16, EHDR.size - 1])
def test_truncated_elf_header(cut: int) -> None:
    with pytest.raises(ImageError):
        parse_kernel(make_elf()[:cut])


def test_truncated_program_headers() -> None:
    data = make_elf()
    with pytest.raises(ImageError, match="truncated program headers"):
        parse_kernel(data[:EHDR.size + PHDR.size + 10])


def _patch_ehdr(data: bytes, **fields: int) -> bytes:
    names = ["ident", "type", "machine", "version", "entry", "phoff", "shoff", "flags", "ehsize",
             "phentsize", "phnum", "shentsize", "shnum", "shstrndx"]
    vals = list(EHDR.unpack_from(data))
    for k, v in fields.items():
        vals[names.index(k)] = v
    return EHDR.pack(*vals) + data[EHDR.size:]


@pytest.mark.parametrize("fields", [
    {"phoff": 1 << 40}, {"phnum": 1000}, {"phentsize": PHDR.size - 1}, {"phentsize": 0},
])
def test_bad_program_header_table(fields: dict[str, int]) -> None:
    with pytest.raises(ImageError):
        parse_kernel(_patch_ehdr(make_elf(), **fields))


def test_no_program_headers() -> None:
    with pytest.raises(ImageError):
        parse_kernel(_patch_ehdr(make_elf(), phnum=0))


def test_not_elf_or_wrong_class() -> None:
    data = make_elf()
    with pytest.raises(ImageError, match="not an ELF"):
        parse_kernel(b"MZ" + data[2:])
    with pytest.raises(ImageError, match="unknown ELF class 3"):
        parse_kernel(data[:4] + b"\x03" + data[5:])
    with pytest.raises(ImageError, match="not a little-endian"):
        parse_kernel(data[:5] + b"\x02" + data[6:])  # big endian
    with pytest.raises(ImageError, match="x86-64"):
        parse_kernel(make_elf(machine=183))  # aarch64
    with pytest.raises(ImageError, match="machine 40"):
        parse_kernel(make_elf(machine=40, cls=32))  # ARM


def _patch_load_phdr(data: bytes, **fields: int) -> bytes:
    names = ["type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align"]
    at = EHDR.size + PHDR.size
    vals = list(PHDR.unpack_from(data, at))
    for k, v in fields.items():
        vals[names.index(k)] = v
    return data[:at] + PHDR.pack(*vals) + data[at + PHDR.size:]


@pytest.mark.parametrize("fields", [
    {"offset": 1 << 32}, {"filesz": 1 << 20}, {"filesz": 0x3000, "memsz": 0x10},
])
def test_segment_outside_file(fields: dict[str, int]) -> None:
    with pytest.raises(ImageError, match="outside the file"):
        parse_kernel(_patch_load_phdr(make_elf(), **fields))


def test_no_loadable_segments() -> None:
    with pytest.raises(ImageError, match="no loadable"):
        parse_kernel(_patch_load_phdr(make_elf(), memsz=0, filesz=0))
    with pytest.raises(ImageError, match="no loadable"):
        parse_kernel(_patch_load_phdr(make_elf(), type=6))  # PT_PHDR


# -- PVH placement --------------------------------------------------------------------------------------
@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(64 * MiB)
    yield m
    m.close()


def _start_info(mem: GuestMemory, at: int) -> tuple[int, ...]:
    return mem.unpack(abi.HVM_START_INFO, at)


def test_pvh_start_info(mem: GuestMemory) -> None:
    code = bytes(range(256))
    k = parse_kernel(make_elf(code=code, memsz=0x3000))
    mem.fill(KERNEL_PADDR + 256, 0x3000, 0xCC)  # the bss must come out zeroed
    at = load_pvh(mem, k, None, "console=hvc0 quiet", 2)
    assert at == layout.START_INFO
    magic, version, flags, nr_mod, modlist, cmdline, rsdp, memmap, nr_mem, _ = _start_info(mem, at)
    assert (magic, version, flags, nr_mod, modlist) == (0x336EC578, 1, 0, 0, 0)
    assert mem.read(cmdline, 19) == b"console=hvc0 quiet\0"
    assert mem.read(rsdp, 8) == b"RSD PTR "
    assert rsdp == layout.ACPI_BASE
    entries = [abi.HVM_MEMMAP_ENTRY.unpack(mem.read(memmap + 24 * i, 24)) for i in range(nr_mem)]
    assert entries == [(a, s, t, 0) for a, s, t in layout.e820(64 * MiB)]
    assert mem.read(KERNEL_PADDR, 256) == code
    assert mem.read(KERNEL_PADDR + 256, 0x3000 - 256) == bytes(0x3000 - 256)
    assert mem.u8(KERNEL_PADDR + 0x3000) == 0xCC  # nothing past memsz


def test_pvh_initrd_module(mem: GuestMemory) -> None:
    k = parse_kernel(make_elf())
    initrd = b"070701" + b"\x5a" * 12345
    at = load_pvh(mem, k, initrd, "", 1)
    _, _, _, nr_mod, modlist, cmdline, *_ = _start_info(mem, at)
    assert nr_mod == 1 and modlist != 0
    paddr, size, mod_cmdline, reserved = mem.unpack(abi.HVM_MODLIST_ENTRY, modlist)
    assert size == len(initrd) and mod_cmdline == 0 and reserved == 0
    assert paddr % 4096 == 0
    assert paddr >= k.end and paddr + size <= 64 * MiB - MiB
    assert mem.read(paddr, size) == initrd
    assert mem.read(cmdline, 1) == b"\0"


def test_pvh_initrd_that_does_not_fit(mem: GuestMemory) -> None:
    k = parse_kernel(make_elf())
    with pytest.raises(ConfigError, match="does not fit"):
        load_pvh(mem, k, b"\0" * (50 * MiB), "", 1)
    with pytest.raises(ConfigError, match="does not fit"):
        load_pvh(mem, k, b"\0" * (100 * MiB), "", 1)
    # just fits: 64 MiB - 1 MiB top, kernel image + 1 MiB below
    room = (64 * MiB - MiB) - ((k.end + 0xFFF & ~0xFFF) + MiB)
    load_pvh(mem, k, b"\1" * room, "", 1)
    with pytest.raises(ConfigError, match="does not fit"):
        load_pvh(mem, k, b"\1" * (room + 4096 + 0x1000000), "", 1)


def test_pvh_initrd_goes_below_a_kernel_that_fills_ram(mem: GuestMemory) -> None:
    k = parse_kernel(make_elf(memsz=63 * MiB - 0x1000000))  # kernel from 16 MiB up to 63 MiB
    load_pvh(mem, k, b"\2" * (4 * MiB), "", 1)
    info = mem.unpack(abi.HVM_START_INFO, layout.START_INFO)
    paddr, size = mem.unpack(abi.HVM_MODLIST_ENTRY, info[4])[:2]
    assert size == 4 * MiB and 0x100000 <= paddr and paddr + size <= 0x1000000


def test_pvh_kernel_that_does_not_fit(mem: GuestMemory) -> None:
    with pytest.raises(ConfigError):
        load_pvh(mem, parse_kernel(make_elf(paddr=0x80000)), None, "", 1)  # below 1 MiB
    with pytest.raises(ConfigError):
        load_pvh(mem, parse_kernel(make_elf(paddr=63 * MiB, memsz=2 * MiB)), None, "", 1)
    with pytest.raises(ConfigError):
        k = KernelImage([Segment(1 << 40, b"", 0x1000)], KERNEL_PADDR, {})
        load_pvh(mem, k, None, "", 1)


def test_pvh_cmdline_limit(mem: GuestMemory) -> None:
    k = parse_kernel(make_elf())
    load_pvh(mem, k, None, "x" * 4095, 1)
    assert mem.read(layout.CMDLINE + 4095, 1) == b"\0"
    with pytest.raises(ConfigError, match="command line"):
        load_pvh(mem, k, None, "x" * 4096, 1)


def test_pvh_structures_do_not_overlap() -> None:
    modlist = layout.START_INFO + abi.HVM_START_INFO.size
    memmap = modlist + abi.HVM_MODLIST_ENTRY.size
    assert memmap + len(layout.e820(MiB * 64)) * abi.HVM_MEMMAP_ENTRY.size <= layout.CMDLINE
    assert layout.SCRATCH + 0x1000 <= layout.START_INFO
    assert layout.CMDLINE + 0x1000 <= layout.ACPI_BASE
