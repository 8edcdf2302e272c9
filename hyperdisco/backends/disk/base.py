"""What every disk image format shares: the DiskImage protocol, argument checks, locking and file access."""

from __future__ import annotations

import errno
import fcntl
import os
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
