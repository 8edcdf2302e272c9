"""The save file of a domain (docs/save-format.md): a versioned container of typed sections ending in a
SHA-256 checksum over everything before it.

    magic "HDSAVE\\r\\n" (8 bytes) | format version u32 LE
    section*: tag (4 ASCII bytes) | length u64 LE | payload
    "END " section: payload = SHA-256 of every byte before this section (magic included)

The first section is "HDR " (JSON: hyperdisco version, kernel identity, the domain's configuration, vCPU
count). The writer streams (memory is never held twice); the reader checks the whole file before it hands
out anything, so a truncated, corrupt or other-version file is refused with one line (`SaveFileError`)
and nothing of it is used. Memory ("MEM " sections) is a list of runs of non-zero pages: a page never
touched reads as zeros and is not stored. Since version 2 each run's pages start at a page-aligned offset
of the file (zero padding after the run record), so a restore can map them MAP_PRIVATE from the file:
clones of one save share its pages in the host's page cache until they write them (vmm/snapshot.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAGIC = b"HDSAVE\r\n"
FORMAT_VERSION = 2  # 2: memory runs page-aligned in the file (mapped by clones)
PAGE = 4096
_VERSION = struct.Struct("<I")
_SECTION = struct.Struct("<4sQ")
# guest-physical address of the first page, number of pages, bytes of zero padding that follow the record
# (up to the next page-aligned file offset, where the pages begin)
_RUN = struct.Struct("<QII")
END = b"END "
HEADER = b"HDR "
MEMORY = b"MEM "
MAX_JSON_SECTION = 64 << 20  # a JSON section larger than this is refused (no file of ours is near it)
MAX_RUN_PAGES = 1 << 18  # 1 GiB per run record

# The tags this version knows; an unknown tag is refused (a newer writer must bump FORMAT_VERSION).
KNOWN_TAGS = frozenset({HEADER, b"VCPU", b"LAPC", MEMORY, b"EVTC", b"GNTT", b"XSTR", b"CONS", b"DEVS", END})


class SaveFileError(Exception):
    """A save file that cannot be used; str() is the one line shown to the user."""


class SaveWriter:
    """Writes a save file section by section to `out`, hashing as it goes; `finish` appends the checksum."""

    def __init__(self, out: BinaryIO, header: dict[str, Any]) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._pos = 0  # bytes written so far: where the next byte lands in the file
        self._finished = False
        self._emit(MAGIC + _VERSION.pack(FORMAT_VERSION))
        self.json_section(HEADER, {"format": FORMAT_VERSION, **header})

    def _emit(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._hash.update(data)
        self._pos += len(data)

    def section(self, tag: bytes, payload: bytes | memoryview) -> None:
        if tag not in KNOWN_TAGS or tag == END or self._finished:
            raise ValueError(f"cannot write section {tag!r}")
        self._emit(_SECTION.pack(tag, len(payload)))
        self._emit(payload)

    def json_section(self, tag: bytes, value: Any) -> None:
        self.section(tag, json.dumps(value, sort_keys=True, separators=(",", ":")).encode())

    def memory_section(self, base: int, ram: memoryview | bytes) -> int:
        """One "MEM " section of the non-zero pages of `ram` (mapped at guest-physical `base`); returns the
        number of pages stored. Runs are found first (a pass over `ram`), then written straight from it."""
        view = memoryview(ram).cast("B")
        if len(view) % PAGE or base % PAGE:
            raise ValueError("memory must be whole pages at a page-aligned address")
        runs = list(nonzero_runs(view))
        pos = self._pos + _SECTION.size
        pads = []
        for _, n in runs:  # each run's pages begin at a page-aligned file offset
            pads.append(-(pos + _RUN.size) % PAGE)
            pos += _RUN.size + pads[-1] + n * PAGE
        self._emit(_SECTION.pack(MEMORY, pos - self._pos - _SECTION.size))
        for (first, n), pad in zip(runs, pads, strict=True):
            self._emit(_RUN.pack(base + first * PAGE, n, pad) + bytes(pad))
            self._emit(view[first * PAGE:(first + n) * PAGE])
        return sum(n for _, n in runs)

    def finish(self) -> None:
        digest = self._hash.digest()
        self._out.write(_SECTION.pack(END, len(digest)) + digest)
        self._finished = True


def nonzero_runs(view: memoryview, max_run: int = MAX_RUN_PAGES) -> Iterator[tuple[int, int]]:
    """(first page, count) of each run of pages of `view` that are not all zero."""
    zero = bytes(PAGE)
    start = -1
    pages = len(view) // PAGE
    for i in range(pages):
        if view[i * PAGE:(i + 1) * PAGE] != zero:
            if start < 0:
                start = i
            if i - start + 1 == max_run:
                yield start, max_run
                start = -1
        elif start >= 0:
            yield start, i - start
            start = -1
    if start >= 0:
        yield start, pages - start


@dataclass
class SaveFile:
    """A checked save file: its header and where each section's payload lies in the file."""

    path: str
    version: int
    header: dict[str, Any]
    sections: list[tuple[bytes, int, int]] = field(default_factory=list)  # tag, offset, length
    file: BinaryIO | None = None  # kept open (read_save_fd), else the path is opened for each read

    def opened(self) -> AbstractContextManager[BinaryIO]:
        """The file, open for reading (the kept descriptor, or the path opened for the `with` block)."""
        return self._open()

    def _open(self) -> AbstractContextManager[BinaryIO]:
        if self.file is not None:
            return nullcontext(self.file)
        return open(self.path, "rb")

    def payloads(self, tag: bytes) -> Iterator[bytes]:
        with self._open() as f:
            for t, offset, length in self.sections:
                if t == tag:
                    f.seek(offset)
                    yield f.read(length)

    def json(self, tag: bytes) -> list[Any]:
        return [json.loads(p) for p in self.payloads(tag)]

    def memory_runs(self) -> Iterator[tuple[int, bytes]]:
        """(guest-physical address, bytes) of every stored run of pages."""
        with self._open() as f:
            for gpa, offset, size in self.memory_extents():
                f.seek(offset)
                yield gpa, f.read(size)

    def memory_extents(self) -> Iterator[tuple[int, int, int]]:
        """(guest-physical address, file offset, bytes) of every stored run of pages; the file offsets are
        page-aligned (what a restore maps)."""
        with self._open() as f:
            for t, offset, length in self.sections:
                if t != MEMORY:
                    continue
                pos = offset
                while pos < offset + length:
                    f.seek(pos)
                    gpa, n, pad = _RUN.unpack(f.read(_RUN.size))
                    pos += _RUN.size + pad
                    yield gpa, pos, n * PAGE
                    pos += n * PAGE


def read_save(path: str) -> SaveFile:
    """Checks the whole file (magic, version, every section's bounds and tag, memory runs, the checksum) and
    returns its index; any defect raises SaveFileError with one line."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SaveFileError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        return _read(path, f)


def read_save_fd(fd: int, name: str) -> SaveFile:
    """As read_save, on an open descriptor (taken over: the SaveFile keeps it open)."""
    f = os.fdopen(fd, "rb")
    try:
        sf = _read(name, f)
    except BaseException:
        f.close()
        raise
    sf.file = f
    return sf


def check_save_stream(name: str, f: BinaryIO) -> SaveFile:
    """read_save on an open file object (dom0/sealed_saves.py passes one that copies what it reads)."""
    return _read(name, f)


def index_sealed_save(fd: int, name: str) -> SaveFile:
    """The index of a save file domain 0 has checked whole and sealed (dom0/sealed_saves.py: the caller
    has verified the seals, so the bytes cannot change): magic, version, each section's tag and bounds and
    the header's JSON are read again, cheaply (the payloads are seeked over, not hashed). Takes `fd` over."""
    f = os.fdopen(fd, "rb")
    try:
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(MAGIC) + _VERSION.size)
        version = _version(head, name)
        pos = len(head)
        sections: list[tuple[bytes, int, int]] = []
        header: dict[str, Any] | None = None
        while True:
            raw = f.read(_SECTION.size)
            if len(raw) < _SECTION.size:
                raise SaveFileError(f"{name}: truncated save file (section header cut short)")
            tag, length = _SECTION.unpack(raw)
            pos += _SECTION.size
            if tag not in KNOWN_TAGS or length > size - pos:
                raise SaveFileError(f"{name}: corrupt save file (section at byte {pos - _SECTION.size})")
            if tag == END:
                break
            if tag == HEADER:
                header = _header(f.read(length), name) if header is None else None
            if header is None:
                raise SaveFileError(f"{name}: corrupt save file (header)")
            sections.append((tag, pos, length))
            pos += length
            f.seek(pos)
        if header is None:
            raise SaveFileError(f"{name}: corrupt save file (no header)")
    except BaseException:
        f.close()
        raise
    return SaveFile(name, version, header, sections, file=f)


def _version(head: bytes, name: str) -> int:
    """The format version from the file's first bytes (magic, u32), or one line why not."""
    if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
        raise SaveFileError(f"{name}: not a hyperdisco save file")
    if len(head) < len(MAGIC) + _VERSION.size:
        raise SaveFileError(f"{name}: truncated save file (header cut short)")
    (version,) = _VERSION.unpack_from(head, len(MAGIC))
    if version != FORMAT_VERSION:
        raise SaveFileError(f"{name}: save format version {version}, this hyperdisco reads version "
                            f"{FORMAT_VERSION}")
    return int(version)


def _header(data: bytes, name: str) -> dict[str, Any]:
    """The HEADER section's JSON object, or one line."""
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SaveFileError(f"{name}: corrupt save file (header)") from None
    if not isinstance(parsed, dict):
        raise SaveFileError(f"{name}: corrupt save file (header)")
    return parsed


def _read(path: str, f: BinaryIO) -> SaveFile:
    def short(what: str) -> SaveFileError:
        return SaveFileError(f"{path}: truncated save file ({what} cut short)")

    digest = hashlib.sha256()
    head = f.read(len(MAGIC) + _VERSION.size)
    version = _version(head, path)
    digest.update(head)
    pos = len(head)
    sections: list[tuple[bytes, int, int]] = []
    header: dict[str, Any] | None = None
    while True:
        raw = f.read(_SECTION.size)
        if len(raw) < _SECTION.size:
            raise short("section header")
        tag, length = _SECTION.unpack(raw)
        if tag not in KNOWN_TAGS:
            raise SaveFileError(f"{path}: corrupt save file (unknown section at byte {pos})")
        if tag == END:
            got = f.read(length + 1)
            if length != 32 or len(got) < 32:
                raise short("checksum") if len(got) < min(length, 32) else SaveFileError(
                    f"{path}: corrupt save file (checksum section)")
            if len(got) > 32:
                raise SaveFileError(f"{path}: corrupt save file (data after the checksum)")
            if got != digest.digest():
                raise SaveFileError(f"{path}: corrupt save file (checksum mismatch)")
            break
        digest.update(raw)
        pos += _SECTION.size
        if tag != MEMORY and length > MAX_JSON_SECTION:
            raise SaveFileError(f"{path}: corrupt save file (section of {length} bytes)")
        left = length
        run_left = 0  # bytes of the current memory run still to come; 0: a run record is next
        while left:
            if tag != MEMORY:
                want = min(left, 1 << 20)
            else:
                want = min(run_left, 1 << 20) if run_left else min(left, _RUN.size)
            chunk = f.read(want)
            if len(chunk) < want:
                raise short(tag.decode().strip() + " section")
            if tag == MEMORY:
                if run_left == 0:
                    if len(chunk) < _RUN.size:
                        raise SaveFileError(f"{path}: corrupt save file (memory run record)")
                    gpa, n, pad = _RUN.unpack(chunk)
                    run_left = n * PAGE
                    at = pos + length - left + _RUN.size  # file offset after the record
                    if (gpa % PAGE or not 0 < n <= MAX_RUN_PAGES or pad != -at % PAGE
                            or run_left + pad > left - _RUN.size):
                        raise SaveFileError(f"{path}: corrupt save file (memory run record)")
                    padding = f.read(pad)
                    if len(padding) < pad:
                        raise short("MEM section")
                    if padding.count(0) != pad:
                        raise SaveFileError(f"{path}: corrupt save file (memory run padding)")
                    chunk += padding
                else:
                    run_left -= len(chunk)
            digest.update(chunk)
            left -= len(chunk)
        if tag == MEMORY and run_left:
            raise SaveFileError(f"{path}: corrupt save file (memory run record)")
        if tag == HEADER:
            if sections:
                raise SaveFileError(f"{path}: corrupt save file (second header)")
            f.seek(pos)
            header = _header(f.read(length), path)
        elif header is None:
            raise SaveFileError(f"{path}: corrupt save file (no header)")
        sections.append((tag, pos, length))
        pos += length
        f.seek(pos)
    if header is None:
        raise SaveFileError(f"{path}: corrupt save file (no header)")
    return SaveFile(path, version, header, sections)
