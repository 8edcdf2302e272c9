"""raw images: the file (or block device) is the disk, byte for byte."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from hyperdisco.backends.disk.base import (
    SECTOR,
    FileOpener,
    HostOpener,
    check_range,
    check_writable,
    file_size,
    pread_full,
    pwrite_full,
    round_up,
)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _libc_fallocate() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_fallocate = _libc_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range keeping the file size; False when the host cannot (then nothing changed)."""
    if _fallocate is None or length <= 0:
        return False
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
        return False
    raise OSError(err, os.strerror(err))


class RawImage:
    """pread/pwrite on the file. The virtual size is the file size rounded up to a sector (a partial last
    sector reads as zeros past the end of the file)."""

    def __init__(self, path: str, readonly: bool = False, opener: FileOpener | None = None) -> None:
        self.path = path
        self.readonly = readonly
        self._fd = (opener or HostOpener()).open(path, readonly)
        self.size = round_up(file_size(self._fd), SECTOR)
        self._can_punch = True

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        return pread_full(self._fd, length, offset)

    def write(self, offset: int, data: bytes) -> None:
        check_writable(self.readonly, self.path)
        check_range(self.size, offset, len(data))
        pwrite_full(self._fd, data, offset)

    def flush(self) -> None:
        if not self.readonly:
            os.fdatasync(self._fd)

    def discard(self, offset: int, length: int) -> None:
        check_writable(self.readonly, self.path)
        check_range(self.size, offset, length)
        if self._can_punch:
            self._can_punch = punch_hole(self._fd, offset, length)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                if not self.readonly:
                    os.fdatasync(fd)
            finally:
                os.close(fd)  # drops the flock once no dup of it is left (never LOCK_UN: see base._lock)
