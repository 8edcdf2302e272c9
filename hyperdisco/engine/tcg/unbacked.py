"""Guest-physical memory with nothing behind it, on the tcg engine.

unicorn ends emulation with UC_ERR_READ_UNMAPPED / UC_ERR_WRITE_UNMAPPED when the guest reads or writes a
physical address that is neither RAM nor an MMIO range (before this, that ended the whole domain). The
engine interface says instead that such an access goes to the trap handler's unbacked_read /
unbacked_write and the guest carries on (engine/base.py). Here: on the first miss in a stretch of
unmapped address space, an MMIO "window" is mapped over the free gap around the address (at most one
1 GiB-aligned gigabyte, so a guest probing everywhere makes at most a few thousand windows, never one per
page), whose callbacks are those handlers; unicorn then retries the access through it. A RAM or MMIO
mapping made later over part of a window (a grant mapped into the hole above RAM, a populated page)
first removes the window; what is left unbacked gets a new one on its next miss.

The hook covers the addresses above the RAM mapped at 0 (a memory hook over RAM would slow every write
to a page code was translated from); a hole made later inside that RAM is not covered.

Instruction fetches are not redirected: a fetch from unmapped memory still stops the vCPU as fatal, as
Xen crashes an HVM domain that executes from a gfn with no memory; so does one from inside a window
(unicorn maps MMIO read/write only: UC_ERR_FETCH_PROT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WINDOW = 1 << 30


def free_window(mapped: list[tuple[int, int]], addr: int, window: int = WINDOW) -> tuple[int, int]:
    """(start, size) of the window to map for an unbacked access at `addr`: the `window`-aligned block
    around it, cut to the free gap between the mapped ranges ((begin, end) inclusive, as unicorn's
    mem_regions lists them) that holds `addr`; page aligned."""
    lo = addr & ~(window - 1)
    hi = lo + window
    for begin, end in mapped:
        if begin <= addr <= end:
            raise ValueError(f"address {addr:#x} is mapped")
        if end < addr:
            lo = max(lo, end + 1)
        elif begin > addr:
            hi = min(hi, begin)
    return lo, hi - lo


class UnbackedWindows:
    """The windows of one vCPU's unicorn instance. `read`/`write` are unicorn MMIO callbacks (user data:
    the window's base); `unmap(gpa, size)` removes a mapping keeping the vCPU's exception state."""

    def __init__(self, uc: Any, read: Callable[..., int], write: Callable[..., None],
                 unmap: Callable[[int, int], None]) -> None:
        self.uc = uc
        self.read = read
        self.write = write
        self.unmap = unmap
        self.windows: dict[int, int] = {}  # start -> size

    def on_unmapped(self, uc: Any, access: int, addr: int, size: int, value: int, _ud: object) -> bool:
        """unicorn's UC_HOOK_MEM_READ_UNMAPPED | WRITE_UNMAPPED hook: map a window, let it retry."""
        mapped = [(b, e) for b, e, _p in uc.mem_regions()]
        start, length = free_window(mapped, addr & ~0xFFF)
        uc.mmio_map(start, length, self.read, start, self.write, start)
        self.windows[start] = length
        return True

    def clear(self, gpa: int, size: int) -> None:
        """Remove the windows that overlap [gpa, gpa+size), before something real is mapped there."""
        for start, length in list(self.windows.items()):
            if start < gpa + size and gpa < start + length:
                del self.windows[start]
                self.unmap(start, length)
