"""Borrowed Virtual Time (core/bvt.py) on a fake clock: shares, warp, warp limit, unwarp requirement, the
context-switch allowance, no banked credit for sleepers, refused parameters."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from hyperdisco.core.bvt import (
    DEFAULT_CTX_ALLOW_NS,
    LONE_SLICES,
    Bvt,
    BvtError,
    BvtParams,
    Grant,
    check_ctx_allow,
)

MS = 1_000_000
INF = float("inf")


class Sim:
    """vCPUs that hold a core until their slice ends, BVT revokes it, or their work is done; a revoked
    vCPU gives the core back after `kick_ns` (the kick and the end of its engine slice)."""

    def __init__(self, bvt: Bvt, kick_ns: int = 0, voluntary: bool = True) -> None:
        self.b = bvt
        self.voluntary = voluntary  # a vCPU gives its core back when its slice ends (else only on revoke)
        self.now = 0
        self.kick_ns = kick_ns
        self.work: dict[tuple[Hashable, int], float] = {}   # work left (ns) of a runnable vCPU
        self.wakes: list[tuple[int, Hashable, int, float]] = []   # (time, dom, vcpu, work)
        self.held: dict[tuple[Hashable, int], Grant] = {}
        self.revoked_at: dict[tuple[Hashable, int], int] = {}
        self.log: list[tuple[int, str, Hashable]] = []

    def busy(self, dom: Hashable, vcpu: int = 0, work: float = INF) -> None:
        self.work[(dom, vcpu)] = work
        self.b.want(dom, vcpu, self.now)

    def wake_at(self, t: int, dom: Hashable, work: float, vcpu: int = 0) -> None:
        self.wakes.append((t, dom, vcpu, work))
        self.wakes.sort(key=lambda w: w[0])

    def _end_of(self, key: tuple[Hashable, int], g: Grant) -> float:
        ends: list[float] = [g.start + self.work[key]]
        if self.voluntary:
            ends.append(g.start + g.slice_ns)
        if key in self.revoked_at:
            ends.append(self.revoked_at[key] + self.kick_ns)
        return min(ends)

    def run(self, until: int) -> None:
        while True:
            d = self.b.decide(self.now)
            for g in d.grants:
                self.held[(g.dom, g.vcpu)] = g
                self.log.append((self.now, "grant", g.dom))
            for g in d.revokes:
                self.revoked_at[(g.dom, g.vcpu)] = self.now
                self.log.append((self.now, "revoke", g.dom))
            assert not d.forfeited
            times: list[float] = [until]
            if d.next_ns is not None:
                times.append(d.next_ns)
            times += [self._end_of(k, g) for k, g in self.held.items()]
            if self.wakes:
                times.append(self.wakes[0][0])
            t = min(times)
            assert t >= self.now
            self.now = int(t)
            for k, g in list(self.held.items()):
                if self._end_of(k, g) <= self.now:
                    del self.held[k]
                    self.revoked_at.pop(k, None)
                    self.work[k] -= self.now - g.start
                    assert self.b.done(g.dom, g.vcpu, g.seq, self.now, again=self.work[k] > 0)
            while self.wakes and self.wakes[0][0] <= self.now:
                _t, dom, vcpu, work = self.wakes.pop(0)
                self.busy(dom, vcpu, work)
            if self.now >= until:
                return


def shares(b: Bvt, now: int, *doms: Hashable) -> list[float]:
    got = [b.granted_ns(d, now) for d in doms]
    return [g / sum(got) for g in got]


def test_equal_weights_share_equally() -> None:
    b = Bvt([0])
    sim = Sim(b)
    for d in ("a", "b"):
        b.add(d)
        sim.busy(d)
    sim.run(10_000 * MS)
    a, bb = shares(b, sim.now, "a", "b")
    assert abs(a - 0.5) < 0.005
    assert sum(b.granted_ns(d, sim.now) for d in ("a", "b")) == sim.now  # the core never idles


@pytest.mark.parametrize("voluntary", [True, False])
def test_weights_one_to_two_give_one_to_two(voluntary: bool) -> None:
    b = Bvt([0])
    sim = Sim(b, kick_ns=2 * MS, voluntary=voluntary)  # a revoked vCPU finishes its engine slice first
    b.add("light", BvtParams(weight=100))
    b.add("heavy", BvtParams(weight=200))
    sim.busy("light")
    sim.busy("heavy")
    sim.run(60_000 * MS)
    light, heavy = shares(b, sim.now, "light", "heavy")
    assert abs(heavy / light - 2.0) < 0.02


@pytest.mark.parametrize("voluntary", [True, False])
def test_weights_hold_with_two_cores_and_three_domains(voluntary: bool) -> None:
    b = Bvt([0, 1])
    sim = Sim(b, voluntary=voluntary)
    for name, w in (("a", 100), ("b", 100), ("c", 200)):
        b.add(name, BvtParams(weight=w))
        sim.busy(name)
    sim.run(30_000 * MS)
    a, bb, c = shares(b, sim.now, "a", "b", "c")
    assert abs(a - 0.25) < 0.01 and abs(bb - 0.25) < 0.01 and abs(c - 0.5) < 0.01


def test_a_domain_with_two_vcpus_is_charged_for_both() -> None:
    b = Bvt([0, 1])
    sim = Sim(b)
    b.add("smp")
    b.add("up")
    sim.busy("smp", 0)
    sim.busy("smp", 1)
    sim.busy("up", 0)
    sim.run(20_000 * MS)
    smp, up = shares(b, sim.now, "smp", "up")
    assert abs(smp - 0.5) < 0.01  # BVT shares between domains, not vCPUs


def test_lone_runner_gets_ten_allowances_and_no_revoke() -> None:
    b = Bvt([0])
    b.add("a")
    b.want("a", 0, 0)
    d = b.decide(0)
    assert [g.slice_ns for g in d.grants] == [LONE_SLICES * DEFAULT_CTX_ALLOW_NS]
    assert d.next_ns is None and not d.revokes


def test_context_switch_allowance_bounds_switching() -> None:
    """Equal domains alternate no faster than every C: each holds the core for at least C."""
    c = 7 * MS
    b = Bvt([0], ctx_allow_ns=c)
    sim = Sim(b)
    for d in ("a", "b"):
        b.add(d)
        sim.busy(d)
    sim.run(2_000 * MS)
    grants = [t for t, what, _d in sim.log if what == "grant"]
    gaps = [t2 - t1 for t1, t2 in zip(grants, grants[1:], strict=False)]
    assert gaps and min(gaps) >= c
    assert len(grants) > 2_000 * MS // (3 * c)  # but they do alternate


def test_warped_domain_that_wakes_preempts_within_c() -> None:
    c = 5 * MS
    b = Bvt([0], ctx_allow_ns=c)
    sim = Sim(b)
    b.add("hog")
    b.add("io", BvtParams(warp_ns=50 * MS, warp_limit_ns=20 * MS, unwarp_ns=100 * MS))
    sim.busy("hog")
    sim.wake_at(1_000 * MS + 1, "io", work=MS)
    sim.run(1_100 * MS)
    woke = 1_000 * MS + 1
    granted = [t for t, what, d in sim.log if what == "grant" and d == "io"]
    assert granted and woke <= granted[0] <= woke + c


def test_unwarped_sleeper_waits_longer_than_a_warped_one() -> None:
    def latency(params: BvtParams) -> int:
        b = Bvt([0])
        sim = Sim(b)
        b.add("hog")
        b.add("hog2")
        b.add("io", params)
        sim.busy("hog")
        sim.busy("hog2")
        for i in range(20):
            sim.wake_at(100 * MS + i * 97 * MS + 3, "io", work=MS // 2)
        sim.run(2_200 * MS)
        wakes = [100 * MS + i * 97 * MS + 3 for i in range(20)]
        grants = [t for t, what, d in sim.log if what == "grant" and d == "io"]
        return sum(g - w for w, g in zip(wakes, grants, strict=True))
    plain = latency(BvtParams())
    warped = latency(BvtParams(warp_ns=100 * MS, warp_limit_ns=50 * MS))
    assert warped == 0 < plain  # C = 5 ms: a plain sleeper waits until a hog has run C past it


def test_warp_limit_and_unwarp_requirement() -> None:
    p = BvtParams(warp_ns=30 * MS, warp_limit_ns=10 * MS, unwarp_ns=50 * MS)
    b = Bvt([0])
    b.add("x", p)
    b.want("x", 0, 0)
    assert b.warped("x", 9 * MS)
    assert b.evt("x", 9 * MS) == b.avt("x", 9 * MS) - 30 * MS * (1 << 16) // 256
    assert not b.warped("x", 10 * MS)           # warped for L: unwarped
    assert b.evt("x", 11 * MS) == b.avt("x", 11 * MS)
    g = b.decide(11 * MS).grants[0]
    assert b.done("x", 0, g.seq, 12 * MS)         # blocks...
    b.want("x", 0, 40 * MS)                      # ...and wakes 30 ms after the warp ran out: U not served
    assert not b.warped("x", 40 * MS)
    b.cancel("x", 0, 41 * MS)
    b.want("x", 0, 60 * MS)                      # 50 ms after: may warp again
    assert b.warped("x", 60 * MS)
    b.cancel("x", 0, 61 * MS)                    # a block ends the warp without starting U
    assert not b.warped("x", 61 * MS)
    b.want("x", 0, 62 * MS)
    assert b.warped("x", 62 * MS)


def test_warp_ends_by_limit_while_running_and_the_core_goes_back() -> None:
    """A warped domain that turns CPU-bound keeps its advantage only for the warp limit."""
    b = Bvt([0])
    sim = Sim(b)
    b.add("hog")
    b.add("w", BvtParams(warp_ns=1_000 * MS, warp_limit_ns=100 * MS, unwarp_ns=10_000 * MS))
    sim.busy("hog")
    sim.run(500 * MS)
    sim.busy("w")
    sim.run(3_000 * MS)
    w_grants = [t for t, what, d in sim.log if what == "grant" and d == "w"]
    hog_grants = [t for t, what, d in sim.log if what == "grant" and d == "hog" and t > 500 * MS]
    assert w_grants[0] == 500 * MS                # preempts at once (warp 1 s >> C)
    assert hog_grants and hog_grants[0] <= 600 * MS + 2 * DEFAULT_CTX_ALLOW_NS  # back after L = 100 ms
    w = b.granted_ns("w", sim.now) / (sim.now - 500 * MS)
    assert abs(w - 0.5) < 0.02  # the warp was borrowed from its own future: no extra share in the end


def test_woken_sleeper_banks_no_credit() -> None:
    b = Bvt([0])
    sim = Sim(b)
    b.add("a")
    b.add("sleeper")
    sim.busy("a")
    sim.busy("sleeper", work=100 * MS)   # runs a little, then sleeps 5 s while "a" runs alone
    sim.run(5_000 * MS)
    assert b.granted_ns("sleeper", sim.now) == 100 * MS
    before = {d: b.granted_ns(d, sim.now) for d in ("a", "sleeper")}
    sim.busy("sleeper")
    assert b.avt("sleeper", sim.now) == b.svt  # starts at the system virtual time, not its old avt
    sim.run(6_000 * MS)
    got = {d: b.granted_ns(d, sim.now) - before[d] for d in ("a", "sleeper")}
    assert abs(got["sleeper"] / (got["a"] + got["sleeper"]) - 0.5) < 0.02  # not a 4.9 s monopoly


def test_new_domain_starts_at_system_virtual_time() -> None:
    b = Bvt([0])
    sim = Sim(b)
    b.add("a")
    sim.busy("a")
    sim.run(1_000 * MS)
    b.decide(sim.now)
    b.add("late")
    assert b.avt("late", sim.now) == b.svt > 0


def test_forfeit_a_revoked_grant_never_returned() -> None:
    b = Bvt([0], overstay_ns=50 * MS)
    b.add("rogue")
    b.add("b", BvtParams(warp_ns=100 * MS, warp_limit_ns=100 * MS))
    b.want("rogue", 0, 0)
    g = b.decide(0).grants[0]
    b.want("b", 0, MS)
    d = b.decide(MS)
    assert d.revokes == [g] and d.next_ns == 51 * MS
    d = b.decide(51 * MS)
    assert d.forfeited == [g] and [x.dom for x in d.grants] == ["b"]
    assert not b.done("rogue", 0, g.seq, 60 * MS)   # too late: already charged
    assert b.granted_ns("rogue", 51 * MS) == 51 * MS
    # the rogue (or a starved process) gives it back late, still runnable: it waits for a core again
    assert not b.done("rogue", 0, g.seq, 60 * MS, again=True)
    b.done("b", 0, d.grants[0].seq, 70 * MS)
    assert [x.dom for x in b.decide(70 * MS).grants] == ["rogue"]


def test_stale_and_unknown_are_refused() -> None:
    b = Bvt([3])
    b.add("a")
    b.want("a", 0, 0)
    g = b.decide(0).grants[0]
    assert g.core == 3
    assert not b.done("a", 0, g.seq + 1, 1)
    assert not b.done("nobody", 0, 1, 1)
    with pytest.raises(BvtError):
        b.want("nobody", 0, 1)
    with pytest.raises(BvtError):
        b.add("a")
    assert b.remove("a") == [g]
    assert b.holders() == []


@pytest.mark.parametrize("kw", [
    {"weight": 0}, {"weight": -1}, {"weight": 65536}, {"weight": 1.5}, {"weight": True},
    {"warp_ns": -1}, {"warp_limit_ns": -5}, {"unwarp_ns": 10_000_000_001}, {"warp_ns": "3"},
])
def test_bad_parameters_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(BvtError):
        BvtParams(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("ns", [0, 99_999, 1_000_000_001, -1, 2.5, None])
def test_bad_context_switch_allowance_is_refused(ns: object) -> None:
    with pytest.raises(BvtError):
        check_ctx_allow(ns)  # type: ignore[arg-type]
    with pytest.raises(BvtError):
        Bvt([0], ctx_allow_ns=ns)  # type: ignore[arg-type]


@pytest.mark.parametrize("cores", [[], [0, 0], [-1], [True]])
def test_bad_cores_are_refused(cores: list[int]) -> None:
    with pytest.raises(BvtError):
        Bvt(cores)


def test_a_slice_that_ends_is_not_a_wake() -> None:
    """A CPU-bound domain that gives its core back at each slice's end and waits again at once neither
    warps anew nor catches up to svt: with warp and no unwarp requirement it still gets its weight's share."""
    b = Bvt([0])
    sim = Sim(b, kick_ns=MS)
    b.add("w", BvtParams(weight=100, warp_ns=10 * MS, warp_limit_ns=20 * MS))
    b.add("x", BvtParams(weight=300))
    sim.busy("w")
    sim.busy("x")
    sim.run(20_000 * MS)
    w, x = shares(b, sim.now, "w", "x")
    assert abs(w - 0.25) < 0.01
    assert not b.warped("w", sim.now)  # its one warp ran out after 20 ms and never came back


def test_done_again_keeps_the_credit_a_wake_would_lose() -> None:
    """Domain 0 decides between a vCPU's done and its next want: had the slice's end counted as a block,
    the next want would be a wake and lift its avt to svt, the other domain's, losing its lead."""
    def after(again: bool) -> tuple[int, int]:
        b = Bvt([0])
        b.add("ahead")
        b.add("behind")
        b.want("ahead", 0, 0)
        g = b.decide(0).grants[0]
        b.done("ahead", 0, g.seq, 100 * MS)     # ahead ran 100 ms, then sleeps
        b.want("behind", 0, 100 * MS)
        g = b.decide(100 * MS).grants[0]
        b.want("ahead", 0, 101 * MS)
        b.done("behind", 0, g.seq, 110 * MS, again=again)  # behind ran 10 ms: still 90 ms behind
        b.decide(110 * MS)
        if not again:
            b.want("behind", 0, 110 * MS)
        return b.avt("behind", 110 * MS), b.avt("ahead", 110 * MS)
    behind, ahead = after(again=True)
    assert behind < ahead                        # kept its lead
    behind, ahead = after(again=False)
    assert behind == ahead                       # a wake would have lifted it to svt


def test_a_halted_vcpu_keeps_its_core_idle_until_someone_waits() -> None:
    b = Bvt([0])
    b.add("io", BvtParams(warp_ns=50 * MS, warp_limit_ns=10 * MS))
    b.add("hog")
    b.want("io", 0, 0)
    g = b.decide(0).grants[0]
    assert b.idle("io", 0, g.seq, 2 * MS)          # halts after 2 ms, keeps the core
    assert not b.warped("io", 2 * MS)              # an idle domain is blocked: no warp
    assert b.decide(50 * MS).next_ns is None       # nobody waits: nothing to do
    assert b.granted_ns("io", 50 * MS) == 2 * MS   # idle time is not charged
    assert b.busy("io", 0, g.seq, 60 * MS)         # wakes on its core: a wake (it warps again)
    assert b.warped("io", 60 * MS)
    assert b.idle("io", 0, g.seq, 61 * MS)
    assert not b.busy("io", 0, g.seq + 1, 62 * MS) and not b.idle("io", 0, g.seq, 62 * MS)  # stale, twice
    b.want("hog", 0, 70 * MS)
    d = b.decide(70 * MS)
    assert d.revokes == [g] and not d.grants       # the idle core is taken back at once
    assert b.done("io", 0, g.seq, 70 * MS)
    d = b.decide(70 * MS)
    assert [x.dom for x in d.grants] == ["hog"]
    assert b.granted_ns("io", 70 * MS) == 3 * MS


def test_idle_holders_do_not_hold_down_the_system_virtual_time() -> None:
    b = Bvt([0, 1])
    b.add("idler")
    b.add("hog")
    b.want("idler", 0, 0)
    b.want("hog", 0, 0)
    gs = {g.dom: g for g in b.decide(0).grants}
    b.idle("idler", 0, gs["idler"].seq, 0)
    b.decide(1_000 * MS)
    assert b.svt == b.avt("hog", 1_000 * MS) > 0   # svt follows the runnable domains only
    b.busy("idler", 0, gs["idler"].seq, 1_000 * MS)
    assert b.avt("idler", 1_000 * MS) == b.svt     # its wake: no credit banked while it idled
