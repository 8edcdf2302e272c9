"""A vCPU's runstate (xen/include/public/vcpu.h, struct vcpu_runstate_info): how much Xen system time it
spent running, runnable (wanting a core it did not have), blocked and offline, kept up to date as it runs
and published where the guest registered it (VCPUOP_register_runstate_memory_area). Linux reads
time[runnable] + time[offline] as its steal clock (arch/x86/xen/time.c xen_steal_clock), which
kernel/sched/cputime.c accounts as steal in /proc/stat and `top`.

Runnable time is measured, not guessed: while a vCPU is not blocked or offline its host thread wants a
core all the time, so what that thread did not get of the elapsed time (wall clock minus the thread's CPU
time) was stolen: by the host kernel giving the core to another process, by the BVT gate withholding a core
(vmm/sched_gate.py: the thread sleeps in acquire), by anything else in the way. The published `state` is
running throughout (its runnable share is settled at each update); blocked and offline are exact.

Updates happen on the vCPU's own thread only (so the accumulators need no lock): when it starts a slice,
when it halts or blocks, when it is woken, when its domain is paused or it goes down. The area is written
as Xen's update_runstate_area does: with VMASST_TYPE_runstate_update_flag enabled (vm_assist), the top bit
of state_entry_time (XEN_RUNSTATE_UPDATE) is set before the rewrite and cleared after, so that another
vCPU reading it (Linux's paravirt_steal_rq_enabled path) retries instead of reading a torn copy. Its layout
follows the domain's latched shared_info layout (64- or 32-bit: has_32bit_shinfo in Xen).

One difference from Xen: the guest-virtual address is translated to guest-physical pages when it is
registered (Xen translates it at every update through the vCPU's current page tables, which is why it
added VCPUOP_register_runstate_phys_area: under KPTI the user page tables do not map the area). Linux's
area is a per-CPU variable that never moves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..xen import abi
from .memory import PAGE, GuestFault

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

RUNNING, RUNNABLE, BLOCKED, OFFLINE = (abi.RUNSTATE_running, abi.RUNSTATE_runnable, abi.RUNSTATE_blocked,
                                       abi.RUNSTATE_offline)
NAMES = ("running", "runnable", "blocked", "offline")


class Runstate:
    """One vCPU's state and time in each state (ns of the domain's Xen system time)."""

    def __init__(self, now_ns: int, state: int = OFFLINE,
                 cpu_ns: Callable[[], int] = time.thread_time_ns) -> None:
        self.state = state
        self.entry_ns = now_ns
        self.times = [0, 0, 0, 0]
        self._cpu = cpu_ns
        self._entry_cpu: int | None = None  # the vCPU thread's CPU time at the last settle (None: unknown)
        self._published = -1  # steal (runnable + offline) last written to the area
        self.area: list[tuple[int, int]] | None = None  # (gpa, bytes) pieces of the registered area

    def settle(self, now_ns: int) -> None:
        """Account the time since the last settle to the current state; for running, the part the host
        thread did not get of it is runnable (stolen)."""
        elapsed = max(0, now_ns - self.entry_ns)
        cpu = self._cpu()
        if self.state == RUNNING:
            ran = elapsed if self._entry_cpu is None else min(elapsed, max(0, cpu - self._entry_cpu))
            self.times[RUNNING] += ran
            self.times[RUNNABLE] += elapsed - ran
        else:
            self.times[self.state] += elapsed
        self.entry_ns = max(self.entry_ns, now_ns)
        self._entry_cpu = cpu

    def enter(self, state: int, now_ns: int) -> None:
        self.settle(now_ns)
        self.state = state

    def steal_ns(self) -> int:
        return self.times[RUNNABLE] + self.times[OFFLINE]

    def snapshot(self) -> tuple[int, int, int, int, int, int]:
        """(state, state_entry_time, time[0..3]) as the guest sees it."""
        t = self.times
        return self.state, self.entry_ns, t[0], t[1], t[2], t[3]


def transition(ctx: VcpuContext, state: int) -> None:
    """On the vCPU's own thread: enter `state` (or settle, if it is already there) and publish, unless
    nothing the guest reads changed (running on after running, nothing stolen meanwhile: the area keeps
    an older, consistent snapshot; this is the per-slice case)."""
    rs = ctx.runstate
    old = rs.state
    rs.enter(state, ctx.dom.clock.now_ns())
    if rs.area is not None and (old != state or rs.steal_ns() != rs._published):
        publish(ctx.dom, rs)


def publish(dom: Domain, rs: Runstate) -> None:
    """Write the runstate into the registered area (nothing if none); an area the guest gave away since
    (ballooned out) is dropped, as Xen's copy_to_guest failing silently."""
    if rs.area is None:
        return
    compat = dom.evtchn.compat_shinfo
    fmt = abi.COMPAT_RUNSTATE_INFO if compat else abi.RUNSTATE_INFO
    top = (abi.COMPAT_RUNSTATE_ENTRY_TIME if compat else abi.RUNSTATE_ENTRY_TIME) + 7
    state, entry, *times = rs.snapshot()
    rs._published = rs.steal_ns()
    flag = bool(dom.vm_assist & (1 << abi.VMASST_TYPE_runstate_update_flag))
    try:
        if flag:  # Xen: the byte holding XEN_RUNSTATE_UPDATE first, then the whole area, then clear it
            _write(dom, rs.area, top, bytes([(entry >> 56) | 0x80]))
            _write(dom, rs.area, 0, fmt.pack(state, entry | abi.XEN_RUNSTATE_UPDATE, *times))
            _write(dom, rs.area, top, bytes([entry >> 56]))
        else:
            _write(dom, rs.area, 0, fmt.pack(state, entry, *times))
    except GuestFault:
        rs.area = None


def _write(dom: Domain, area: list[tuple[int, int]], offset: int, data: bytes) -> None:
    """`data` at `offset` of the area, across its pieces."""
    at = 0
    for gpa, n in area:
        lo, hi = max(offset, at), min(offset + len(data), at + n)
        if lo < hi:
            dom.memory.write(gpa + lo - at, data[lo - offset:hi - offset])
        at += n


def register(ctx: VcpuContext, target: VcpuContext, addr: int) -> int:
    """VCPUOP_register_runstate_memory_area of `target`, the area at guest-virtual `addr` as the calling
    vCPU's page tables map it; 0 unregisters. Written at once, as Xen does. An area that is not writable
    RAM is accepted and never written: Xen's HVM check (guest_handle_okay under paging_mode_external)
    accepts any address and ignores the copies that fail (xen/common/domain.c do_vcpu_op); unlike Xen,
    hyperdisco translates the address once, so a later mapping there does not start the updates."""
    rs = target.runstate
    if addr == 0:
        rs.area = None
        return 0
    dom = ctx.dom
    size = (abi.COMPAT_RUNSTATE_INFO if dom.evtchn.compat_shinfo else abi.RUNSTATE_INFO).size
    pieces: list[tuple[int, int]] = []
    va, left = addr, size
    while left > 0:
        gpa = ctx.ev.translate(va)
        n = min(left, PAGE - (va & (PAGE - 1)))
        may_write = ctx.va.may_write
        if gpa is None or not dom.is_ram(gpa) or (may_write is not None and not may_write(va)):
            rs.area = None
            return 0
        pieces.append((gpa, n))
        va, left = va + n, left - n
    rs.area = pieces
    if target is ctx:
        rs.settle(dom.clock.now_ns())  # the caller's own: settled on its thread
    publish(dom, rs)
    return 0


def get_info(target: VcpuContext) -> tuple[int, int, int, int, int, int]:
    """VCPUOP_get_runstate_info: the state and times as last settled, plus the current stint (read
    racily for another vCPU, as Xen's vcpu_runstate_get without the lock would be: a snapshot)."""
    state, entry, *times = target.runstate.snapshot()
    now = target.dom.clock.now_ns()
    times[state] += max(0, now - entry)
    return state, now, times[0], times[1], times[2], times[3]


def vm_assist(dom: Domain, cmd: int, kind: int) -> int:
    """HYPERVISOR_vm_assist as xen/common/kernel.c's vm_assist with HVM's mask: only
    runstate_update_flag exists for an HVM domain; any other type -EINVAL, any other command -ENOSYS."""
    if kind != abi.VMASST_TYPE_runstate_update_flag:
        return -abi.EINVAL
    if cmd == abi.VMASST_CMD_enable:
        dom.vm_assist |= 1 << kind
        return 0
    if cmd == abi.VMASST_CMD_disable:
        dom.vm_assist &= ~(1 << kind)
        return 0
    return -abi.ENOSYS
