"""Borrowed Virtual Time: which runnable vCPUs of which domains hold the host's cores.

The arithmetic of Duda and Cheriton, "Borrowed-Virtual-Time (BVT) scheduling: supporting latency-sensitive
threads in a general-purpose scheduler" (SOSP'99), as Xen 2 implemented it for domains
(xen-project/xen, xen/common/sched_bvt.c at 00938ba7: bvt_do_schedule, __calc_evt, bvt_wake, bvt_do_block):

- each domain has an actual virtual time (avt) that advances, while any of its vCPUs holds a core, at a
  rate inversely proportional to its weight (Xen 2 stores the inverse, `mcu_advance`; here the weight
  itself: avt += ran * VT_SCALE / weight);
- its effective virtual time is evt = avt - warp while it is warped, else avt;
- the runnable domain with the lowest evt runs; a domain holding a core is preempted only once a waiting
  domain's evt is lower than its own by at least the context-switch allowance C (in the holder's virtual
  time: C * VT_SCALE / weight), so two domains of equal evt do not ping-pong;
- a domain that wakes (it had no runnable vCPU and now has one) starts at max(avt, svt), the system
  virtual time (the minimum avt of the runnable domains when it was last computed), so a sleeper does not
  bank credit; it also starts warping if its warp is enabled and it is not serving an unwarp requirement;
- warp limit L: a domain stays warped at most L after the wake that warped it (Xen: now - warped < warpl);
  unwarp requirement U: a domain whose warp ran out may warp again only U after that (Xen: now - uwarped >
  warpu; Xen also restarts that wait when a wake is refused, here it is not, as in the paper); a domain
  that blocks stops warping (bvt_do_block) without starting U.

Several cores: a free core goes to the waiting vCPU of the lowest-evt domain; a domain's evt counts the
time of all its vCPUs that hold cores. A grant carries a slice: how long until BVT would take the core
back if nothing changes (10 C when nobody waits, Xen's constant for a lone runner).

Pure: no threads, no clock. Every call takes `now` (ns, any monotonic origin); dom0/arbiter.py drives it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

DEFAULT_WEIGHT = 256          # as xl's credit scheduler's default weight
MAX_WEIGHT = 65535
VT_SCALE = 1 << 16            # virtual-time units per ns of CPU at weight 1
DEFAULT_CTX_ALLOW_NS = 5_000_000   # Xen 2's ctx_allow
MIN_CTX_ALLOW_NS = 100_000         # Xen 2's MCU: no finer scheduling than that
MAX_CTX_ALLOW_NS = 1_000_000_000
MAX_WARP_NS = 10_000_000_000       # warp value, warp limit, unwarp requirement: at most 10 s each
LONE_SLICES = 10                   # a lone runner's slice is 10 C (Xen 2's "RN: random constant")


class BvtError(ValueError):
    """A parameter out of range, or an unknown domain/vCPU."""


@dataclass(frozen=True)
class BvtParams:
    """A domain's BVT parameters. Times in ns. `warp_ns` is the warp value expressed as the CPU time a
    domain of the default weight receives in that much virtual time; warping happens only with a warp
    value and a warp limit both above 0 (Xen 2's defaults are all 0: no warp)."""

    weight: int = DEFAULT_WEIGHT
    warp_ns: int = 0
    warp_limit_ns: int = 0
    unwarp_ns: int = 0

    def __post_init__(self) -> None:
        check_params(self)

    @property
    def warps(self) -> bool:
        return self.warp_ns > 0 and self.warp_limit_ns > 0


def check_params(p: BvtParams) -> None:
    for name in ("weight", "warp_ns", "warp_limit_ns", "unwarp_ns"):
        v = getattr(p, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise BvtError(f"{name} must be an integer, not {v!r}"[:120])
    if not 1 <= p.weight <= MAX_WEIGHT:
        raise BvtError(f"weight {p.weight} is out of range (1-{MAX_WEIGHT})")
    for name, v in (("warp value", p.warp_ns), ("warp limit", p.warp_limit_ns),
                    ("unwarp requirement", p.unwarp_ns)):
        if not 0 <= v <= MAX_WARP_NS:
            raise BvtError(f"{name} {v} ns is out of range (0-{MAX_WARP_NS} ns)")


def check_ctx_allow(ns: int) -> int:
    if not isinstance(ns, int) or isinstance(ns, bool) or not MIN_CTX_ALLOW_NS <= ns <= MAX_CTX_ALLOW_NS:
        raise BvtError(f"context-switch allowance {ns!r} ns is out of range "
                       f"({MIN_CTX_ALLOW_NS}-{MAX_CTX_ALLOW_NS} ns)"[:160])
    return ns


@dataclass
class Grant:
    """One vCPU holds one core from `start` on; `revoked` once BVT wants the core back."""

    dom: Hashable
    vcpu: int
    core: int
    seq: int
    start: int
    slice_ns: int
    revoked_at: int | None = None
    busy_ns: int = 0                 # time it ran before its last idle()
    busy_since: int | None = None    # None while idle: the vCPU halted and keeps the core (idle())

    def ran(self, now: int) -> int:
        return self.busy_ns + (max(0, now - self.busy_since) if self.busy_since is not None else 0)


@dataclass
class Decision:
    grants: list[Grant] = field(default_factory=list)   # new: tell these vCPUs to run
    revokes: list[Grant] = field(default_factory=list)  # newly revoked: kick these vCPUs
    forfeited: list[Grant] = field(default_factory=list)  # revoked and never returned: taken back
    next_ns: int | None = None                          # call decide() again by then at the latest


@dataclass
class _Dom:
    params: BvtParams
    avt: int
    waiting: dict[int, int] = field(default_factory=dict)   # vcpu -> time it asked (insertion = FIFO)
    running: dict[int, Grant] = field(default_factory=dict)
    warpback: bool = False
    warped_at: int = 0
    unwarped_at: int | None = None
    granted_ns: int = 0     # core time charged so far (for shares)

    def runnable(self) -> bool:
        """Waiting for a core or running on one (a vCPU idle on its core does not count)."""
        return bool(self.waiting) or any(g.busy_since is not None for g in self.running.values())


class Bvt:
    def __init__(self, cores: Sequence[int], ctx_allow_ns: int = DEFAULT_CTX_ALLOW_NS,
                 overstay_ns: int = 200_000_000) -> None:
        """`cores`: the host CPUs handed out (their numbers go into the grants). A revoked grant not
        returned within `overstay_ns` is forfeited: charged up to then and its core handed on."""
        if not cores or len(set(cores)) != len(cores) or any(
                not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in cores):
            raise BvtError("cores must be distinct CPU numbers, at least one")
        self.cores = list(cores)
        self.ctx_allow_ns = check_ctx_allow(ctx_allow_ns)
        self.overstay_ns = overstay_ns
        self.svt = 0
        self._doms: dict[Hashable, _Dom] = {}
        self._held: dict[int, Grant] = {}   # core -> grant
        self._seq = 0
        self.revoked_returns = 0      # revoked grants given back, and the time that took in all
        self.revoke_latency_ns = 0

    # -- domains ------------------------------------------------------------------------------------------
    def add(self, dom: Hashable, params: BvtParams | None = None) -> None:
        if dom in self._doms:
            raise BvtError(f"domain {dom!r} is already scheduled")
        self._doms[dom] = _Dom(params or BvtParams(), self.svt)  # starts at the system virtual time

    def remove(self, dom: Hashable) -> list[Grant]:
        """Forget `dom`; its grants' cores are free again (returned: the caller tells the domain)."""
        d = self._doms.pop(dom, None)
        if d is None:
            return []
        for g in d.running.values():
            self._held.pop(g.core, None)
        return list(d.running.values())

    def __contains__(self, dom: Hashable) -> bool:
        return dom in self._doms

    def params(self, dom: Hashable) -> BvtParams:
        return self._dom(dom).params

    def set_params(self, dom: Hashable, params: BvtParams) -> None:
        check_params(params)
        d = self._dom(dom)
        d.params = params
        if not params.warps:
            d.warpback = False

    def set_ctx_allow(self, ns: int) -> None:
        self.ctx_allow_ns = check_ctx_allow(ns)

    def _dom(self, dom: Hashable) -> _Dom:
        d = self._doms.get(dom)
        if d is None:
            raise BvtError(f"no domain {dom!r} is scheduled")
        return d

    # -- what vCPUs ask -----------------------------------------------------------------------------------
    def want(self, dom: Hashable, vcpu: int, now: int) -> None:
        """vCPU `vcpu` of `dom` is runnable and asks for a core (again: no effect)."""
        d = self._dom(dom)
        if vcpu in d.waiting or vcpu in d.running:
            return
        if not d.runnable():
            self._wake(d, now)
        d.waiting[vcpu] = now

    def cancel(self, dom: Hashable, vcpu: int, now: int) -> None:
        """The vCPU no longer wants a core it has not been given (paused, parked)."""
        d = self._dom(dom)
        if d.waiting.pop(vcpu, None) is not None and not d.runnable():
            self._block(d, now)

    def done(self, dom: Hashable, vcpu: int, seq: int, now: int, again: bool = False) -> bool:
        """The vCPU gives its core back (its slice ended, it was revoked, it halted): charge the time it
        held it. `again`: it is still runnable and waits for a core at once (a slice that ended is not a
        block and a wake: no system-virtual-time catch-up, no new warp). False for a grant that is not
        current (an old one, a forfeited one): nothing is charged, but with `again` the vCPU waits for a
        core all the same (it must not wait for ever for a grant it lost)."""
        d = self._doms.get(dom)
        if d is None:
            return False
        g = d.running.get(vcpu)
        if g is None or g.seq != seq:
            if again:
                self.want(dom, vcpu, now)
            return False
        was_runnable = d.runnable()
        if g.revoked_at is not None:
            self.revoked_returns += 1
            self.revoke_latency_ns += max(0, now - g.revoked_at)
        self._end(d, g, now)
        if again:
            if not was_runnable:  # it was idle on its core: this is a wake
                self._wake(d, now)
            d.waiting[vcpu] = now
        elif not d.runnable() and was_runnable:
            self._block(d, now)
        return True

    def idle(self, dom: Hashable, vcpu: int, seq: int, now: int) -> bool:
        """The vCPU halted but keeps its core, to run again at once when it wakes: time from now on is not
        charged, the domain counts as blocked, and any waiting domain takes the core (decide revokes an
        idle grant first, whatever the virtual times)."""
        d = self._doms.get(dom)
        g = d.running.get(vcpu) if d is not None else None
        if d is None or g is None or g.seq != seq or g.busy_since is None:
            return False
        g.busy_ns += max(0, now - g.busy_since)
        g.busy_since = None
        if not d.runnable():
            self._block(d, now)
        return True

    def busy(self, dom: Hashable, vcpu: int, seq: int, now: int) -> bool:
        """The vCPU idle on its core runs again (a wake, if the domain had nothing else runnable)."""
        d = self._doms.get(dom)
        g = d.running.get(vcpu) if d is not None else None
        if d is None or g is None or g.seq != seq or g.busy_since is not None:
            return False
        if not d.runnable():
            self._wake(d, now)
        g.busy_since = now
        return True

    def _end(self, d: _Dom, g: Grant, now: int) -> None:
        del d.running[g.vcpu]
        self._held.pop(g.core, None)
        ran = g.ran(now)
        d.avt += ran * VT_SCALE // d.params.weight
        d.granted_ns += ran

    def _wake(self, d: _Dom, now: int) -> None:
        """bvt_wake: no credit banked while asleep, and the warp starts if allowed."""
        d.avt = max(d.avt, self.svt)
        p = d.params
        if p.warps and (d.unwarped_at is None or now - d.unwarped_at >= p.unwarp_ns):
            d.warpback = True
            d.warped_at = now

    def _block(self, d: _Dom, now: int) -> None:
        d.warpback = False  # bvt_do_block

    # -- virtual times ------------------------------------------------------------------------------------
    def _update_warp(self, d: _Dom, now: int) -> None:
        if d.warpback and now - d.warped_at >= d.params.warp_limit_ns:
            d.warpback = False  # warped for too long (__calc_evt)
            d.unwarped_at = d.warped_at + d.params.warp_limit_ns

    def avt(self, dom: Hashable, now: int) -> int:
        """Actual virtual time, counting the cores `dom` holds now."""
        d = self._dom(dom)
        return self._avt_now(d, now)

    def _avt_now(self, d: _Dom, now: int) -> int:
        held = sum(g.ran(now) for g in d.running.values())
        return d.avt + held * VT_SCALE // d.params.weight

    def evt(self, dom: Hashable, now: int) -> int:
        d = self._dom(dom)
        self._update_warp(d, now)
        return self._evt_now(d, now)

    def _evt_now(self, d: _Dom, now: int) -> int:
        avt = self._avt_now(d, now)
        return avt - d.params.warp_ns * VT_SCALE // DEFAULT_WEIGHT if d.warpback else avt

    def warped(self, dom: Hashable, now: int) -> bool:
        d = self._dom(dom)
        self._update_warp(d, now)
        return d.warpback

    def granted_ns(self, dom: Hashable, now: int) -> int:
        """Core time `dom` has held so far (its share, over an interval, is the difference)."""
        d = self._dom(dom)
        return d.granted_ns + sum(g.ran(now) for g in d.running.values())

    def holders(self) -> list[Grant]:
        return list(self._held.values())

    def _c_units(self, d: _Dom) -> int:
        return self.ctx_allow_ns * VT_SCALE // d.params.weight

    def _real_ns(self, d: _Dom, units: int) -> int:
        """How long `d` must hold cores for its virtual time to advance by `units`."""
        n = max(1, sum(1 for g in d.running.values() if g.busy_since is not None))
        return max(0, -(-units * d.params.weight // (VT_SCALE * n)))

    # -- the decision -------------------------------------------------------------------------------------
    def decide(self, now: int) -> Decision:
        out = Decision()
        soon: list[int] = []
        for d in self._doms.values():
            self._update_warp(d, now)
            if d.warpback:
                soon.append(d.warped_at + d.params.warp_limit_ns)
        runnable = [d for d in self._doms.values() if d.runnable()]
        if runnable:
            self.svt = max(self.svt, min(self._avt_now(d, now) for d in runnable))
        # revoked grants that were never returned: taken back (a domain process that ignores revokes)
        for g in list(self._held.values()):
            if g.revoked_at is not None:
                if now - g.revoked_at >= self.overstay_ns:
                    d = self._doms[g.dom]
                    self._end(d, g, now)
                    out.forfeited.append(g)
                else:
                    soon.append(g.revoked_at + self.overstay_ns)
        evt = {id(d): self._evt_now(d, now) for d in self._doms.values()}
        keys = {id(d): k for k, d in self._doms.items()}
        waiting = sorted((d for d in self._doms.values() if d.waiting), key=lambda d: evt[id(d)])
        # free cores to the lowest evt, FIFO among a domain's vCPUs
        free = [c for c in self.cores if c not in self._held]
        queue = [(d, v) for d in waiting for v in d.waiting]
        while free and queue:
            d, v = queue.pop(0)
            del d.waiting[v]
            self._seq += 1
            g = Grant(keys[id(d)], v, free.pop(0), self._seq, now, 0, busy_since=now)
            d.running[v] = g
            self._held[g.core] = g
            out.grants.append(g)
        # preemption: a waiting domain takes the core of the holder with the highest evt once its own evt
        # is lower by at least C (in the holder's virtual time)
        holders = [g for g in self._held.values() if g.revoked_at is None]
        for d, _v in queue:
            idle = [g for g in holders if g.busy_since is None]
            if idle:  # a core held by a halted vCPU: taken back at once
                g = idle[0]
                g.revoked_at = now
                holders.remove(g)
                out.revokes.append(g)
                soon.append(now + self.overstay_ns)
                continue
            cands = [g for g in holders if keys[id(d)] != g.dom]
            if not cands:
                continue
            g = max(cands, key=lambda g: evt[id(self._doms[g.dom])])
            hd = self._doms[g.dom]
            lead = evt[id(hd)] - evt[id(d)] - self._c_units(hd)
            if lead >= 0:
                g.revoked_at = now
                holders.remove(g)
                out.revokes.append(g)
                soon.append(now + self.overstay_ns)
            else:
                soon.append(now + self._real_ns(hd, -lead))
        # slices: until the best other waiting domain would take the core back, 10 C with nobody waiting
        rest = [d for d, _v in queue]
        for g in out.grants:
            hd = self._doms[g.dom]
            others = [evt[id(d)] for d in rest if keys[id(d)] != g.dom]
            if others:
                g.slice_ns = max(self.ctx_allow_ns,
                                 self._real_ns(hd, min(others) + self._c_units(hd) - evt[id(hd)]))
            else:
                g.slice_ns = LONE_SLICES * self.ctx_allow_ns
        out.next_ns = min(soon) if soon else None
        return out
