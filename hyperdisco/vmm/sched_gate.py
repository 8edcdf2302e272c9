"""The domain process's end of domain 0's BVT arbiter (dom0/arbiter.py): a vCPU runs guest code only
while it holds a core domain 0 granted it.

Over the domain's channel (JSON datagrams, as everything else):
  to domain 0     sched want  vcpu            the vCPU is runnable and asks for a core
                  sched done  vcpu seq again  it gives grant `seq` back (revoked, paused, finished);
                                              again: it stays runnable and waits for the next grant
                  sched cancel vcpu           it no longer waits (paused, finished)
                  sched idle|busy vcpu seq    it halted on its core / runs on it again
  from domain 0   sched-grant vcpu seq core slice_us pin   run (on host CPU `core` if pin); slice_us:
                                                         how long domain 0 expects to let it
                  sched-revoke vcpu seq       give it back now (the vCPU is kicked out of its slice)
                  sched-gate on               (after an adoption) a new domain 0 arbitrates again

A worker keeps its vCPU's grant across slices until it is revoked (the grant's slice is domain 0's forecast
of when that will be; domain 0's timer revokes it then, if BVT still wants to); then it says done (with
`again` if still runnable): a vCPU alone on a core costs no messages at all. A vCPU that halts keeps
its core, idle (`sched idle`: not charged, taken back at once when anyone else waits), and when it wakes
runs at once (`sched busy`, one way): a wake costs no round trip while cores are free. If domain 0 goes
away the gate opens (every vCPU runs, the host kernel decides) until a new domain 0 turns it on again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.gate import Gate

if TYPE_CHECKING:
    from ..core.scheduler import Scheduler
    from ..core.vcpu import VcpuContext

POLL_S = 0.05  # a waiting vCPU looks at its domain's pause/finish this often


@dataclass
class _Vcpu:
    ctx: VcpuContext | None = None
    waiting: bool = False
    seq: int | None = None
    core: int = -1
    pin: bool = False
    revoked: bool = False
    idle: bool = False  # halted, keeping its core (domain 0 takes it back as soon as anyone waits)


class ArbiterGate(Gate):
    def __init__(self, send: Callable[[dict[str, Any]], None], nvcpus: int) -> None:
        self._send = send
        self._cond = threading.Condition()
        self._v = [_Vcpu() for _ in range(nvcpus)]
        self.enabled = True
        self._pinned = threading.local()
        self.grants = 0
        self.wait_ns = 0  # time vCPUs waited for a core

    # -- the scheduler's side --------------------------------------------------------------------------
    def acquire(self, ctx: VcpuContext, sched: Scheduler) -> bool:
        if not self.enabled or not 0 <= ctx.index < len(self._v):
            return True
        v = self._v[ctx.index]
        with self._cond:
            v.ctx = ctx
            if v.seq is not None and v.idle and not v.revoked:  # woken on the core it kept: no round trip
                v.idle = False
                self._send({"t": "sched", "op": "busy", "vcpu": ctx.index, "seq": v.seq})
                return True
            if v.seq is not None:
                if not v.revoked:
                    return True
                self._give_back(v, ctx.index, again=True)
            if not v.waiting:
                v.waiting = True
                self._send({"t": "sched", "op": "want", "vcpu": ctx.index})
        t0 = time.monotonic_ns()
        with sched.outside_guest(ctx):
            with self._cond:
                while v.seq is None and self.enabled:
                    if ctx.dom.finished or ctx.dom.paused:
                        if v.waiting:
                            v.waiting = False
                            self._send({"t": "sched", "op": "cancel", "vcpu": ctx.index})
                        return False
                    self._cond.wait(POLL_S)
                core, pin = v.core, v.pin
        self.wait_ns += time.monotonic_ns() - t0
        if pin and getattr(self._pinned, "core", None) != core:
            try:
                os.sched_setaffinity(0, {core})  # this worker thread only
                self._pinned.core = core
            except OSError:
                pass
        return True

    def release(self, ctx: VcpuContext, wake_at: float | None) -> None:
        if not self.enabled or not 0 <= ctx.index < len(self._v):
            return
        v = self._v[ctx.index]
        with self._cond:
            if v.seq is None:
                return
            if ctx.dom.finished or ctx.dom.paused or (wake_at is not None and v.revoked):
                self._give_back(v, ctx.index)
            elif wake_at is not None:  # it halts: keep the core, idle, until it wakes or someone waits
                v.idle = True
                self._send({"t": "sched", "op": "idle", "vcpu": ctx.index, "seq": v.seq})
            elif v.revoked:
                self._give_back(v, ctx.index, again=True)

    def _give_back(self, v: _Vcpu, index: int, again: bool = False) -> None:
        """Return the grant; `again`: the vCPU is still runnable and waits for the next (one message, so
        that domain 0 does not see it block and wake)."""
        self._send({"t": "sched", "op": "done", "vcpu": index, "seq": v.seq, "again": again})
        v.seq = None
        v.revoked = False
        v.idle = False
        v.waiting = again

    # -- domain 0's side (the channel's reader thread) ------------------------------------------------
    def grant(self, msg: dict[str, Any]) -> None:
        vcpu, seq = msg.get("vcpu"), msg.get("seq")
        if not isinstance(vcpu, int) or not 0 <= vcpu < len(self._v) or not isinstance(seq, int):
            return
        v = self._v[vcpu]
        with self._cond:
            if not v.waiting or v.seq is not None:  # cancelled meanwhile: straight back
                self._send({"t": "sched", "op": "done", "vcpu": vcpu, "seq": seq})
                return
            v.waiting = False
            v.seq = seq
            v.core = int(msg.get("core", -1))
            v.pin = bool(msg.get("pin")) and v.core >= 0
            v.revoked = False
            v.idle = False
            self.grants += 1
            self._cond.notify_all()

    def revoke(self, msg: dict[str, Any]) -> None:
        vcpu = msg.get("vcpu")
        if not isinstance(vcpu, int) or not 0 <= vcpu < len(self._v):
            return
        v = self._v[vcpu]
        with self._cond:
            if v.seq is None or v.seq != msg.get("seq"):
                return
            if v.idle:  # halted on it: give it back now
                self._give_back(v, vcpu)
                return
            v.revoked = True
            ctx = v.ctx
        if ctx is not None:
            ctx.ev.kick()  # ends its slice; release() gives the core back

    def open(self) -> None:
        """Domain 0 went away: every vCPU runs (the host kernel decides) until turn_on()."""
        with self._cond:
            self.enabled = False
            for v in self._v:
                v.waiting, v.seq, v.revoked, v.idle = False, None, False, False
            self._cond.notify_all()

    def turn_on(self) -> None:
        with self._cond:
            for v in self._v:
                v.waiting, v.seq, v.revoked, v.idle = False, None, False, False
            self.enabled = True

    def stats(self) -> dict[str, Any]:
        return {"grants": self.grants, "wait_s": round(self.wait_ns / 1e9, 3), "gated": self.enabled}
