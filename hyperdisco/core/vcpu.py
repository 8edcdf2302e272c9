"""One virtual CPU as the core runs it: its timers, its halted/blocked state, interrupt injection, its
start-up (INIT and STARTUP from another vCPU's local APIC) and one scheduling step (`VcpuContext.step`,
always on the vCPU's own thread: the engine's vCPU is only ever touched there; other threads set a
request here and wake it)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from ..engine.base import StopReason, Vcpu
from ..platform.lapic import Lapic
from ..xen import abi
from . import pagewalk, runstate, shared_info
from .memory import VirtualAccess

if TYPE_CHECKING:
    from .domain import Domain

SLICE_NS = 10_000_000
# An event waits but the guest has interrupts off: look again this soon (a guest that keeps interrupts off
# most of the time, e.g. spinning on a lock or in a busy loop, would otherwise see its timer ticks and
# events slip by whole slices: 11 timer interrupts a second instead of 250 were measured, and a blocking
# read of /dev/random took 15-21 s instead of QEMU's 1 s)
DELIVERY_RETRY_NS = 100_000


class VcpuContext:
    """The core's per-vCPU state around an engine vCPU."""

    def __init__(self, dom: Domain, index: int, ev: Vcpu) -> None:
        self.dom = dom
        self.index = index
        self.ev = ev
        self.va = VirtualAccess(dom.memory, ev.translate, self._may_write)
        self.lapic = Lapic(index)
        self.up = index == 0  # runs (Xen: _VPF_down clear); APs come up by INIT + STARTUP
        self.initialised = index == 0  # has a context to run (Xen's is_initialised)
        self.wait_for_sipi = False  # after INIT, until a STARTUP IPI
        self.stopped = False  # halted with interrupts off: only INIT (or NMI) brings it back
        self._startup_lock = threading.Lock()
        self._init_pending = False
        self._sipi_vector: int | None = None
        self.host_tid = 0  # the host thread running this vCPU (its native id), once it runs
        self.vcpu_info_registered = False  # VCPUOP_register_vcpu_info done (Xen allows it once)
        self.in_guest = False  # inside ev.run (a trap handler runs on this thread meanwhile)
        self.timer_ns: int | None = None
        self.restored_timer_ns: int | None = None  # armed when its VIRQ_TIMER is bound (core/vcpu_save.py)
        self.periodic_ns: int | None = None
        self.periodic_next = 0
        self.runstate = runstate.Runstate(
            dom.clock.now_ns(), runstate.RUNNING if index == 0 else runstate.OFFLINE)
        self.halted = False
        self.blocked = False
        self.poll_ports: list[int] | None = None
        self.poll_deadline: int | None = None
        self.cpu_ns = 0  # host CPU time spent running this vCPU
        self.slice_end_ns = 0  # when the slice running now ends (guest clock)
        self.undelivered = False  # an interrupt waits for the guest to enable interrupts

    # -- timers (set from hypercalls on this vCPU's thread) --------------------------------------------
    def set_timer(self, deadline_ns: int | None, own_thread: bool = True) -> None:
        """The single-shot timer; a deadline before the running slice's end ends that slice (when the
        hypercall returns, if set by this vCPU itself), so the timer fires on time, not at the slice's
        end."""
        self.timer_ns = deadline_ns
        if deadline_ns is not None and deadline_ns < self.slice_end_ns:
            if own_thread:
                self.ev.request_stop()
            else:
                self.ev.kick()

    # -- start-up (from any thread: the vCPU's own acts on it in step) ----------------------------------
    def wake(self) -> None:
        if self.dom.scheduler is not None:
            self.dom.scheduler.wake(self)

    def request_init(self) -> None:
        """An INIT IPI: the vCPU stops and waits for a STARTUP IPI (SDM vol. 3, 8.4.3 / 10.6.1)."""
        with self._startup_lock:
            self._init_pending = True
            self._sipi_vector = None
        self.wake()

    def request_sipi(self, vector: int) -> None:
        """A STARTUP IPI: taken only by a vCPU waiting for one after INIT (a CPU that is running ignores
        it, which is why Linux may send two)."""
        with self._startup_lock:
            if not (self._init_pending or self.wait_for_sipi):
                return
            self._sipi_vector = vector
        self.wake()

    def _startup(self) -> None:
        """Own thread: act on INIT and STARTUP requests."""
        with self._startup_lock:  # wait_for_sipi changes under the lock: a STARTUP is never lost between
            init, vector = self._init_pending, self._sipi_vector
            self._init_pending, self._sipi_vector = False, None
            if init:
                self.up = self.initialised = False
                self.wait_for_sipi = True
        if init:
            self.halted = self.blocked = self.stopped = False
            self.timer_ns = self.periodic_ns = self.poll_deadline = None
            self.poll_ports = None
            self.lapic.reset()
            self.dom.stats["vcpu.init"] += 1
        if vector is not None and self.wait_for_sipi:
            self.ev.start_at_sipi(vector)
            with self._startup_lock:
                self.wait_for_sipi = False
            self.up = self.initialised = True
            self.dom.stats["vcpu.startup"] += 1

    @property
    def online(self) -> bool:
        """Up and able to run: a vCPU halted with interrupts off (a Linux guest's offline CPU, which never
        calls VCPUOP_down) counts as offline until INIT/STARTUP bring it back."""
        return self.up and not self.stopped

    def has_startup_request(self) -> bool:
        return self._init_pending or self._sipi_vector is not None

    # -- called from trap handlers on this vCPU's thread -----------------------------------------------
    def _may_write(self, va: int) -> bool:
        """Hypercall results go only where the guest's page tables allow a supervisor write."""
        state = self.ev.paging_state()
        if state is None:
            return True
        cr0, cr3, cr4, long_mode = state
        mem = self.dom.memory
        return pagewalk.supervisor_may_write(mem.u64, mem.u32, cr0, cr3, cr4, long_mode, va)

    def block(self, poll: list[int] | None = None, timeout_ns: int | None = None) -> None:
        self.blocked = True
        self.poll_ports = poll
        self.poll_deadline = timeout_ns
        self.ev.request_stop()

    # -- one scheduling step ---------------------------------------------------------------------------
    def describe(self) -> str:
        """One line on where this vCPU is, for a guest that stopped making progress (read racily: the
        vCPU may be running)."""
        dom = self.dom
        state = ("down" if not self.up else "stopped" if self.stopped else "halted" if self.halted
                 else "blocked" if self.blocked else "runnable")
        deadline = self.wake_deadline_ns()
        timer = "no timer" if deadline is None else f"timer in {(deadline - dom.clock.now_ns()) / 1e6:.1f} ms"
        upcall = self._upcall_pending()
        return (f"vcpu{self.index} {state} rip={self.ev.rip:#x} cpl={self.ev.cpl()} "
                f"IF={int(self.ev.interrupts_enabled())} upcall_pending={int(upcall)} {timer}")

    def wake_deadline_ns(self) -> int | None:
        ds = [d for d in (self.timer_ns, self.periodic_ns and self.periodic_next, self.poll_deadline) if d]
        return min(ds) if ds else None

    def _fire_timers(self, now: int) -> None:
        ec = self.dom.evtchn
        if self.timer_ns is not None and now >= self.timer_ns:
            self.timer_ns = None
            self.dom.stats["timer.fired"] += 1
            ec.raise_virq(abi.VIRQ_TIMER, self.index)
        if self.periodic_ns and now >= self.periodic_next:
            self.periodic_next = now + self.periodic_ns
            ec.raise_virq(abi.VIRQ_TIMER, self.index)
        if self.poll_deadline is not None and now >= self.poll_deadline:
            self.poll_deadline = None
            self.blocked = False

    def _upcall_pending(self) -> bool:
        """An event waits for this vCPU and the guest registered a callback vector to receive it."""
        return self.dom.callback_vector is not None and self.dom.evtchn.upcall_pending(self.index)

    def _inject(self) -> bool:
        """Deliver one pending interrupt if the guest can take it; True if something is pending."""
        dom, ev = self.dom, self.ev
        vec = None
        lapic_pending = bool(self.lapic.pending)
        upcall = self._upcall_pending()
        self.undelivered = False
        if not (lapic_pending or upcall):
            return False
        if not ev.interrupts_enabled():
            self.undelivered = True
        else:
            if lapic_pending:
                vec = self.lapic.take_pending()
                dom.stats["inject.lapic"] += 1
            elif upcall:
                shared_info.update_time(dom, self)
                vec = dom.callback_vector
                dom.stats["inject.upcall"] += 1
            failure = ev.inject_interrupt(vec) if vec is not None else None
            if failure is not None:
                dom.crash(f"cannot deliver interrupt vector {vec:#x}: {failure}")
        return True

    def step(self) -> float | None:
        """Run one slice, or decide to wait. Returns None to be run again at once, the monotonic time
        to wake at if the vCPU waits for a timer, or +inf to wait for an event only."""
        dom = self.dom
        if self.has_startup_request():
            self._startup()
        dom.evtchn.deliver_queued()
        if not self.up:
            runstate.transition(self, runstate.OFFLINE)
            return float("inf")  # down: an INIT/STARTUP or VCPUOP_up wakes it
        now = dom.clock.now_ns()
        self._fire_timers(now)
        if self.stopped:  # HLT with interrupts off: no interrupt can end it
            runstate.transition(self, runstate.OFFLINE)
            return float("inf")
        pending = self._inject()
        if self.blocked and self.poll_ports is not None and dom.evtchn.any_pending(self.poll_ports):
            self.blocked = False
        elif self.blocked and pending:
            self.blocked = False
        if self.halted and pending:
            self.halted = False
        if self.blocked or self.halted:
            runstate.transition(self, runstate.BLOCKED)
            d = self.wake_deadline_ns()
            return float("inf") if d is None else time.monotonic() + max(0, d - now) / 1e9
        deadline = self.wake_deadline_ns()
        slice_ns = SLICE_NS if deadline is None else max(50_000, min(SLICE_NS, deadline - now))
        if self.undelivered:
            slice_ns = min(slice_ns, DELIVERY_RETRY_NS)
        self.slice_end_ns = now + slice_ns
        runstate.transition(self, runstate.RUNNING)  # what it waited for a core since is published now
        t0 = time.thread_time_ns()  # CPU time of this worker thread: what running the vCPU cost the host
        self.in_guest = True
        try:
            res = self.ev.run(slice_ns)
        finally:
            self.in_guest = False
        self.cpu_ns += time.thread_time_ns() - t0
        if res.reason is StopReason.FATAL:
            dom.crash(res.detail)
        elif res.reason is StopReason.HALT:
            if not self.ev.interrupts_enabled() and not dom.finished:
                # a CPU taken offline (play_dead) or stopped at shutdown (stop_this_cpu) halts like this
                # for good; when no other vCPU runs, the guest is hung
                self.stopped = True
                if not any(c.up and not c.stopped for c in dom.vcpus):
                    dom.crash(f"vCPU halted with interrupts disabled at rip {self.ev.rip:#x}")
            self.halted = True
            dom.stats["halt"] += 1
        return None
