"""The live-migration stream (docs/migration.md): what a source domain process sends a destination
domain process over one connection, after the two daemons agreed on the domain (toolstack/migrate_ops.py).

    record*: tag (4 ASCII bytes) | length u32 LE | payload
    "PAGE"   gpa u64 | pages u32 | the pages (at most MAX_RECORD_PAGES)
    "VCPU"   index u32 | the engine's state blob (the save file's VCPU section: vmm/snapshot.py)
    "LAPC"   JSON: each vCPU's state outside the engine (the save file's LAPC section), at most once
    "DONE"   JSON statistics (rounds, pages) | SHA-256 of every byte of the stream before it

and then, the other way, one line: "RUNNING\\n" once the destination's vCPU runs, or "FAILED reason\\n".

The destination treats the stream as it treats a save file: hostile input. Every record is checked
before it is used (tag, length, page alignment, the whole run inside the domain's RAM or special pages);
the checksum covers the stream, and nothing of it runs until DONE checked out.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

PAGE = 4096
MAX_RECORD_PAGES = 256  # 1 MiB of pages per record
MAX_VCPU_STATE = 1 << 20
MAX_DONE = 64 << 10
MAX_LAPC = 1 << 20
_RECORD = struct.Struct("<4sI")
_RUN = struct.Struct("<QI")
_INDEX = struct.Struct("<I")
PAGES, VCPU, LAPC, DONE = b"PAGE", b"VCPU", b"LAPC", b"DONE"
RUNNING = b"RUNNING\n"
MAX_ANSWER = 512


class StreamError(Exception):
    """The stream is broken, cut short or not what it should be (str(): one line)."""


class StreamWriter:
    """The source's end: records onto a connected socket, hashed as they go."""

    def __init__(self, sock: socket.socket, rate: float = 0.0) -> None:
        self.sock = sock
        self.rate = rate  # bytes per second at most (0: as fast as it goes)
        self._hash = hashlib.sha256()
        self.bytes = 0
        self.pages = 0
        self._t0 = time.monotonic()

    def _send(self, *parts: bytes | memoryview) -> None:
        for p in parts:
            self._hash.update(p)
        try:
            for p in parts:
                self.sock.sendall(p)
        except OSError as exc:
            raise StreamError(f"connection lost ({exc.strerror or exc})") from None
        self.bytes += sum(len(p) for p in parts)
        if self.rate > 0:
            ahead = self.bytes / self.rate - (time.monotonic() - self._t0)
            if ahead > 0:
                time.sleep(ahead)

    def pages_from(self, gpa: int, view: memoryview) -> None:
        """The pages of `view` (whole pages, mapped at guest-physical `gpa`), in records of at most
        MAX_RECORD_PAGES."""
        n = len(view) // PAGE
        for first in range(0, n, MAX_RECORD_PAGES):
            count = min(MAX_RECORD_PAGES, n - first)
            # a copy: the guest may be writing these pages, and what is hashed must be what is sent (a
            # page written meanwhile is in the dirty log: it goes again next round)
            chunk = bytes(view[first * PAGE:(first + count) * PAGE])
            self._send(_RECORD.pack(PAGES, _RUN.size + len(chunk)) + _RUN.pack(gpa + first * PAGE, count),
                       chunk)
            self.pages += count

    def vcpu(self, index: int, state: bytes) -> None:
        self._send(_RECORD.pack(VCPU, _INDEX.size + len(state)) + _INDEX.pack(index), state)

    def vcpu_section(self, payload: bytes) -> None:
        """A VCPU record whose body is a save file's VCPU section payload (index u32 | state)."""
        self._send(_RECORD.pack(VCPU, len(payload)) + payload)

    def lapc(self, section: dict[str, Any]) -> None:
        body = json.dumps(section, separators=(",", ":")).encode()
        self._send(_RECORD.pack(LAPC, len(body)) + body)

    def done(self, stats: dict[str, Any]) -> None:
        body = json.dumps(stats, separators=(",", ":")).encode()
        self._send(_RECORD.pack(DONE, len(body) + 32) + body)
        self._send(self._hash.digest())

    def answer(self, timeout: float) -> str:
        """The destination's one-line answer: "" for RUNNING, else why not (StreamError if none came)."""
        self.sock.settimeout(timeout)
        line = b""
        try:
            while not line.endswith(b"\n") and len(line) < MAX_ANSWER:
                got = self.sock.recv(MAX_ANSWER - len(line))
                if not got:
                    break
                line += got
        except OSError as exc:
            raise StreamError(f"no answer from the destination ({exc.strerror or 'timed out'})") from None
        if line == RUNNING:
            return ""
        if line.startswith(b"FAILED "):
            return line[7:].decode("utf-8", "replace").strip()[:200] or "failed"
        raise StreamError("the destination hung up before its domain ran")


class StreamReader:
    """The destination's end. `place(gpa, nbytes)` returns the writable memoryview the run must land in,
    or None if it is not the domain's memory; `abort()` says to give up (checked while waiting)."""

    def __init__(self, sock: socket.socket, place: Callable[[int, int], memoryview | None],
                 abort: Callable[[], bool], idle_timeout: float = 60.0) -> None:
        self.sock = sock
        self.place = place
        self.abort = abort
        self.idle_timeout = idle_timeout
        self._hash = hashlib.sha256()
        self.pages = 0
        sock.settimeout(0.5)

    def _fill(self, view: memoryview, hashed: bool = True, patient: bool = False) -> None:
        """Receive exactly len(view) bytes. `patient`: between records, where the source may be quiet
        for long (its guest suspending), only an abort ends the wait, not the idle timeout."""
        got, idle_since = 0, time.monotonic()
        while got < len(view):
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                if self.abort():
                    raise StreamError("migration abandoned") from None
                if not patient and time.monotonic() - idle_since > self.idle_timeout:
                    raise StreamError(f"the source sent nothing for {self.idle_timeout:.0f} s") from None
                continue
            except OSError as exc:
                raise StreamError(f"connection lost ({exc.strerror or exc})") from None
            if n == 0:
                raise StreamError("the source hung up mid-stream")
            got += n
            idle_since = time.monotonic()
        if hashed:
            self._hash.update(view)

    def _exact(self, n: int) -> bytes:
        buf = bytearray(n)
        self._fill(memoryview(buf))
        return bytes(buf)

    def receive(self, on_vcpu: Callable[[int, bytes], None],
                on_lapc: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Every record until DONE; memory lands in place, vCPU states go to `on_vcpu`, the LAPC record's
        JSON to `on_lapc` (a stream without one has none; one without `on_lapc` is refused). Returns
        DONE's statistics; StreamError (one line) on anything wrong."""
        lapc_seen = False
        while True:
            head = bytearray(_RECORD.size)
            self._fill(memoryview(head), patient=True)
            tag, length = _RECORD.unpack(head)
            if tag == DONE:
                if not 32 <= length <= MAX_DONE:
                    raise StreamError("corrupt stream (DONE record)")
                body = self._exact(length - 32)
                digest = self._hash.digest()
                sent = bytearray(32)
                self._fill(memoryview(sent), hashed=False)
                if bytes(sent) != digest:
                    raise StreamError("corrupt stream (checksum mismatch)")
                try:
                    stats = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    raise StreamError("corrupt stream (DONE record)") from None
                return stats if isinstance(stats, dict) else {}
            if tag == PAGES:
                if not _RUN.size < length <= _RUN.size + MAX_RECORD_PAGES * PAGE:
                    raise StreamError("corrupt stream (page record length)")
                gpa, count = _RUN.unpack(self._exact(_RUN.size))
                if gpa % PAGE or not 0 < count <= MAX_RECORD_PAGES or length != _RUN.size + count * PAGE:
                    raise StreamError("corrupt stream (page record)")
                target = self.place(gpa, count * PAGE)
                if target is None:
                    raise StreamError(f"corrupt stream (pages at {gpa:#x} are not this domain's memory)")
                self._fill(target)
                self.pages += count
            elif tag == VCPU:
                if not _INDEX.size < length <= MAX_VCPU_STATE:
                    raise StreamError("corrupt stream (vCPU record length)")
                body = self._exact(length)
                on_vcpu(_INDEX.unpack_from(body)[0], body[_INDEX.size:])
            elif tag == LAPC and on_lapc is not None and not lapc_seen:
                if not 0 < length <= MAX_LAPC:
                    raise StreamError("corrupt stream (LAPC record length)")
                lapc_seen = True
                try:
                    section = json.loads(self._exact(length))
                except (ValueError, UnicodeDecodeError):
                    raise StreamError("corrupt stream (LAPC record)") from None
                on_lapc(section)
            else:
                raise StreamError("corrupt stream (unknown or repeated record)")
