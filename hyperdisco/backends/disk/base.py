"""What every disk image format shares: the DiskImage protocol, argument checks, locking and file access."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Protocol, runtime_checkable

from hyperdisco.errors import ImageError

SECTOR = 512


@runtime_checkable
class DiskImage(Protocol):
    """A virtual disk as the block backend sees it. Offsets and lengths are bytes, multiples of 512.

    Misuse by the caller (unaligned or out-of-range requests) raises ValueError; writing to a read-only
    image raises OSError(EROFS); I/O failures of the host file surface as OSError.
    """

    size: int  # virtual size in bytes
    readonly: bool

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def close(self) -> None: ...


def check_range(size: int, offset: int, length: int) -> None:
    """Raise ValueError unless [offset, offset+length) is sector-aligned and inside a disk of ``size``."""
    if offset < 0 or length < 0 or offset % SECTOR or length % SECTOR:
        raise ValueError(f"disk request {offset}+{length} is not aligned to {SECTOR} bytes")
    if offset + length > size:
        raise ValueError(f"disk request {offset}+{length} is beyond the end of the disk ({size} bytes)")


def check_writable(readonly: bool, name: str) -> None:
    if readonly:
        raise OSError(errno.EROFS, f"{name}: disk is read-only")


def open_locked(path: str, readonly: bool, create: bool = False) -> int:
    """Open ``path`` and lock it: exclusive for read-write, shared for read-only (flock, non-blocking).

    A base image shared by many read-only users therefore cannot be opened read-write meanwhile, and a
    read-write image has one user only. Errors are one-line ImageErrors naming the file.
    """
    flags = os.O_RDONLY if readonly else os.O_RDWR
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise ImageError(f"hyperdisco: {path}: disk image does not exist") from None
    except FileExistsError:
        raise ImageError(f"hyperdisco: {path}: disk image already exists") from None
    except OSError as exc:
        raise ImageError(f"hyperdisco: {path}: cannot open disk image ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ImageError(f"hyperdisco: {path}: disk image is in use by another domain") from None
    except OSError as exc:
        os.close(fd)
        raise ImageError(f"hyperdisco: {path}: cannot lock disk image ({exc.strerror or exc})") from None
    return fd


def file_size(fd: int) -> int:
    """Size of a regular file or block device."""
    return os.lseek(fd, 0, os.SEEK_END)


def pread_full(fd: int, length: int, offset: int) -> bytes:
    """pread that retries short reads and pads with zeros past the end of the file."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            parts.append(bytes(length - got))
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def pwrite_full(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def pwrite_runs(fd: int, pending: list[tuple[int, memoryview | bytes]]) -> None:
    """Write ``pending`` (host offset, bytes) pieces, one pwrite per run of contiguous pieces."""
    j = 0
    while j < len(pending):
        host, first = pending[j]
        chunks = [first]
        nxt = host + len(first)
        j += 1
        while j < len(pending) and pending[j][0] == nxt:
            chunks.append(pending[j][1])
            nxt += len(pending[j][1])
            j += 1
        pwrite_full(fd, chunks[0] if len(chunks) == 1 else b"".join(chunks), host)


def read_padded(lower: DiskImage, offset: int, length: int, limit: int) -> bytes:
    """``lower``'s contents below ``limit``, zeros from there on (a lower image may end mid-cluster)."""
    avail = max(0, min(length, limit - offset))
    data = lower.read(offset, avail) if avail else b""
    return data + bytes(length - avail) if avail < length else data


class LayeredImage:
    """What the cluster-mapped formats over a lower image (cow overlays, qcow2) share: argument checks
    and locking around their ``_read``/``_write``/``_flush``, and a close that flushes, closes the file
    and then the lower image.

    Subclasses set ``path``, ``size``, ``readonly``, ``_fd`` and ``_lock`` and say with ``_keeps_writes``
    whether flush() has anything to make durable, and with ``_lower`` which image to close with them.
    """

    path: str
    size: int
    readonly: bool
    _fd: int
    _lock: threading.Lock

    def _read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _write(self, offset: int, data: memoryview) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _keeps_writes(self) -> bool:
        return not self.readonly

    def _lower(self) -> DiskImage | None:
        return None

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        with self._lock:
            return self._read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        check_writable(self.readonly, self.path)
        check_range(self.size, offset, len(data))
        with self._lock:
            self._write(offset, memoryview(data))

    def flush(self) -> None:
        if not self._keeps_writes():
            return
        with self._lock:
            self._flush()

    def discard(self, offset: int, length: int) -> None:
        """A no-op: clusters stay allocated (and unallocated ones would have to stop reading from the
        lower image), so what the guest wrote there stays readable."""
        check_writable(self.readonly, self.path)
        check_range(self.size, offset, length)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._keeps_writes():
                with self._lock:
                    self._flush()
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)
            lower = self._lower()
            if lower is not None:
                lower.close()
