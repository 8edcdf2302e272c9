"""A minimal raw image, used only while hyperdisco.backends.disk is not importable."""

from __future__ import annotations

import errno
import fcntl
import os

from ...errors import ImageError

SECTOR = 512


class RawFile:
    def __init__(self, path: str, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        try:
            self._fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageError(f"hyperdisco: {path}: disk image does not exist") from None
        except OSError as exc:
            raise ImageError(f"hyperdisco: {path}: cannot open disk image ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise ImageError(f"hyperdisco: {path}: disk image is in use by another domain") from None
        self.size = os.lseek(self._fd, 0, os.SEEK_END) // SECTOR * SECTOR

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{offset}+{length} beyond the disk")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        data = os.pread(self._fd, length, offset)
        return data + bytes(length - len(data))

    def write(self, offset: int, data: bytes) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, "read-only disk")
        self._check(offset, len(data))
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def flush(self) -> None:
        if not self.readonly:
            os.fdatasync(self._fd)

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_raw(target: str, format: str = "raw", readonly: bool = False) -> RawFile:
    if format != "raw":
        raise ImageError(f"hyperdisco: {target}: format {format!r} is not available yet")
    return RawFile(target, readonly)
