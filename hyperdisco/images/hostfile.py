"""Reading the host files a domain is built from (kernel, ramdisk): regular files only, never blocking,
with a size bound, and every failure a one-line ImageError.

A FIFO named as a kernel would otherwise block the reader forever, ``/dev/zero`` as a ramdisk would be
read without end and a directory would fail with a traceback; each is refused before it is opened (opening
some devices has side effects) and again, with fstat, after the non-blocking open.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hyperdisco.backends.disk.base import file_kind
from hyperdisco.errors import ImageError

MAX_KERNEL_BYTES = 256 << 20  # a kernel file; Debian's cloud kernel is ~8 MiB as bzImage, ~50 MiB as ELF
MAX_RAMDISK_BYTES = 1 << 30  # an initramfs
_CHUNK = 16 << 20


def _size_text(limit: int) -> str:
    return f"{limit >> 30} GiB" if limit >= 1 << 30 and limit % (1 << 30) == 0 else f"{limit >> 20} MiB"


def read_regular_file(path: str | Path, limit: int, what: str) -> bytes:
    """The contents of the regular file ``path`` (at most ``limit`` bytes); ``what`` names it in errors
    ("kernel", "ramdisk")."""
    name = str(path)

    def fail(why: str) -> ImageError:
        return ImageError(f"hyperdisco: {name}: {why}")

    def check(mode: int) -> None:
        kind = file_kind(mode)
        if kind is not None:
            raise fail(f"is {kind}, not a {what} file")

    try:
        check(os.stat(name).st_mode)
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise fail(f"no such {what} file") from None
    except OSError as exc:
        raise fail(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        check(st.st_mode)
        if st.st_size > limit:
            raise fail(f"{what} file is larger than {_size_text(limit)} ({st.st_size} bytes)")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        parts: list[bytes] = []
        total = 0
        while True:  # the file may grow while it is read: stop one byte past the limit
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise fail(f"{what} file is larger than {_size_text(limit)}")
        return b"".join(parts)
    except OSError as exc:
        raise fail(f"cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
