"""The scheduler's gate: a worker asks it before running a slice of a vCPU and tells it after.

The default gate lets every vCPU run at once (the host kernel shares the cores between domain processes,
as before). A domain process under domain 0's BVT arbiter uses vmm/sched_gate.py instead: a vCPU runs
only while it holds a core granted by domain 0 (dom0/arbiter.py, core/bvt.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .vcpu import VcpuContext


class Gate:
    def acquire(self, ctx: VcpuContext, sched: Scheduler) -> bool:
        """Called on the worker before `ctx`'s slice; may wait (inside sched.outside_guest). False: do
        not run it now (its domain was paused or finished meanwhile: the scheduler parks it)."""
        return True

    def release(self, ctx: VcpuContext, wake_at: float | None) -> None:
        """After the slice: `wake_at` as VcpuContext.step returned it (None: runnable again at once).
        Never raises."""
