"""xen/include/public/errno.h: Xen's error numbers (hypercalls return them negated)."""

from __future__ import annotations

__all__ = [
    "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "E2BIG", "EBADF", "EAGAIN", "ENOMEM", "EACCES", "EFAULT",
    "EBUSY", "EEXIST", "ENODEV", "EINVAL", "ENOSPC", "ERANGE", "ENOSYS", "ETIME", "EOPNOTSUPP",
    "ENXIO",
]

# --- errno.h: Xen's error numbers (returned negated) ---------------------------------------------------
EPERM, ENOENT, ESRCH, EINTR, EIO = 1, 2, 3, 4, 5
ENXIO = 6
E2BIG, EBADF, EAGAIN, ENOMEM, EACCES, EFAULT = 7, 9, 11, 12, 13, 14
EBUSY, EEXIST, ENODEV, EINVAL, ENOSPC = 16, 17, 19, 22, 28
ERANGE, ENOSYS, ETIME, EOPNOTSUPP = 34, 38, 62, 95
