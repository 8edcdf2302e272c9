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
from .byte_ring import ByteRing, RingIndexError


class ConsoleBackend:
    MAX_PENDING_INPUT = 1 << 20  # input waiting for the guest to read it; more is refused

    def __init__(self, mem: PhysicalPages, ring_gpa: int, sink: Callable[[bytes], None],
                 notify: Callable[[], None]) -> None:
        self.mem = mem
        self.ring = ring_gpa
        self.sink = sink
        self.notify = notify  # signal the guest's console event channel
        idx = ring_gpa + IDX_OFF  # in_cons, in_prod, out_cons, out_prod
        self.out = ByteRing(mem, ring_gpa + IN_SIZE, OUT_SIZE, idx + 8, idx + 12)  # guest -> us
        self.inp = ByteRing(mem, ring_gpa, IN_SIZE, idx, idx + 4)  # us -> guest
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
        data = self.out.take(OUT_SIZE, clamp=True)  # a bogus producer: one ring's worth, no more
        if data:
            self.bytes_out += len(data)
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
            try:
                n = self.inp.put(self._pending_input)
            except RingIndexError:  # a consumer past the producer: wait until the guest sets it right
                n = 0
            if n == 0:
                return
            del self._pending_input[:n]
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
