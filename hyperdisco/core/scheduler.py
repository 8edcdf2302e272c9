"""The vCPU scheduler: one host thread per vCPU.

Each vCPU runs its slices on a thread of its own, so a domain with several vCPUs runs them in parallel on
the host's cores (the host's scheduler shares the cores between threads and processes), and the engine's
vCPU is only ever touched from that thread: other threads set requests on the vCPU (core/vcpu.py) and
wake it. A halted or blocked vCPU is parked on its own condition variable (it costs no host CPU) until
its timer is due or something wakes it; a woken vCPU that is running a slice is kicked out of guest code.
The per-domain controls (hold/release for a domain whose memory is being remapped, pause, remove) act
on all the domain's vCPU threads at once. Before each slice a vCPU's thread asks the gate (core/gate.py:
open by default; under domain 0's BVT arbiter, vmm/sched_gate.py, it waits for a core to be granted).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .gate import Gate

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext


class Scheduler:
    def __init__(self, workers: int | None = None, gate: Gate | None = None) -> None:
        """`workers` is accepted for compatibility and ignored: there is one thread per vCPU."""
        self.gate = gate if gate is not None else Gate()  # asked before each slice (vmm/sched_gate.py)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # hold(), remove(): a vCPU left guest code
        self._wakeup: dict[VcpuContext, threading.Condition] = {}
        self._parked: dict[VcpuContext, float] = {}  # not runnable until this monotonic time (inf: woken)
        self._running: set[VcpuContext] = set()
        self._woken: set[VcpuContext] = set()
        self._held: set[Domain] = set()  # domains whose vCPUs must stay out of guest code (hold)
        self._outside: set[VcpuContext] = set()  # vCPUs waiting inside a hypercall (outside_guest)
        self._removed: set[Domain] = set()
        self._threads: dict[VcpuContext, threading.Thread] = {}
        self._stopping = False

    def add(self, dom: Domain) -> None:
        dom.scheduler = self
        with self._lock:
            for ctx in dom.vcpus:
                self._wakeup[ctx] = threading.Condition(self._lock)
                if not ctx.up:
                    self._parked[ctx] = float("inf")
                t = threading.Thread(target=self._vcpu_thread, args=(ctx,),
                                     name=f"hd-d{dom.domid}-vcpu{ctx.index}", daemon=True)
                self._threads[ctx] = t
        for t in [self._threads[c] for c in dom.vcpus]:
            t.start()

    def remove(self, dom: Domain) -> None:
        with self._lock:
            self._removed.add(dom)
            for ctx in dom.vcpus:
                self._notify(ctx)
                if ctx in self._running:
                    ctx.ev.kick()
            while any(ctx in self._running for ctx in dom.vcpus):
                self._cond.wait(0.05)

    def running(self) -> set[VcpuContext]:
        with self._lock:
            return set(self._running)

    def wake(self, ctx: VcpuContext) -> None:
        with self._lock:
            self._woken.add(ctx)
            self._notify(ctx)
            if ctx in self._running:
                ctx.ev.kick()  # end its slice now: the event is delivered as soon as it can be

    def hold(self, dom: Domain, me: VcpuContext | None = None) -> None:
        """Keep `dom`'s vCPUs out of guest code until release(dom). Returns once none runs a slice, but
        `me` (the caller's own vCPU, inside a hypercall) and vCPUs that wait inside one (outside_guest)."""
        with self._lock:
            self._held.add(dom)
            while True:
                busy = [c for c in dom.vcpus if c in self._running and c is not me and c not in self._outside]
                if not busy:
                    return
                for c in busy:
                    c.ev.kick()  # again each time: a stop that lands before the slice began is lost
                self._cond.wait(0.001)

    def release(self, dom: Domain) -> None:
        with self._lock:
            self._held.discard(dom)
            self._cond.notify_all()
            for c in dom.vcpus:
                self._notify(c)

    @contextmanager
    def outside_guest(self, ctx: VcpuContext | None) -> Iterator[None]:
        """The vCPU `ctx` waits inside a hypercall (for another process, for a lock): it counts as out of
        guest code for hold(), and returns to it only once its domain is not held."""
        if ctx is None:
            yield
            return
        with self._lock:
            self._outside.add(ctx)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._lock:
                self._outside.discard(ctx)
                while ctx.dom in self._held:
                    self._cond.wait(0.05)

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            self._cond.notify_all()
            for c in self._wakeup:
                self._notify(c)

    def thread_ids(self, dom: Domain) -> list[int]:
        """The host thread (native id) of each of `dom`'s vCPUs, 0 before it started."""
        return [ctx.host_tid for ctx in dom.vcpus]

    # -- the vCPU threads -------------------------------------------------------------------------------
    def _notify(self, ctx: VcpuContext) -> None:
        cv = self._wakeup.get(ctx)
        if cv is not None:
            cv.notify()

    def _gone(self, ctx: VcpuContext) -> bool:
        return self._stopping or ctx.dom in self._removed or ctx.dom.finished

    def _wait_runnable(self, ctx: VcpuContext) -> bool:
        """With the lock held: wait until `ctx` may run a slice; False once it never will again."""
        cv = self._wakeup[ctx]
        dom = ctx.dom
        while True:
            if self._gone(ctx):
                return False
            if dom in self._held or dom.paused:
                cv.wait()
                continue
            if ctx in self._woken:
                self._woken.discard(ctx)
                self._parked.pop(ctx, None)
                return True
            until = self._parked.get(ctx)
            now = time.monotonic()
            if until is None or until <= now:
                self._parked.pop(ctx, None)
                return True
            cv.wait(None if until == float("inf") else until - now)

    def _vcpu_thread(self, ctx: VcpuContext) -> None:
        ctx.host_tid = threading.get_native_id()
        while True:
            with self._lock:
                if not self._wait_runnable(ctx):
                    self._cond.notify_all()
                    return
                self._running.add(ctx)
            # a vCPU that is down or stopped runs no guest code in this step: no core to ask for
            gated = ctx.online or ctx.has_startup_request()
            try:
                wake_at = ctx.step() if not gated or self.gate.acquire(ctx, self) else None
            except Exception as exc:  # one domain's failure must not take the others down
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                ctx.dom.crash(f"internal error: {type(exc).__name__}: {exc} at {tb.filename}:{tb.lineno}")
                wake_at = None
            if gated:
                self.gate.release(ctx, wake_at)
            with self._lock:
                self._running.discard(ctx)
                if wake_at is not None and ctx not in self._woken:
                    self._parked[ctx] = wake_at
                self._cond.notify_all()
