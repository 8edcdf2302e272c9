"""What the tcg vCPUs of one domain share when they run at the same time on several host threads.

- **Parallel translation.** A group of more than one vCPU translates with CF_PARALLEL (unicorn_patches.py):
  locked instructions and `xchg` become host atomics on the shared guest RAM. Each vCPU applies a change of
  the setting itself, at the start of its next run (its old blocks are flushed: they stay chained to each
  other and would keep running non-atomic code).
- **Stop-the-world steps.** A locked access that is misaligned or on MMIO cannot be a host atomic (QEMU's
  EXCP_ATOMIC); the patched unicorn returns to the engine, which takes the group exclusively (every other
  vCPU is kicked out of and kept out of unicorn) and runs that one instruction non-parallel, as QEMU's
  cpu_exec_step_atomic() does. Every vCPU holds the group shared while inside uc_emu_start.

One-vCPU groups never take the lock (nothing to exclude; EXCP_ATOMIC needs CF_PARALLEL).

- **Coherent translated code.** The group owns fastpath.c's code domain (`hd_dom_*`): which guest-physical
  pages some vCPU translated code from, shared with the patched unicorn instances, and the queues through
  which a store by one vCPU or a write by the host (`host_wrote`) makes the others drop that code before
  they run on or take an interrupt. This also holds for one vCPU and the host's writes.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from ...errors import EngineError

KICK_RETRY_S = 0.001  # a kick sent while a vCPU is on its way into uc_emu_start is lost: send it again
CODE_MAP_PAGES = 1 << 24  # guest-physical pages tracked (64 GiB; the map is reserved, touched on use)


class VcpuGroup:
    """The vCPUs of one domain (engine/tcg)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._members: list[Callable[[], None]] = []  # each vCPU's kick
        self._running = 0  # vCPUs inside uc_emu_start
        self._exclusive = False  # a vCPU is running a stop-the-world step (or waiting to)
        self.steps = 0  # stop-the-world steps taken
        self._lib: Any = None  # fastpath.c, once a vCPU joined
        self._dom: int | None = None  # its hd_domain
        self._map: ctypes.Array[ctypes.c_uint8] | None = None
        self._dom_lock = threading.Lock()  # host writes (any thread) against the last vCPU freeing the map

    def join(self, kick: Callable[[], None], lib: Any, hv: int) -> None:
        """Add a vCPU: its kick, and its struct hd_vcpu (fastpath.c) to the code domain."""
        with self._cond:
            if self._dom is None:
                dom = lib.hd_dom_new(CODE_MAP_PAGES)
                if not dom:
                    raise EngineError("hyperdisco: cannot reserve the tcg engine's code map")
                self._lib, self._dom = lib, int(dom)
                self._map = (ctypes.c_uint8 * CODE_MAP_PAGES).from_address(int(lib.hd_dom_map(dom)))
            if lib.hd_dom_join(self._dom, hv) != 0:
                raise EngineError("hyperdisco: too many vCPUs in one domain for the tcg engine")
            self._members.append(kick)

    def leave_group(self, kick: Callable[[], None], lib: Any, hv: int) -> None:
        """Remove a vCPU (before its unicorn instance is freed); the last one frees the code domain."""
        with self._cond:
            if kick not in self._members:
                return
            self._members.remove(kick)
            if self._dom is not None:
                lib.hd_dom_leave(self._dom, hv)
                if not self._members:
                    with self._dom_lock:
                        self._map = None
                        lib.hd_dom_free(self._dom)
                        self._dom = None

    def host_wrote(self, gpa: int, size: int) -> None:
        """The host wrote guest-physical [gpa, gpa+size): vCPUs holding code from it drop it (any thread)."""
        if size <= 0 or gpa < 0:
            return
        first, last = gpa >> 12, min((gpa + size - 1) >> 12, CODE_MAP_PAGES - 1)
        with self._dom_lock:
            m = self._map
            if m is None:
                return
            for p in range(first, last + 1):
                if m[p]:  # only pages with translated code cost a call into C
                    self._lib.hd_dom_host_written(self._dom, gpa, size)
                    return

    @property
    def parallel(self) -> bool:
        """True when the domain has several vCPUs: they translate locked instructions as host atomics."""
        return len(self._members) > 1

    def enter(self) -> None:
        """Before uc_emu_start: wait while another vCPU holds the group exclusively."""
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._running += 1

    def exit(self) -> None:
        """After uc_emu_start."""
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def exclusive(self, me: Callable[[], None], step: Callable[[], None]) -> None:
        """Run `step` while no other vCPU of the group is inside unicorn. The caller is not inside it
        (it has called exit())."""
        with self._cond:
            while self._exclusive:  # another vCPU's step first
                self._cond.wait()
            self._exclusive = True
            try:
                while self._running:
                    for kick in self._members:
                        if kick is not me:
                            kick()
                    self._cond.wait(KICK_RETRY_S)
                self.steps += 1
                step()
            finally:
                self._exclusive = False
                self._cond.notify_all()
