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
"""

from __future__ import annotations

import threading
from collections.abc import Callable

KICK_RETRY_S = 0.001  # a kick sent while a vCPU is on its way into uc_emu_start is lost: send it again


class VcpuGroup:
    """The vCPUs of one domain (engine/tcg)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._members: list[Callable[[], None]] = []  # each vCPU's kick
        self._running = 0  # vCPUs inside uc_emu_start
        self._exclusive = False  # a vCPU is running a stop-the-world step (or waiting to)
        self.steps = 0  # stop-the-world steps taken

    def join(self, kick: Callable[[], None]) -> None:
        with self._cond:
            self._members.append(kick)

    def leave_group(self, kick: Callable[[], None]) -> None:
        with self._cond:
            if kick in self._members:
                self._members.remove(kick)

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
