"""The PV console backend: the xencons_interface ring (xen/include/public/io/console.h).

The ring page holds `in[1024]`, `out[2048]`, then in_cons, in_prod, out_cons, out_prod (u32 each): the
layout is hyperdisco/xen/io/console.py. Indices come from the guest and are never trusted: they are masked
into the ring, and a producer that claims more than a ring's worth of data is clamped to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..core.memory import GuestFault, PhysicalPages
from ..xen.io.console import IDX_OFF, IN_SIZE, OUT_SIZE


class ConsoleBackend:
    MAX_PENDING_INPUT = 1 << 20  # input waiting for the guest to read it; more is refused

    def __init__(self, mem: PhysicalPages, ring_gpa: int, sink: Callable[[bytes], None],
                 notify: Callable[[], None]) -> None:
        self.mem = mem
        self.ring = ring_gpa
        self.sink = sink
        self.notify = notify  # signal the guest's console event channel
        self._pending_input = bytearray()
        self._lock = threading.Lock()
        self.bytes_out = 0
        self.bytes_in = 0

    def kick(self) -> None:
        """The guest notified us: drain its output, and move any input still waiting."""
        try:
            self._drain()
        except GuestFault:
            pass  # the domain is gone

    def _drain(self) -> None:
        # each index read in one access (never struct: it reads byte by byte, and the guest writes
        # out_prod concurrently); the data only after the producer index
        out_cons = self.mem.u32(self.ring + IDX_OFF + 8)
        out_prod = self.mem.u32(self.ring + IDX_OFF + 12)
        avail = (out_prod - out_cons) & 0xFFFFFFFF
        if avail > OUT_SIZE:  # a bogus producer index: take one ring's worth, no more
            avail = OUT_SIZE
        if avail:
            start = out_cons % OUT_SIZE
            first = min(avail, OUT_SIZE - start)
            data = self.mem.read(self.ring + IN_SIZE + start, first)
            if avail > first:
                data += self.mem.read(self.ring + IN_SIZE, avail - first)
            self.mem.set_u32(self.ring + IDX_OFF + 8, (out_cons + avail) & 0xFFFFFFFF)
            self.bytes_out += avail
            self.sink(data)
            self._signal()
        self._push_input()

    def input(self, data: bytes) -> bool:
        """Any thread: keyboard input for the guest, delivered as the guest makes room in its ring
        (dropped once the domain is gone). False if the guest has left too much input unread."""
        with self._lock:
            if len(self._pending_input) + len(data) > self.MAX_PENDING_INPUT:
                return False
            self._pending_input += data
        try:
            self._push_input()
        except GuestFault:
            pass
        return True

    def pending_input(self) -> int:
        with self._lock:
            return len(self._pending_input)

    def _push_input(self) -> None:
        with self._lock:
            if not self._pending_input:
                return
            in_cons = self.mem.u32(self.ring + IDX_OFF)
            in_prod = self.mem.u32(self.ring + IDX_OFF + 4)
            used = (in_prod - in_cons) & 0xFFFFFFFF
            space = IN_SIZE - used if used <= IN_SIZE else 0
            n = min(space, len(self._pending_input))
            if n == 0:
                return
            chunk = bytes(self._pending_input[:n])
            del self._pending_input[:n]
            start = in_prod % IN_SIZE
            first = min(n, IN_SIZE - start)
            self.mem.write(self.ring + start, chunk[:first])
            if n > first:
                self.mem.write(self.ring, chunk[first:])
            self.mem.set_u32(self.ring + IDX_OFF + 4, (in_prod + n) & 0xFFFFFFFF)
            self.bytes_in += n
        self._signal()

    def _signal(self) -> None:
        self.notify()


class ConsoleBuffer:
    """Where a domain's console output goes: a bounded history (what `console` shows on attach) and the
    listeners attached right now (terminals, exec sessions, logs)."""

    HISTORY = 64 * 1024

    def __init__(self) -> None:
        self._history = bytearray()
        self._listeners: list[Callable[[bytes], None]] = []
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._history += data
            if len(self._history) > self.HISTORY:
                del self._history[:len(self._history) - self.HISTORY]
            listeners = list(self._listeners)
        for fn in listeners:
            fn(data)

    def attach(self, fn: Callable[[bytes], None], replay: bool = False) -> None:
        with self._lock:
            if replay and self._history:
                fn(bytes(self._history))
            self._listeners.append(fn)

    def detach(self, fn: Callable[[bytes], None]) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def history(self) -> bytes:
        with self._lock:
            return bytes(self._history)
