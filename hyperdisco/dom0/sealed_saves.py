"""Sealed copies of the save files restores run from (issue 14: docs/save-format.md, docs/clones.md).

On the first restore of a file, domain 0 copies it into a memfd while it checks it (one read of the file:
every byte hashed is the byte copied, core/savefile.check_save_stream), then seals the memfd
(F_SEAL_WRITE|F_SEAL_GROW|F_SEAL_SHRINK|F_SEAL_SEAL, memfd_create(2), fcntl(2)) and hands that to the
domain process, which verifies the seals instead of hashing again (vmm/snapshot.open_save) and maps its RAM
MAP_PRIVATE from it. Clones of one file share the memfd's pages; what is later written to the user's file,
or its truncation, no longer reaches them.

The copies are kept per file (device, inode, size, mtime_ns) while a domain restored from it lives and
for IDLE_SECONDS after the last restore; at most MAX_ENTRIES copies and MAX_BYTES in all are kept (a copy
beyond that serves its restore only). Dropping a copy only closes domain 0's descriptor: running domains
keep their mappings.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..core.savefile import SaveFile, SaveFileError, check_save_stream

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
IDLE_SECONDS = 10.0
MAX_ENTRIES = 8
MAX_BYTES = 4 << 30

Key = tuple[int, int, int, int]


class _Tee:
    """A read-only file object over the save file that writes every byte it returns to the memfd at the
    same offset (a seek back re-reads bytes already copied: pwrite puts the same bytes there again)."""

    def __init__(self, src: BinaryIO, dst: int) -> None:
        self.src = src
        self.dst = dst

    def read(self, n: int = -1) -> bytes:
        pos = self.src.tell()
        data = self.src.read(n)
        done = 0
        while done < len(data):
            done += os.pwrite(self.dst, memoryview(data)[done:], pos + done)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.src.seek(pos, whence)

    def tell(self) -> int:
        return self.src.tell()


def seal_copy(path: str) -> tuple[int, SaveFile, os.stat_result]:
    """Checks `path` whole while copying it into a new sealed memfd: (memfd, its index, the file's stat as
    read). SaveFileError (one line) for a defect or a file that changed while it was read."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SaveFileError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        before = os.fstat(f.fileno())
        fd = os.memfd_create("hyperdisco-save", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, before.st_size)  # one size: no growth by page as the copy is written
            save = check_save_stream(path, _Tee(f, fd))  # type: ignore[arg-type]
            after = os.fstat(f.fileno())
            copied = f.tell()
            if _key(before) != _key(after) or copied != before.st_size:
                raise SaveFileError(f"{path}: changed while it was being restored")
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)
            raise
    return fd, save, before


def _reopen(fd: int) -> int:
    """A descriptor of the same memfd with a file offset of its own (a dup would share one: every domain
    process reads its copy's sections with seek and read, vmm/snapshot.py)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class Entry:
    fd: int
    save: SaveFile
    size: int
    used: float  # monotonic time of the last restore from it
    users: list[Callable[[], bool]] = field(default_factory=list)  # each: is that domain still alive?

    def in_use(self) -> bool:
        self.users = [alive for alive in self.users if alive()]
        return bool(self.users)


class SealedSaves:
    def __init__(self, idle: float = IDLE_SECONDS, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle = idle
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: dict[Key, Entry] = {}
        self._lock = threading.Lock()
        self._sealing: dict[Key, threading.Lock] = {}
        self._timer: threading.Timer | None = None

    def acquire(self, path: str) -> tuple[int, SaveFile]:
        """A read-only descriptor of the sealed, checked copy of `path` (the caller's to close) and its index.
        A file already copied and unchanged (same device, inode, size, mtime) is not read again."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise SaveFileError(f"{path}: cannot open: {e.strerror}") from None
        key = _key(st)
        with self._lock:
            gate = self._sealing.setdefault(key, threading.Lock())
        try:
            with gate:  # clones restored at once: the first one copies, the others wait and share it
                return self._acquire_gated(path, key)
        finally:
            with self._lock:
                if self._sealing.get(key) is gate and not gate.locked():
                    del self._sealing[key]

    def _acquire_gated(self, path: str, key: Key) -> tuple[int, SaveFile]:
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None:
                entry.used = self.clock()
                return _reopen(entry.fd), entry.save
        fd, save, seen = seal_copy(path)
        with self._lock:
            # changed between the stat and the copy, or copied meanwhile by a restore that did not wait
            # for this one's gate: this copy serves this restore only
            if _key(seen) != key or key in self.entries:
                return fd, save
            entry = Entry(fd, save, seen.st_size, self.clock())
            self.entries[key] = entry
            self._prune_locked(fresh=entry)
            if self.entries.get(key) is not entry:  # beyond the bounds: serves this restore only
                return fd, save
            self._schedule_locked()
            return _reopen(fd), save

    def used_by(self, save: SaveFile, alive: Callable[[], bool]) -> None:
        """The domain `alive` tells of runs from the copy indexed by `save` (keeps it while it does)."""
        with self._lock:
            for entry in self.entries.values():
                if entry.save is save:
                    entry.users.append(alive)

    def prune(self) -> None:
        with self._lock:
            self._prune_locked()
            self._timer = None
            self._schedule_locked()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            for entry in self.entries.values():
                os.close(entry.fd)
            self.entries.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self.entries), "bytes": sum(e.size for e in self.entries.values())}

    def _prune_locked(self, fresh: Entry | None = None) -> None:
        now = self.clock()
        for key, entry in list(self.entries.items()):
            if now - entry.used >= self.idle and not entry.in_use():
                os.close(self.entries.pop(key).fd)
        # over the bounds: the least recently used copies no domain uses go first, then the newest is not kept
        order = sorted(self.entries.items(), key=lambda kv: kv[1].used)
        for key, entry in order:
            if len(self.entries) <= self.max_entries and self._bytes() <= self.max_bytes:
                break
            if entry is fresh:  # its descriptor is the caller's
                del self.entries[key]
            elif not entry.in_use():
                os.close(self.entries.pop(key).fd)

    def _bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def _schedule_locked(self) -> None:
        if self._timer is None and self.entries:
            self._timer = threading.Timer(self.idle / 2, self.prune)
            self._timer.daemon = True
            self._timer.start()

