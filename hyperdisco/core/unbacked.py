"""Guest-physical memory with nothing behind it, as Xen presents it to a PVH guest.

A PVH domU has no device model: an access Xen cannot satisfy from RAM or from one of its own emulated
devices (only the local APIC, for a PVH domU) ends at Xen's null I/O handler, which reads as all ones and
drops writes (xen/arch/x86/hvm/emulate.c: null_read / null_write, used by hvmemul_do_io when no ioreq
server claims the access). The domain continues. So here: every such read returns all ones, every write
is ignored, both are counted (domain stats "unbacked.read" / "unbacked.write"), and the first access to
each page is logged, through a rate limiter (a guest can probe as many pages as it likes); at most
MAX_PAGES pages are remembered as already logged, so the log may repeat a page after that, never grow
without bound. What is there on a real PC (IO-APIC, HPET) is named in the line.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from ..platform.layout import absent_device
from .ratelimit import RateLimiter

MAX_PAGES = 4096


class UnbackedMemory:
    def __init__(self, log: Callable[[str], None], stats: collections.Counter[str]) -> None:
        self._log = log
        self._stats = stats
        self._pages: set[int] = set()
        self._lock = threading.Lock()  # vCPUs of one domain run on several threads
        self.limiter = RateLimiter()

    def read(self, addr: int, size: int, rip: int) -> int:
        self._stats["unbacked.read"] += 1
        self._first(addr, size, rip, "read")
        return (1 << (8 * size)) - 1

    def write(self, addr: int, size: int, value: int, rip: int) -> None:
        self._stats["unbacked.write"] += 1
        self._first(addr, size, rip, "write")

    @property
    def pages(self) -> int:
        """How many distinct pages have been logged."""
        return len(self._pages)

    def _first(self, addr: int, size: int, rip: int, kind: str) -> None:
        page = addr >> 12
        with self._lock:
            if page in self._pages:
                return
            if len(self._pages) >= MAX_PAGES:
                self._pages.clear()
            self._pages.add(page)
        device = absent_device(addr)
        what = f" (where a PC has its {device}: none here, as on Xen PVH)" if device else ""
        self.limiter.log(self._log, "unbacked", f"unbacked memory: {kind} of {size} bytes at {addr:#x}"
                         f"{what}, rip {rip:#x}: reads as all ones, writes ignored")
