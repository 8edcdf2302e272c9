"""hyperdisco's copy-on-write overlay: Disco's persistent and non-persistent disks over a read-only base.

On-disk format (all integers little-endian), version 1::

    header, the first 4096 bytes of the file
      0   8  magic            b"HDCOW\\r\\n\\x1a"
      8   4  version          1
     12   4  cluster_bits     9..24 (cluster size = 1 << cluster_bits, 64 KiB by default)
     16   8  size             virtual size in bytes (the base's size when the overlay was created)
     24   8  table_offset     4096
     32   8  table_entries    ceil(size / cluster size)
     40   8  data_offset      first byte of the data area: table end rounded up to a cluster
     48   2  base_format_len  0: no format recorded, the base is raw
     50   2  base_path_len
     52   4  header_crc       zlib.crc32 of the 4096 header bytes with this field zeroed
     56   .  base format (ascii: raw, qcow2 or cow), then the base's absolute path (utf-8); zero padding
    table, at table_offset: table_entries x u64, one per guest cluster
      0            the cluster is not in the overlay: it reads from the base
      otherwise    byte offset in this file of the cluster's data (a multiple of the cluster size,
                   at least data_offset)
    data clusters, appended at the end of the file as guest clusters are first written

The header is written once (to a temporary name, fsynced, renamed). A first write to a guest cluster
appends a whole cluster (the rest copied from the base) and records its offset in the in-memory table;
flush() then makes it durable in order: fsync (data), write the table sectors that changed, fsync.
A crash therefore leaves every table entry either 0 or pointing at a cluster that was on stable storage
before the entry was written: the worst case is unreferenced clusters at the end of the file, which
are simply never used (allocation starts at the end of the file). Table entries are naturally aligned
8-byte values inside 512-byte sectors, so a torn sector mixes old and new entries, each of them valid.
Rewrites of clusters already in the overlay go in place, durable at the next flush like any disk.

The base's format is the one recorded in the header (or given explicitly, and then checked against it),
never guessed from the base's contents: a base a guest has written (a raw disk holding a qcow2 header)
is read as what the administrator said it is. A base path read from the header is followed only inside
the directories allowed for backing files (base.py); a base named explicitly (``base=``) must be the
file the header names.

A non-persistent overlay is an unlinked temporary file (no header; the table lives in memory only):
nothing of it survives close() or a crash.
"""

from __future__ import annotations

import array
import os
import secrets
import struct
import sys
import threading
import zlib
from collections.abc import Callable

from hyperdisco.backends.disk.base import (
    DiskImage,
    FileOpener,
    HostOpener,
    ImageMissing,
    LayeredImage,
    file_size,
    pread_full,
    pwrite_full,
    pwrite_runs,
    read_padded,
    round_up,
)
from hyperdisco.errors import ImageError

COW_MAGIC = b"HDCOW\r\n\x1a"
COW_VERSION = 1
HEADER_SIZE = 4096
DEFAULT_CLUSTER_BITS = 16
_HEADER = struct.Struct("<8sIIQQQQHHI")  # through header_crc; base format and path follow
_MAX_ENTRIES = 1 << 28  # 2 GiB of table: refuse anything larger as corrupt

BASE_FORMATS = ("raw", "qcow2", "cow")

Opener = Callable[[str, str], DiskImage]


def _same_file(a: str, b: str) -> bool:
    """Whether two spellings of a path name the same file: equal once absolute and normalised (no file
    system access, so the same answer in a process that only has handed descriptors), else equal after
    resolving symlinks."""
    if os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b)):
        return True
    return os.path.realpath(a) == os.path.realpath(b)


def _table_bytes(table: array.array[int], first: int, count: int) -> bytes:
    chunk = table[first:first + count]
    if sys.byteorder == "big":
        chunk.byteswap()
    return chunk.tobytes()


class CowImage(LayeredImage):
    """A copy-on-write overlay over ``base`` (any DiskImage opened read-only, closed with the overlay)."""

    def __init__(self, fd: int, name: str, base: DiskImage, size: int, cluster_bits: int,
                 table: array.array[int], table_offset: int, data_offset: int, readonly: bool,
                 durable: bool) -> None:
        self.path = name
        self.base = base
        self.size = size
        self.readonly = readonly
        self._fd = fd
        self._cbits = cluster_bits
        self._cs = 1 << cluster_bits
        self._table = table
        self._table_offset = table_offset
        self._durable = durable
        self._dirty: set[int] = set()  # table sectors (index of 64 entries) to write at flush
        self._end = max(data_offset, round_up(file_size(fd), self._cs))
        self._lock = threading.Lock()

    # ---- creation and opening

    @classmethod
    def temporary(cls, base: DiskImage, directory: str | None,
                  cluster_bits: int = DEFAULT_CLUSTER_BITS, opener: FileOpener | None = None) -> CowImage:
        """A non-persistent overlay: an anonymous file in ``directory`` (else the temp dir)."""
        try:
            fd = (opener or HostOpener()).temporary(directory)
        except BaseException:
            base.close()
            raise
        cs = 1 << cluster_bits
        entries = (base.size + cs - 1) // cs
        table = array.array("Q", bytes(8 * entries))
        return cls(fd, f"<temporary overlay of {getattr(base, 'path', 'base')}>", base, base.size,
                   cluster_bits, table, 0, cs, readonly=False, durable=False)

    @classmethod
    def create(cls, path: str, base_path: str, base_format: str,
               base_size: int, cluster_bits: int = DEFAULT_CLUSTER_BITS,
               opener: FileOpener | None = None) -> None:
        """Write a new empty overlay file (atomically: temporary name, fsync, rename)."""
        cs = 1 << cluster_bits
        entries = (base_size + cs - 1) // cs
        data_offset = round_up(HEADER_SIZE + 8 * entries, cs)
        fmt = base_format.encode()
        bpath = os.path.abspath(base_path).encode()
        if _HEADER.size + len(fmt) + len(bpath) > HEADER_SIZE:
            raise ImageError(f"hyperdisco: {path}: base path is too long for a cow header")
        header = bytearray(HEADER_SIZE)
        _HEADER.pack_into(header, 0, COW_MAGIC, COW_VERSION, cluster_bits, base_size, HEADER_SIZE,
                          entries, data_offset, len(fmt), len(bpath), 0)
        header[_HEADER.size:_HEADER.size + len(fmt) + len(bpath)] = fmt + bpath
        struct.pack_into("<I", header, 52, zlib.crc32(header))
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = (opener or HostOpener()).open(tmp, readonly=False, create=True)
        except ImageError as exc:
            why = str(exc).rsplit(": ", 1)[-1]
            raise ImageError(f"hyperdisco: {path}: cannot create cow overlay ({why})") from None
        try:
            try:
                pwrite_full(fd, header, 0)
                os.ftruncate(fd, data_offset)  # the table: sparse zeros
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)  # fails if path appeared meanwhile: never clobber an existing image
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except FileExistsError:
            raise ImageError(f"hyperdisco: {path}: disk image already exists") from None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ImageError(f"hyperdisco: {path}: cannot create cow overlay ({why})") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    @classmethod
    def open(cls, path: str, readonly: bool, base: str | None, open_base: Opener,
             opener: FileOpener | None = None, base_format: str | None = None) -> CowImage:
        """Open the overlay at ``path``; when it does not exist and ``base`` is given, create it first.

        The base's format is ``base_format`` when given (checked against the header of an existing
        overlay), else the one the header records (raw when it records none); a new overlay records
        ``base_format`` or raw. It is never guessed from the base's contents.
        """
        files = opener or HostOpener()
        if base_format is not None and base_format not in BASE_FORMATS:
            raise ImageError(f"hyperdisco: {path}: unknown base format {base_format!r} (expected one of "
                             f"{', '.join(BASE_FORMATS)})")
        try:
            fd = files.open(path, readonly)
        except ImageMissing as exc:
            if exc.path != path:
                raise
            if base is None:
                raise ImageError(
                    f"hyperdisco: {path}: disk image does not exist (a new cow disk needs a base)"
                ) from None
            if readonly:
                raise
            fmt = base_format or "raw"
            base_img = open_base(base, fmt)
            size = base_img.size
            base_img.close()
            cls.create(path, base, fmt, size, opener=files)
            fd = files.open(path, readonly)
        try:
            return cls._open_fd(fd, path, readonly, base, base_format, open_base, files)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _open_fd(cls, fd: int, path: str, readonly: bool, base: str | None, base_format: str | None,
                 open_base: Opener, files: FileOpener) -> CowImage:
        header = bytearray(pread_full(fd, HEADER_SIZE, 0))
        fsize = file_size(fd)

        def corrupt(why: str) -> ImageError:
            return ImageError(f"hyperdisco: {path}: corrupt cow overlay ({why})")

        magic, version, cbits, size, toff, entries, doff, flen, plen, crc = _HEADER.unpack_from(header)
        if magic != COW_MAGIC or fsize < HEADER_SIZE:
            raise ImageError(f"hyperdisco: {path}: not a hyperdisco cow overlay (bad magic)")
        if version != COW_VERSION:
            raise ImageError(f"hyperdisco: {path}: unsupported cow overlay version {version}")
        struct.pack_into("<I", header, 52, 0)
        if zlib.crc32(header) != crc:
            raise corrupt("header checksum mismatch")
        if not 9 <= cbits <= 24:
            raise corrupt(f"cluster_bits {cbits} outside 9..24")
        cs = 1 << cbits
        if entries != (size + cs - 1) // cs or entries > _MAX_ENTRIES or size % 512:
            raise corrupt(f"table of {entries} entries does not match size {size}")
        if toff < HEADER_SIZE or doff % cs or toff + 8 * entries > doff or doff > fsize:
            raise corrupt("table or data offsets beyond the file")
        if _HEADER.size + flen + plen > HEADER_SIZE:
            raise corrupt("base name beyond the header")
        fmt = bytes(header[_HEADER.size:_HEADER.size + flen]).decode(errors="replace") if flen else "raw"
        bpath = os.fsdecode(bytes(header[_HEADER.size + flen:_HEADER.size + flen + plen]))
        if not os.path.isabs(bpath):
            raise corrupt(f"base path {bpath!r} is not absolute")
        table = array.array("Q", pread_full(fd, 8 * entries, toff))
        if sys.byteorder == "big":
            table.byteswap()
        end = round_up(fsize, cs)
        seen = bytearray((end - doff) // cs // 8 + 1)  # data clusters already mapped
        for i, off in enumerate(table):
            if not off:
                continue
            if off % cs or off < doff or off >= end:
                raise corrupt(f"cluster {i} maps to bad offset {off}")
            c = (off - doff) // cs
            if seen[c >> 3] >> (c & 7) & 1:
                raise corrupt(f"cluster {i} maps to offset {off}, which another cluster maps to as well")
            seen[c >> 3] |= 1 << (c & 7)
        if fmt not in BASE_FORMATS:
            raise corrupt(f"unknown base format {fmt!r}")
        if base_format is not None and base_format != fmt:
            raise ImageError(f"hyperdisco: {path}: overlay records base format {fmt}, not {base_format}")
        if base is not None:  # named by the administrator: it must be the base the overlay was made for
            if not _same_file(base, bpath):
                raise ImageError(f"hyperdisco: {path}: overlay belongs to base {bpath}, not {base}")
            bpath = base
        else:  # named by the overlay's header: only inside the directories allowed for backing files
            files.check_backing(bpath, path)
        try:
            base_img = open_base(bpath, fmt)
        except ImageMissing as exc:
            if exc.path != bpath:
                raise
            raise ImageError(f"hyperdisco: {path}: base image {bpath} does not exist") from None
        if base_img.size != size:
            base_img.close()
            raise ImageError(f"hyperdisco: {path}: base image {bpath} changed size "
                             f"({base_img.size} bytes, overlay made for {size})")
        return cls(fd, path, base_img, size, cbits, table, toff, doff, readonly, durable=True)

    # ---- I/O

    def _read_base(self, offset: int, length: int) -> bytes:
        """Base contents, zeros past its end (the base size may not be a multiple of the cluster)."""
        return read_padded(self.base, offset, length, self.base.size)

    def _read(self, offset: int, length: int) -> bytes:
        cs, table = self._cs, self._table
        parts: list[bytes] = []
        # runs: (host offset or -1 for the base, guest offset, length), merged while contiguous
        run_host, run_guest, run_len = -2, offset, 0
        pos, end = offset, offset + length
        while pos < end:
            ci, within = divmod(pos, cs)
            n = min(cs - within, end - pos)
            host = table[ci]
            host = host + within if host else -1
            if run_len and ((host == -1 and run_host == -1) or (host >= 0 and host == run_host + run_len)):
                run_len += n
            else:
                if run_len:
                    parts.append(self._read_run(run_host, run_guest, run_len))
                run_host, run_guest, run_len = host, pos, n
            pos += n
        if run_len:
            parts.append(self._read_run(run_host, run_guest, run_len))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_run(self, host: int, guest: int, length: int) -> bytes:
        if host < 0:
            return self._read_base(guest, length)
        return pread_full(self._fd, length, host)

    def _write(self, offset: int, data: memoryview) -> None:
        cs, table = self._cs, self._table
        pos, end, i = offset, offset + len(data), 0
        pending: list[tuple[int, memoryview | bytes]] = []  # (host offset, bytes), merged below
        while pos < end:
            ci, within = divmod(pos, cs)
            n = min(cs - within, end - pos)
            piece = data[i:i + n]
            host = table[ci]
            if host:
                pending.append((host + within, piece))
            else:
                if n == cs:
                    content: memoryview | bytes = piece
                else:
                    buf = bytearray(self._read_base(ci * cs, cs))
                    buf[within:within + n] = piece
                    content = bytes(buf)
                host = self._end
                self._end += cs
                pending.append((host, content))
                table[ci] = host  # visible to reads now, durable after the data at flush
                self._dirty.add(ci // 64)
            pos += n
            i += n
        pwrite_runs(self._fd, pending)

    def _keeps_writes(self) -> bool:
        # a non-persistent overlay is discarded at close: nothing to make durable
        return not self.readonly and self._durable

    def _lower(self) -> DiskImage:
        return self.base

    def _flush(self) -> None:
        os.fdatasync(self._fd)  # data clusters first...
        if not self._dirty:
            return
        total = len(self._table)
        for sector in sorted(self._dirty):  # ...then the table entries that point at them
            first = sector * 64
            count = min(64, total - first)
            pwrite_full(self._fd, _table_bytes(self._table, first, count), self._table_offset + 8 * first)
        self._dirty.clear()
        os.fdatasync(self._fd)
