"""What every disk image format shares: the DiskImage protocol, argument checks, locking and file access.

Backing files (a qcow2's backing file name, the base recorded in a cow overlay's header) are data inside
an image, so they are only followed inside directories the administrator allowed: the directory tree of
the image that names them (after resolving symlinks: an absolute name elsewhere, a ``..`` escape or a
symlink pointing out is refused), plus the directories listed in ``$HYPERDISCO_BACKING_DIRS``
(os.pathsep-separated, read when a HostOpener is made) and those given as ``HostOpener(backing_dirs=...)``.
A base named explicitly by the administrator (``base=`` of a disk spec) is not subject to this.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from typing import NamedTuple, Protocol, runtime_checkable

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


def _lock(fd: int, path: str, readonly: bool) -> None:
    """flock ``fd``: shared for read-only, exclusive for read-write, never waiting. Closes ``fd`` on failure.

    The lock belongs to the open file description, so a dup of ``fd`` (kept by RecordingOpener, or sent to
    another process with SCM_RIGHTS) holds it too; it goes away when the last descriptor is closed. That
    is why nothing here ever unlocks explicitly (LOCK_UN would drop every holder's lock at once).
    """
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ImageError(f"hyperdisco: {path}: disk image is in use by another domain") from None
    except OSError as exc:
        os.close(fd)
        raise ImageError(f"hyperdisco: {path}: cannot lock disk image ({exc.strerror or exc})") from None


def _refuse_special(path: str, mode: int) -> None:
    what = special_file(mode)
    if what is not None:
        raise ImageError(f"hyperdisco: {path}: is {what}, not a disk image (regular file or block device)")


class ImageMissing(ImageError):
    """The disk image file ``path`` does not exist (a new persistent cow overlay may then be created)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"hyperdisco: {path}: disk image does not exist")
        self.path = path


class CorruptImage(ImageError, OSError):
    """An image's metadata found inconsistent while serving I/O. It is an OSError (EIO), so the block
    backend fails that request as an I/O error, and an ImageError with a one-line message; the image
    fails every later request the same way (only that disk, never the domain or other disks)."""

    def __init__(self, message: str) -> None:
        OSError.__init__(self, errno.EIO, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


BACKING_DIRS_ENV = "HYPERDISCO_BACKING_DIRS"


def backing_path(name: str, named_by: str) -> str:
    """Where the backing file ``name``, found inside the image ``named_by``, is: relative names are
    relative to that image's directory. Purely lexical (the same in every process); whether it may be
    opened is the opener's check_backing."""
    path = name if os.path.isabs(name) else os.path.join(os.path.dirname(named_by) or ".", name)
    return os.path.normpath(path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@runtime_checkable
class FileOpener(Protocol):
    """How the disk package reaches host files: every open of an image, base, backing file or scratch
    overlay goes through one of these (open_disk(..., opener=...) passes it down the whole chain).

    Descriptors returned are owned by the caller, close-on-exec, and locked (flock: exclusive for
    read-write, shared for read-only). Errors are one-line ImageErrors naming the file.
    """

    def open(self, path: str, readonly: bool, create: bool = False) -> int:
        """Open (with ``create``: create, failing if it exists) and lock the image file ``path``."""
        ...

    def temporary(self, directory: str | None) -> int:
        """An anonymous, already unlinked read-write scratch file (for non-persistent overlays), in
        ``directory`` when possible, else in the system's temporary directory."""
        ...

    def check_backing(self, path: str, named_by: str) -> None:
        """Raise ImageError unless ``path``, a backing file named inside the image ``named_by`` (a qcow2
        backing file name, a cow header's base), may be opened."""
        ...


def special_file(mode: int) -> str | None:
    """What a file that cannot be a disk image is ("a FIFO", ...); None for regular files, block devices."""
    return None if stat.S_ISBLK(mode) else file_kind(mode)


def file_kind(mode: int) -> str | None:
    """What a file that is not a regular file is ("a directory", "a block device"...); None if it is one."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    return "a special file"


class HostOpener:
    """The host's files, opened directly (what a process with access to the images uses).

    Backing files are allowed inside the naming image's directory tree, ``backing_dirs`` and the
    directories of ``$HYPERDISCO_BACKING_DIRS`` (see the module docstring).

    Only regular files and block devices are disk images: a directory, FIFO, socket or character device is
    refused in one line, before it is opened (opening some devices has side effects) and again after
    (fstat of what was opened). Opens never block (O_NONBLOCK, cleared again once the file is known to be
    a regular file or block device) and are close-on-exec.
    """

    def __init__(self, backing_dirs: Iterable[str] = ()) -> None:
        env = [d for d in os.environ.get(BACKING_DIRS_ENV, "").split(os.pathsep) if d]
        self.backing_dirs: tuple[str, ...] = (*backing_dirs, *env)

    def open(self, path: str, readonly: bool, create: bool = False) -> int:
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        else:
            try:
                _refuse_special(path, os.stat(path).st_mode)
            except OSError:
                pass  # the open below says why
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            raise ImageMissing(path) from None
        except FileExistsError:
            raise ImageError(f"hyperdisco: {path}: disk image already exists") from None
        except IsADirectoryError:
            raise ImageError(f"hyperdisco: {path}: is a directory, not a disk image") from None
        except OSError as exc:
            raise ImageError(f"hyperdisco: {path}: cannot open disk image ({exc.strerror or exc})") from None
        try:
            _refuse_special(path, os.fstat(fd).st_mode)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        _lock(fd, path, readonly)
        return fd

    def temporary(self, directory: str | None) -> int:
        dirs = [directory, None] if directory else [None]
        why: object = None
        for d in dirs:
            try:
                with tempfile.TemporaryFile(dir=d) as f:
                    return os.dup(f.fileno())
            except OSError as exc:
                why = exc.strerror or exc
        raise ImageError(f"hyperdisco: cannot create a temporary overlay ({why})")

    def check_backing(self, path: str, named_by: str) -> None:
        real, image = os.path.realpath(path), os.path.realpath(named_by)
        if real == image:
            raise ImageError(f"hyperdisco: {named_by}: image is its own backing file")
        roots = [os.path.dirname(image), *(os.path.realpath(d) for d in self.backing_dirs)]
        if not any(_inside(real, root) for root in roots):
            raise ImageError(
                f"hyperdisco: {named_by}: backing file {path} is outside the directories allowed for backing "
                f"files ({os.pathsep.join(roots)}; ${BACKING_DIRS_ENV} adds more)"
            )


class OpenRecord(NamedTuple):
    """One descriptor a RecordingOpener handed out: ``kind`` "open" (``path`` as asked for, ``readonly``)
    or "temporary" (``path`` the directory asked for, "" for none); ``fd`` is the recorder's own dup."""

    kind: str
    path: str
    readonly: bool
    fd: int


class RecordingOpener:
    """Delegates to ``inner`` and keeps a dup of every descriptor it returns, in ``records`` (in order), so
    that they can be handed to another process (SCM_RIGHTS) and served there by a HandedOpener.

    Opens with ``create`` (scratch names used while creating a new overlay) are not recorded: nothing
    but the creating process ever uses them. close() closes the recorded dups (not the images).
    """

    def __init__(self, inner: FileOpener | None = None) -> None:
        self.inner: FileOpener = inner if inner is not None else HostOpener()
        self.records: list[OpenRecord] = []

    def open(self, path: str, readonly: bool, create: bool = False) -> int:
        fd = self.inner.open(path, readonly, create)
        if not create:
            self.records.append(OpenRecord("open", path, readonly, _dup(fd)))
        return fd

    def temporary(self, directory: str | None) -> int:
        fd = self.inner.temporary(directory)
        self.records.append(OpenRecord("temporary", directory or "", False, _dup(fd)))
        return fd

    def check_backing(self, path: str, named_by: str) -> None:
        self.inner.check_backing(path, named_by)

    def close(self) -> None:
        records, self.records = self.records, []
        for rec in records:
            os.close(rec.fd)


class HandedOpener:
    """Serves exactly the descriptors another process handed over (the records of a RecordingOpener, or
    (kind, path, readonly, fd) tuples with received fds): ``open`` of a handed (path, readonly), and the
    handed temporaries in order, each time as a new dup. Anything else is refused ("not handed to this
    domain"): a process using it can open no other host file through the disk package.

    Backing-file policy checks pass: they were made when the files were opened for handing, and only
    handed files can be opened here. close() closes the handed descriptors.
    """

    def __init__(self, records: Iterable[tuple[str, str, bool, int]]) -> None:
        self._files: dict[tuple[str, bool], int] = {}
        self._temporaries: list[int] = []
        self._next_temporary = 0
        self._all: list[int] = []  # every handed descriptor (one path may come more than once)
        for kind, path, readonly, fd in records:
            self._all.append(fd)
            if kind == "open":
                self._files.setdefault((path, bool(readonly)), fd)
            elif kind == "temporary":
                self._temporaries.append(fd)
            else:
                raise ValueError(f"unknown opener record kind {kind!r}")

    def open(self, path: str, readonly: bool, create: bool = False) -> int:
        fd = None if create else self._files.get((path, bool(readonly)))
        if fd is None:
            mode = "read-only" if readonly else "read-write"
            raise ImageError(f"hyperdisco: {path}: not handed to this domain ({mode})")
        return _dup(fd)

    def temporary(self, directory: str | None) -> int:
        if self._next_temporary >= len(self._temporaries):
            raise ImageError("hyperdisco: temporary overlay not handed to this domain")
        fd = self._temporaries[self._next_temporary]
        self._next_temporary += 1
        return _dup(fd)

    def check_backing(self, path: str, named_by: str) -> None:
        return None

    def close(self) -> None:
        fds, self._all = set(self._all), []
        self._files.clear()
        self._temporaries.clear()
        for fd in fds:
            os.close(fd)


def _dup(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)


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
