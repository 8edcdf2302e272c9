"""Which guest pages were written since the last look: the dirty log that live migration's pre-copy
rounds read (docs/migration.md).

The host kernel keeps it: guest RAM is registered with a userfaultfd in write-protect mode with
UFFD_FEATURE_WP_ASYNC (Linux 6.7), so a write to a protected page is resolved by the kernel itself (the
page is marked written and made writable again; no message, no thread of ours in the path), and the
PAGEMAP_SCAN ioctl on /proc/self/pagemap returns the written pages and write-protects them again in one
call. A page costs the guest one minor fault per round it is written in; pages it does not write cost
nothing. Both descriptors are opened before the domain process enters its jail (the jail has no /proc,
and its seccomp filter refuses userfaultfd(2)); the ioctls work inside it.

Soft-dirty bits (/proc/self/clear_refs "4" + pagemap bit 55) would do the same but need
CONFIG_MEM_SOFT_DIRTY, which the kernel this was built on lacks (bit 55 always reads 0).

ABI: include/uapi/linux/userfaultfd.h (struct uffdio_api, uffdio_register, uffdio_writeprotect, the
UFFDIO_* ioctls, UFFD_FEATURE_*), include/uapi/linux/fs.h (struct pm_scan_arg, struct page_region,
PAGEMAP_SCAN, PM_SCAN_*, PAGE_IS_*); the ioctl numbers are <asm-generic/ioctl.h>'s _IOWR/_IOR encoding.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Iterator

PAGE = 4096
NR_USERFAULTFD = 323  # arch/x86/entry/syscalls/syscall_64.tbl
O_CLOEXEC, O_NONBLOCK = 0o2000000, 0o4000
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


def _ior(kind: int, nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (kind << 8) | nr


_API = struct.Struct("<QQQ")  # struct uffdio_api: api, features, ioctls
_REGISTER = struct.Struct("<QQQQ")  # struct uffdio_register: range {start, len}, mode, ioctls
_WRITEPROTECT = struct.Struct("<QQQ")  # struct uffdio_writeprotect: range {start, len}, mode
_RANGE = struct.Struct("<QQ")  # struct uffdio_range
UFFDIO_API = _iowr(0xAA, 0x3F, _API.size)
UFFDIO_REGISTER = _iowr(0xAA, 0x00, _REGISTER.size)
UFFDIO_UNREGISTER = _ior(0xAA, 0x01, _RANGE.size)
UFFDIO_WRITEPROTECT = _iowr(0xAA, 0x06, _WRITEPROTECT.size)


class PmScanArg(ctypes.Structure):
    """struct pm_scan_arg (include/uapi/linux/fs.h)."""

    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages", "category_inverted",
        "category_mask", "category_anyof_mask", "return_mask")]


class PageRegion(ctypes.Structure):
    """struct page_region: [start, end) with the categories asked for in return_mask."""

    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


PAGEMAP_SCAN = _iowr(ord("f"), 16, ctypes.sizeof(PmScanArg))
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
PAGE_IS_WRITTEN = 1 << 1
_VEC = 512  # regions per PAGEMAP_SCAN call

_libc = ctypes.CDLL(None, use_errno=True)


class DirtyLogError(Exception):
    """Dirty tracking is not available here (str(): one line saying why)."""


class DirtyLog:
    """Write tracking over one range of this process's memory (the guest's RAM mapping)."""

    def __init__(self, uffd: int, pagemap: int) -> None:
        self.uffd = uffd
        self.pagemap = pagemap
        self.range: tuple[int, int] | None = None  # (address, length) while tracking
        self._vec = (PageRegion * _VEC)()

    @classmethod
    def open(cls) -> DirtyLog:
        """The userfaultfd (with write-protect-async negotiated) and /proc/self/pagemap: call before the
        jail. DirtyLogError if the host cannot track writes this way."""
        uffd = _libc.syscall(NR_USERFAULTFD, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)
        if uffd < 0:
            raise DirtyLogError(f"userfaultfd: {os.strerror(ctypes.get_errno())}")
        try:
            want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM
            buf = bytearray(_API.pack(UFFD_API, want, 0))
            try:
                fcntl.ioctl(uffd, UFFDIO_API, buf)
            except OSError as exc:
                raise DirtyLogError(f"userfaultfd without asynchronous write protection of shared memory "
                                    f"({exc.strerror}; Linux 6.7 has it)") from None
            pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(uffd)
            raise
        return cls(uffd, pagemap)

    def close(self) -> None:
        self.stop()
        for fd in (self.uffd, self.pagemap):
            if fd >= 0:
                os.close(fd)
        self.uffd = self.pagemap = -1

    def start(self, address: int, length: int) -> None:
        """Begin tracking [address, address+length): every page counts as clean from now on."""
        if address % PAGE or length % PAGE or length <= 0:
            raise ValueError("the tracked range must be whole pages")
        self.stop()
        fcntl.ioctl(self.uffd, UFFDIO_REGISTER, bytearray(_REGISTER.pack(address, length,
                                                                          UFFDIO_REGISTER_MODE_WP, 0)))
        self.range = (address, length)
        fcntl.ioctl(self.uffd, UFFDIO_WRITEPROTECT, bytearray(_WRITEPROTECT.pack(
            address, length, UFFDIO_WRITEPROTECT_MODE_WP)))

    def stop(self) -> None:
        if self.range is not None and self.uffd >= 0:
            try:
                fcntl.ioctl(self.uffd, UFFDIO_UNREGISTER, bytearray(_RANGE.pack(*self.range)))
            except OSError:
                pass
        self.range = None

    def collect(self) -> Iterator[tuple[int, int]]:
        """(first page, count), relative to the tracked range, of the pages written since `start` or the
        previous collect; each is write-protected again in the same step (a write after it is seen next
        time)."""
        if self.range is None:
            raise ValueError("not tracking")
        address, length = self.range
        end = address + length
        start = address
        vec = self._vec
        while start < end:
            arg = PmScanArg(size=ctypes.sizeof(PmScanArg), flags=PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                            start=start, end=end, vec=ctypes.addressof(vec), vec_len=_VEC,
                            category_mask=PAGE_IS_WRITTEN, return_mask=PAGE_IS_WRITTEN)
            n = fcntl.ioctl(self.pagemap, PAGEMAP_SCAN, arg)
            for i in range(n):
                yield (vec[i].start - address) // PAGE, (vec[i].end - vec[i].start) // PAGE
            if arg.walk_end <= start:
                raise OSError("PAGEMAP_SCAN made no progress")
            start = arg.walk_end
