"""Domain 0's BVT arbiter: which vCPUs of which domain processes hold the host's cores.

Every domain process's scheduler asks its gate (vmm/sched_gate.py) before a vCPU runs guest code; the gate
asks here over the domain's channel ("sched want"), and runs the vCPU once this thread grants it a core
("sched-grant", with a slice). Borrowed Virtual Time (core/bvt.py) decides who gets a free core and when a
holder must give its core back ("sched-revoke": the domain process kicks the vCPU out of its slice and says
"sched done"). The time charged is what domain 0 measures between its grant and the domain's done, never
what the domain process claims; a revoked grant not returned within the overstay bound is taken back
anyway (a compromised process can then only compete for the host's CPU as any process does).

Cores: by default as many grants at once as domain 0 may use CPUs, without pinning (the host kernel
places the threads); with explicit CPUs (`daemon --sched-cpus 0`) each grant names one of them and the
vCPU's thread is pinned to it for the grant.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.bvt import Bvt, BvtError, BvtParams, Grant

if TYPE_CHECKING:
    from .handle import DomainHandle

# a revoked grant not returned by then is taken back: long enough for a domain process starved by a
# loaded host (200 ms was seen to pass with load average 10 on 2 cores), short against a hostile one
OVERSTAY_NS = 1_000_000_000
MAX_VCPU_INDEX = 512  # a want for a higher index is ignored (Xen's HVM_MAX_VCPUS is 128)


def host_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


class Arbiter:
    def __init__(self, log: Callable[[str], None], cpus: list[int] | None = None) -> None:
        """`cpus` None: as many cores as domain 0 may use, unpinned; a list: those CPUs, pinned."""
        self.log = log
        self.pin = cpus is not None
        cores = cpus if cpus is not None else list(range(len(host_cpus())))
        self.bvt = Bvt(cores, overstay_ns=OVERSTAY_NS)
        self._cond = threading.Condition()
        self._doms: dict[int, DomainHandle] = {}
        self._next_ns: int | None = None  # when BVT wants to decide again (a revoke may fall due)
        self.decisions = 0
        self.decide_ns = 0
        self.forfeits = 0
        threading.Thread(target=self._loop, name="hd-arbiter", daemon=True).start()

    # -- domains ----------------------------------------------------------------------------------------
    def add(self, dom: DomainHandle, params: BvtParams | None) -> None:
        with self._cond:
            if dom.domid in self.bvt:
                self._forget(dom.domid)
            self.bvt.add(dom.domid, params)
            self._doms[dom.domid] = dom

    def remove(self, domid: int) -> None:
        with self._cond:
            self._forget(domid)
            self._decide()

    def _forget(self, domid: int) -> None:
        self.bvt.remove(domid)
        self._doms.pop(domid, None)

    def set_params(self, domid: int, params: BvtParams) -> None:
        with self._cond:
            self.bvt.set_params(domid, params)
            self._decide()

    def params(self, domid: int) -> BvtParams:
        with self._cond:
            return self.bvt.params(domid)

    def set_ctx_allow(self, ns: int) -> None:
        with self._cond:
            self.bvt.set_ctx_allow(ns)
            self._decide()

    @property
    def ctx_allow_ns(self) -> int:
        return self.bvt.ctx_allow_ns

    def granted_ns(self, domid: int) -> int | None:
        """Core time the domain has held so far (None if it is not arbitrated)."""
        with self._cond:
            if domid not in self.bvt:
                return None
            return self.bvt.granted_ns(domid, time.monotonic_ns())

    def granted_all(self) -> dict[int, int]:
        """Every arbitrated domain's core time so far, all at one instant."""
        with self._cond:
            now = time.monotonic_ns()
            return {domid: self.bvt.granted_ns(domid, now) for domid in self._doms}

    def status(self) -> dict[str, Any]:
        with self._cond:
            mean_us = self.decide_ns / 1e3 / max(1, self.decisions)
            revoke_us = self.bvt.revoke_latency_ns / 1e3 / max(1, self.bvt.revoked_returns)
            return {"cores": list(self.bvt.cores), "pinned": self.pin, "ctx_allow_ns": self.bvt.ctx_allow_ns,
                    "decisions": self.decisions, "decide_us_mean": round(mean_us, 1),
                    "forfeits": self.forfeits, "revokes": self.bvt.revoked_returns,
                    "revoke_us_mean": round(revoke_us, 1)}

    # -- from a domain process (its channel's reader thread) -------------------------------------------
    def message(self, dom: DomainHandle, msg: dict[str, Any]) -> None:
        """A "sched" message: want, done or cancel. Whatever does not fit is ignored (a domain process
        can only stall its own vCPUs by lying)."""
        op, vcpu, seq = msg.get("op"), msg.get("vcpu"), msg.get("seq")
        if not isinstance(vcpu, int) or isinstance(vcpu, bool) or not 0 <= vcpu < MAX_VCPU_INDEX:
            return
        now = time.monotonic_ns()
        with self._cond:
            if self._doms.get(dom.domid) is not dom:
                return
            try:
                if op == "want":
                    self.bvt.want(dom.domid, vcpu, now)
                elif op == "cancel":
                    self.bvt.cancel(dom.domid, vcpu, now)
                elif op == "done" and isinstance(seq, int):
                    self.bvt.done(dom.domid, vcpu, seq, now, again=msg.get("again") is True)
                elif op == "idle" and isinstance(seq, int):
                    self.bvt.idle(dom.domid, vcpu, seq, now)
                elif op == "busy" and isinstance(seq, int):
                    self.bvt.busy(dom.domid, vcpu, seq, now)
                else:
                    return
            except BvtError:
                return
            self._decide()

    # -- the decisions ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Decisions that fall due with time (a holder's lead runs out, a warp ends, an overstay); the
        others are made at once on the thread that reports the change (a domain's channel reader)."""
        while True:
            with self._cond:
                nxt = self._next_ns
                wait = None if nxt is None else (nxt - time.monotonic_ns()) / 1e9
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                elif self._next_ns is not None:
                    self._decide()

    def _decide(self) -> None:
        """BVT's decision now; grants and revokes sent (queued: never blocks). Called with the lock."""
        t0 = time.monotonic_ns()
        try:
            d = self.bvt.decide(t0)
        except Exception as exc:  # must not end domain 0's scheduling silently
            self.log(f"arbiter: {type(exc).__name__}: {exc}")
            self._next_ns = t0 + 10_000_000
            self._cond.notify()
            return
        for g in d.grants:
            self._send(g, {"t": "sched-grant", "vcpu": g.vcpu, "seq": g.seq, "core": g.core,
                           "slice_us": g.slice_ns // 1000, "pin": self.pin})
        for g in d.revokes:
            self._send(g, {"t": "sched-revoke", "vcpu": g.vcpu, "seq": g.seq})
        for g in d.forfeited:
            self.forfeits += 1
            if self.forfeits <= 10:
                self.log(f"arbiter: domain {g.dom} vCPU {g.vcpu} kept a revoked core; taken back")
        if d.next_ns != self._next_ns:
            self._next_ns = d.next_ns
            self._cond.notify()  # the timer thread re-arms
        self.decisions += 1
        self.decide_ns += time.monotonic_ns() - t0

    def _send(self, g: Grant, msg: dict[str, Any]) -> None:
        dom = self._doms.get(g.dom)  # type: ignore[call-overload]
        if dom is not None:
            dom.send(msg)
