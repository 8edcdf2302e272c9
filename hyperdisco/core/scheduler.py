"""The vCPU scheduler: worker threads (one per host core by default) share all vCPUs of all domains.

A vCPU runs one slice at a time on whichever worker takes it from the run queue; a halted or blocked
vCPU is parked (it costs no host CPU) until its timer is due or something wakes it. The run queue is
round-robin here; the policy lives in `_pick` so that borrowed virtual time can replace it. A vCPU runs
on one worker at a time, so a domain's guest memory is never raced by two of its own vCPUs on tcg.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .gate import Gate

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext


class Scheduler:
    def __init__(self, workers: int | None = None, gate: Gate | None = None) -> None:
        self.gate = gate if gate is not None else Gate()  # asked before each slice (vmm/sched_gate.py)
        self._cond = threading.Condition()
        self._runq: deque[VcpuContext] = deque()
        self._parked: dict[VcpuContext, float] = {}
        self._running: set[VcpuContext] = set()
        self._woken: set[VcpuContext] = set()
        self._held: set[Domain] = set()  # domains whose vCPUs must stay out of guest code (hold)
        self._held_parked: set[VcpuContext] = set()
        self._outside: set[VcpuContext] = set()  # vCPUs waiting inside a hypercall (outside_guest)
        self._stopping = False
        n = workers or os.cpu_count() or 1
        self._threads = [threading.Thread(target=self._worker, name=f"hd-worker-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def add(self, dom: Domain) -> None:
        dom.scheduler = self
        with self._cond:
            for ctx in dom.vcpus:
                if ctx.up:
                    self._runq.append(ctx)
            self._cond.notify_all()

    def remove(self, dom: Domain) -> None:
        with self._cond:
            for ctx in dom.vcpus:
                self._parked.pop(ctx, None)
                if ctx in self._runq:
                    self._runq.remove(ctx)
            while any(ctx in self._running for ctx in dom.vcpus):
                self._cond.wait(0.05)

    def running(self) -> set[VcpuContext]:
        with self._cond:
            return set(self._running)

    def wake(self, ctx: VcpuContext) -> None:
        with self._cond:
            if ctx in self._parked:
                del self._parked[ctx]
                self._runq.append(ctx)
                self._cond.notify()
            elif ctx in self._running:
                self._woken.add(ctx)
                ctx.ev.kick()  # end its slice now: the event is delivered as soon as it can be

    def hold(self, dom: Domain, me: VcpuContext | None = None) -> None:
        """Keep `dom`'s vCPUs out of guest code until release(dom). Returns once none runs a slice, but
        `me` (the caller's own vCPU, inside a hypercall) and vCPUs that wait inside one (outside_guest)."""
        with self._cond:
            self._held.add(dom)
            while True:
                busy = [c for c in dom.vcpus if c in self._running and c is not me and c not in self._outside]
                if not busy:
                    return
                for c in busy:
                    c.ev.kick()  # again each time: a stop that lands before the slice began is lost
                self._cond.wait(0.001)

    def release(self, dom: Domain) -> None:
        with self._cond:
            self._held.discard(dom)
            for c in dom.vcpus:
                if c in self._held_parked:
                    self._held_parked.discard(c)
                    if self._parked.pop(c, None) is not None:  # not woken into the run queue meanwhile
                        self._runq.append(c)
            self._cond.notify_all()

    @contextmanager
    def outside_guest(self, ctx: VcpuContext | None) -> Iterator[None]:
        """The vCPU `ctx` waits inside a hypercall (for another process, for a lock): it counts as out of
        guest code for hold(), and returns to it only once its domain is not held."""
        if ctx is None:
            yield
            return
        with self._cond:
            self._outside.add(ctx)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._outside.discard(ctx)
                while ctx.dom in self._held:
                    self._cond.wait(0.05)

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _pick(self) -> VcpuContext | None:
        now = time.monotonic()
        for ctx, t in list(self._parked.items()):
            if t <= now:
                del self._parked[ctx]
                self._runq.append(ctx)
        while self._runq:
            ctx = self._runq.popleft()
            if ctx.dom in self._held and not ctx.dom.finished:
                self._parked[ctx] = float("inf")
                self._held_parked.add(ctx)
                continue
            if not ctx.dom.finished and not ctx.dom.paused:
                return ctx
            if ctx.dom.paused and not ctx.dom.finished:
                self._parked[ctx] = float("inf")
        return None

    def _worker(self) -> None:
        while True:
            with self._cond:
                ctx = None
                while ctx is None:
                    if self._stopping:
                        return
                    ctx = self._pick()
                    if ctx is None:
                        nxt = min(self._parked.values(), default=float("inf"))
                        self._cond.wait(None if nxt == float("inf") else max(0.0, nxt - time.monotonic()))
                self._running.add(ctx)
            try:
                wake_at = ctx.step() if self.gate.acquire(ctx, self) else None
            except Exception as exc:  # one domain's failure must not take the others down
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                ctx.dom.crash(f"internal error: {type(exc).__name__}: {exc} at {tb.filename}:{tb.lineno}")
                wake_at = None
            self.gate.release(ctx, wake_at)
            with self._cond:
                self._running.discard(ctx)
                woken = ctx in self._woken
                self._woken.discard(ctx)
                if not ctx.dom.finished:
                    if wake_at is None or woken:
                        self._runq.append(ctx)
                    else:
                        self._parked[ctx] = wake_at
                self._cond.notify_all()
