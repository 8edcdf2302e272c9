"""The "newc" (SVR4, magic 070701) cpio archive format the Linux kernel unpacks as its initramfs.

Each member is a 110-byte ASCII header (magic + 13 eight-digit hex fields), the NUL-terminated name
padded to a multiple of 4 bytes (counting the header), then the data padded to a multiple of 4.
The archive ends with a member named ``TRAILER!!!``.
"""

from __future__ import annotations

import bz2
import lzma
import stat
import struct
import zlib
from dataclasses import dataclass

from hyperdisco.errors import ImageError

NEWC_MAGIC = b"070701"
_CRC_MAGIC = b"070702"
_ODC_MAGIC = b"070707"
_TRAILER = "TRAILER!!!"
_HEADER_LEN = 110


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _clean(path: str) -> str:
    name = path.strip("/")
    if not name or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"bad cpio member path {path!r}")
    return name


class CpioWriter:
    """Build a newc cpio archive in memory. Members are written in call order; mtime and owners are 0."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()
        self._finished = False

    def _add(
        self, name: str, mode: int, data: bytes = b"", nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        if self._finished:
            raise ValueError("cpio archive already finished")
        if name != _TRAILER:
            name = _clean(name)
            if name in self._names:
                raise ValueError(f"duplicate cpio member {name!r}")
            self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._chunks += [
            header,
            encoded,
            b"\0" * _pad4(_HEADER_LEN + len(encoded)),
            data,
            b"\0" * _pad4(len(data)),
        ]

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._add(path, stat.S_IFDIR | (mode & 0o7777), nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, stat.S_IFREG | (mode & 0o7777), bytes(data))

    def symlink(self, path: str, target: str) -> None:
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(path, stat.S_IFCHR | (mode & 0o7777), rdev=(major, minor))

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self._names

    def finish(self) -> bytes:
        """Append the trailer, pad the archive to a multiple of 512 bytes and return it."""
        self._add(_TRAILER, 0)
        self._finished = True
        out = b"".join(self._chunks)
        return out + b"\0" * ((512 - len(out) % 512) % 512)


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes
    rdevmajor: int = 0
    rdevminor: int = 0


def cpio_entries(data: bytes) -> list[CpioEntry]:
    """Parse an uncompressed (or gzip-compressed) newc archive, up to its trailer. Raises ValueError."""
    if data[:2] == b"\x1f\x8b":
        data = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        while data[pos : pos + 4] == b"\0\0\0\0":  # the kernel skips zero padding between archives
            pos += 4
        header = data[pos : pos + _HEADER_LEN]
        if len(header) < _HEADER_LEN or header[:6] not in (NEWC_MAGIC, _CRC_MAGIC):
            raise ValueError(f"bad newc header at offset {pos}")
        try:
            f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ValueError(f"bad newc header at offset {pos}") from None
        mode, filesize, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name_at = pos + _HEADER_LEN
        name = data[name_at : name_at + namesize].rstrip(b"\0").decode(errors="replace")
        data_at = name_at + namesize + _pad4(_HEADER_LEN + namesize)
        if data_at + filesize > len(data):
            raise ValueError(f"truncated cpio member {name!r}")
        if name == _TRAILER:
            return entries
        entries.append(CpioEntry(name, mode, data[data_at : data_at + filesize], rmaj, rmin))
        pos = data_at + filesize + _pad4(filesize)


def cpio_members(data: bytes) -> list[str]:
    """Names of the members of a newc archive, in archive order."""
    return [e.name for e in cpio_entries(data)]


def _peek(data: bytes) -> bytes | None:
    """The first few decompressed bytes of a compressed initramfs, or None when we cannot look inside."""
    try:
        if data[:2] == b"\x1f\x8b":
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data[:65536], 16)
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[:65536], 16)
        if data[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(data[:262144], 16)
    except (zlib.error, lzma.LZMAError, OSError, EOFError):
        return b""
    return None


_COMPRESSED_MAGICS = (
    b"\x1f\x8b",  # gzip
    b"\xfd7zXZ\x00",  # xz
    b"BZh",  # bzip2
    struct.pack("<I", 0x184C2102),  # lz4 legacy (what the kernel build produces)
    struct.pack("<I", 0x184D2204),  # lz4 frame
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\x5d\x00\x00",  # lzma
    b"\x89LZO",  # lzop
)


def _is_cpio_start(head: bytes) -> bool:
    return head[:6] in (NEWC_MAGIC, _CRC_MAGIC, _ODC_MAGIC) or head[:2] in (b"\xc7\x71", b"\x71\xc7")


def check_cpio(data: bytes, name: str = "initrd") -> None:
    """Raise ImageError unless ``data`` looks like an initramfs: a cpio archive, possibly compressed.

    Compressed archives are accepted by magic; gzip, xz and bzip2 ones are also peeked into.
    """
    start = 0
    while start < len(data) and data[start] == 0:  # the kernel tolerates leading zero padding
        start += 1
    head = data[start : start + 16]
    if _is_cpio_start(head):
        return
    if any(head.startswith(m) for m in _COMPRESSED_MAGICS):
        inner = _peek(data[start:])
        if inner is None or _is_cpio_start(inner):
            return
    raise ImageError(f"hyperdisco: {name}: not a cpio initramfs")
