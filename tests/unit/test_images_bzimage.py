"""Kernel extraction: ELF pass-through with PVH note check, and bzImage payload decompression."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import lz4.block
import pytest

from hyperdisco.errors import ImageError
from hyperdisco.images.bzimage import kernel_elf_from_bytes, load_kernel_elf, pvh_entry

PVH_ENTRY = 0x1000850


def _note(owner: bytes, ntype: int, desc: bytes) -> bytes:
    name = owner + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def fake_elf(with_pvh: bool = True, machine: int = 62, filler: int = 100_000) -> bytes:
    """A minimal ELF64 header, one PT_NOTE program header, notes, then some compressible filler."""
    notes = _note(b"GNU", 3, b"\x01" * 20) + _note(b"Xen", 6, b"linux\0\0\0")
    if with_pvh:
        notes += _note(b"Xen", 18, struct.pack("<I", PVH_ENTRY))
    phoff, notes_off = 64, 64 + 56
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0xFFFFFFFF81000000, phoff, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, notes_off, 0, 0, len(notes), len(notes), 4)
    body = bytes(range(256)) * (filler // 256)
    return ehdr + phdr + notes + body


def legacy_lz4(data: bytes, block: int = 8 << 20, trailer: bool = True) -> bytes:
    """What the kernel build's `lz4 -l` + size_append produces."""
    out = [struct.pack("<I", 0x184C2102)]
    for i in range(0, len(data), block):
        chunk = lz4.block.compress(data[i : i + block], store_size=False)
        out += [struct.pack("<I", len(chunk)), chunk]
    if trailer:
        out.append(struct.pack("<I", len(data)))
    return b"".join(out)


def fake_bzimage(payload: bytes, setup_sects: int = 4) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = 0 if setup_sects == 4 else setup_sects  # 0 means 4
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    pm_prefix = b"\x90" * 300  # protected-mode code before the payload
    struct.pack_into("<II", setup, 0x248, len(pm_prefix), len(payload))
    return bytes(setup) + pm_prefix + payload + b"\xcc" * 64


def test_elf_passes_through() -> None:
    elf = fake_elf()
    assert kernel_elf_from_bytes(elf) == elf
    assert pvh_entry(elf) == PVH_ENTRY


@pytest.mark.parametrize("setup_sects", [4, 27])
def test_bzimage_lz4_legacy(setup_sects: int) -> None:
    elf = fake_elf()
    assert kernel_elf_from_bytes(fake_bzimage(legacy_lz4(elf), setup_sects)) == elf


def test_bzimage_lz4_multiple_blocks_and_repeated_magic() -> None:
    elf = fake_elf(filler=300_000)
    first, second = legacy_lz4(elf[:100_000], trailer=False), legacy_lz4(elf[100_000:], block=65536)
    assert kernel_elf_from_bytes(fake_bzimage(first + second)) == elf


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress], ids=["gzip", "xz"])
def test_bzimage_other_compressions(compress: object) -> None:
    elf = fake_elf()
    payload = compress(elf) + struct.pack("<I", len(elf))  # type: ignore[operator]
    assert kernel_elf_from_bytes(fake_bzimage(payload)) == elf


def test_load_kernel_elf_from_file(tmp_path: Path) -> None:
    elf = fake_elf()
    path = tmp_path / "vmlinuz"
    path.write_bytes(fake_bzimage(legacy_lz4(elf)))
    assert load_kernel_elf(path) == elf


def _one_line_error(data: bytes, name: str = "/x/y") -> str:
    with pytest.raises(ImageError) as exc:
        kernel_elf_from_bytes(data, name)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"hyperdisco: {name}: ")
    return msg


def test_rejects_non_kernel() -> None:
    msg = _one_line_error(b"#!/bin/sh\necho not a kernel\n" * 100)
    assert msg == "hyperdisco: /x/y: not a Linux kernel (neither ELF nor bzImage)"


def test_rejects_elf_without_pvh_note() -> None:
    assert "PVH" in _one_line_error(fake_elf(with_pvh=False))
    assert "PVH" in _one_line_error(fake_bzimage(legacy_lz4(fake_elf(with_pvh=False))))


def test_rejects_wrong_machine() -> None:
    assert "x86-64" in _one_line_error(fake_elf(machine=183))


def test_rejects_zstd_and_truncated_payloads() -> None:
    assert "zstd" in _one_line_error(fake_bzimage(b"\x28\xb5\x2f\xfd" + b"\0" * 64))
    payload = legacy_lz4(fake_elf(), trailer=False)
    assert "truncated" in _one_line_error(fake_bzimage(payload[:-1000]))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(ImageError) as exc:
        load_kernel_elf(path)
    assert str(exc.value) == f"hyperdisco: {path}: no such kernel file"


def test_directory_is_not_a_kernel(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as exc:
        load_kernel_elf(tmp_path)
    assert "\n" not in str(exc.value)
