"""Turn a Linux kernel file (bzImage or ELF vmlinux) into the ELF image a PVH guest is loaded from.

A PVH guest starts at the 32-bit entry point advertised by the kernel's Xen ELF note
``XEN_ELFNOTE_PHYS32_ENTRY`` (type 18, owner "Xen"; see xen/include/public/elfnote.h).  A distribution
ships a bzImage: real-mode setup sectors followed by the protected-mode part, which embeds the
compressed vmlinux ELF as its "payload" (Linux boot protocol >= 2.08, Documentation/x86/boot.rst).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from pathlib import Path

from hyperdisco.errors import ImageError
from hyperdisco.images.hostfile import MAX_KERNEL_BYTES, read_regular_file
from hyperdisco.loader.elf import check_header, xen_notes
from hyperdisco.xen.elfnote import XEN_ELFNOTE_PHYS32_ENTRY

_ELF_MAGIC = b"\x7fELF"

_LZ4_LEGACY_MAGIC = 0x184C2102
_LZ4_LEGACY_BLOCK = 8 << 20  # every block of the legacy format decompresses to at most 8 MiB


def _fail(name: str, why: str) -> ImageError:
    return ImageError(f"hyperdisco: {name}: {why}")


# --------------------------------------------------------------------------------------------------- ELF


def pvh_entry(elf: bytes) -> int | None:
    """The 32-bit physical PVH entry point from the Xen ELF note, or None when the kernel has none (or is
    not a well-formed x86 ELF file)."""
    try:
        notes = xen_notes(elf)
    except ImageError:
        return None
    found = [n.desc for n in notes if n.type == XEN_ELFNOTE_PHYS32_ENTRY and len(n.desc) >= 4]
    return struct.unpack_from("<I", found[-1])[0] if found else None


def _check_pvh_elf(elf: bytes, name: str) -> bytes:
    """A first look (header and notes) before the image is cached; loader/elf.py checks the rest."""
    check_header(elf, name)
    if pvh_entry(elf) is None:
        xen_notes(elf, name)  # a malformed note area is its own one-line error
        raise _fail(
            name, "kernel has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y"
        )
    return elf


# -------------------------------------------------------------------------------------------- payloads


def _lz4_legacy(payload: bytes, name: str) -> bytes:
    try:
        import lz4.block
    except ImportError:
        raise _fail(
            name, "kernel payload is LZ4-compressed but the 'lz4' Python package is missing"
        ) from None
    total = len(payload)
    pos = 4
    out: list[bytes] = []
    produced = 0
    while pos + 4 <= total:
        (size,) = struct.unpack_from("<I", payload, pos)
        pos += 4
        if size == _LZ4_LEGACY_MAGIC:  # concatenated streams repeat the magic
            continue
        if pos == total or size == 0:
            # The kernel build appends the uncompressed size (4 bytes) after the last block.
            break
        if pos + size > total:
            raise _fail(name, "truncated LZ4 kernel payload")
        try:
            out.append(lz4.block.decompress(payload[pos : pos + size], uncompressed_size=_LZ4_LEGACY_BLOCK))
        except lz4.block.LZ4BlockError as exc:
            raise _fail(name, f"corrupt LZ4 kernel payload at offset {pos}: {exc}") from None
        produced += len(out[-1])
        if produced > MAX_KERNEL_BYTES:
            raise _fail(name, f"kernel payload decompresses to more than {MAX_KERNEL_BYTES >> 20} MiB")
        pos += size
    if not out:
        raise _fail(name, "empty LZ4 kernel payload")
    return b"".join(out)


def _bounded(out: bytes, more: bool, name: str) -> bytes:
    """``out``, unless the payload decompresses to more than MAX_KERNEL_BYTES (a decompression bomb)."""
    if more or len(out) > MAX_KERNEL_BYTES:
        raise _fail(name, f"kernel payload decompresses to more than {MAX_KERNEL_BYTES >> 20} MiB")
    return out


def _gzip(payload: bytes, name: str) -> bytes:
    try:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out = d.decompress(payload, MAX_KERNEL_BYTES + 1)
        return _bounded(out, bool(d.unconsumed_tail) and not d.eof, name)
    except zlib.error as exc:
        raise _fail(name, f"corrupt gzip kernel payload: {exc}") from None


def _lzma(payload: bytes, name: str, fmt: int) -> bytes:
    try:
        d = lzma.LZMADecompressor(format=fmt)
        out = d.decompress(payload, MAX_KERNEL_BYTES + 1)
        return _bounded(out, not d.eof and not d.needs_input, name)
    except lzma.LZMAError as exc:
        raise _fail(name, f"corrupt xz/lzma kernel payload: {exc}") from None


def _bzip2(payload: bytes, name: str) -> bytes:
    try:
        d = bz2.BZ2Decompressor()
        out = d.decompress(payload, MAX_KERNEL_BYTES + 1)
        return _bounded(out, not d.eof and not d.needs_input, name)
    except OSError as exc:
        raise _fail(name, f"corrupt bzip2 kernel payload: {exc}") from None


def decompress_payload(payload: bytes, name: str = "kernel") -> bytes:
    """Decompress a bzImage payload according to its magic bytes."""
    if len(payload) >= 4 and struct.unpack_from("<I", payload)[0] == _LZ4_LEGACY_MAGIC:
        return _lz4_legacy(payload, name)
    if payload[:2] == b"\x1f\x8b":
        return _gzip(payload, name)
    if payload[:6] == b"\xfd7zXZ\x00":
        return _lzma(payload, name, lzma.FORMAT_XZ)
    if payload[:3] == b"\x5d\x00\x00":
        return _lzma(payload, name, lzma.FORMAT_ALONE)
    if payload[:3] == b"BZh":
        return _bzip2(payload, name)
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        raise _fail(
            name, "zstd-compressed kernels are not supported; pass the uncompressed vmlinux ELF instead"
        )
    if payload[:4] == b"\x89LZO":
        raise _fail(
            name, "LZO-compressed kernels are not supported; pass the uncompressed vmlinux ELF instead"
        )
    if payload[:4] == _ELF_MAGIC:
        return payload
    raise _fail(name, f"unknown bzImage payload compression (magic {payload[:4].hex()})")


# --------------------------------------------------------------------------------------------- bzImage


def _is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x250 and data[0x202:0x206] == b"HdrS"


def _bzimage_payload(data: bytes, name: str) -> bytes:
    (version,) = struct.unpack_from("<H", data, 0x206)
    if version < 0x208:
        raise _fail(
            name,
            f"bzImage boot protocol {version >> 8}.{version & 0xFF:02d} has no payload field (need 2.08+)",
        )
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    if payload_length == 0 or start + payload_length > len(data):
        raise _fail(name, "truncated bzImage (payload extends past end of file)")
    return data[start : start + payload_length]


def kernel_elf_from_bytes(data: bytes, name: str = "kernel") -> bytes:
    """Return the PVH-capable x86 (ELF32 or ELF64) kernel contained in ``data`` (an ELF vmlinux or a bzImage).

    ``name`` only appears in error messages (usually the file's path).
    """
    if data[:4] == _ELF_MAGIC:
        return _check_pvh_elf(data, name)
    if _is_bzimage(data):
        elf = decompress_payload(_bzimage_payload(data, name), name)
        if elf[:4] != _ELF_MAGIC:
            raise _fail(name, "bzImage payload does not decompress to an ELF kernel")
        return _check_pvh_elf(elf, name)
    raise _fail(name, "not a Linux kernel (neither ELF nor bzImage)")


def load_kernel_elf(path: Path) -> bytes:
    """Read a kernel file (bzImage or ELF) and return its PVH-capable ELF image.

    Only a regular file of at most 256 MiB is read (never blocking: a FIFO is refused, not waited on), and
    a compressed payload may decompress to at most as much.
    """
    data = read_regular_file(path, MAX_KERNEL_BYTES, "kernel")
    return kernel_elf_from_bytes(data, str(path))
