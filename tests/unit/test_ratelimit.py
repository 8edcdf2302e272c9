"""Rate limits on the log lines a guest can cause (core/ratelimit.py), alone and where guests reach them."""

from __future__ import annotations

import threading

import pytest
from test_xenstore import Env, z
from unit_support import DomainHarness

from hyperdisco.backends.xenstore import wire as W
from hyperdisco.core.ratelimit import RateLimiter
from hyperdisco.xen import abi


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines_of(limiter: RateLimiter, key: object, n: int, clock: FakeClock | None = None,
             step: float = 0.0) -> list[str]:
    out: list[str] = []
    for i in range(n):
        limiter.log(out.append, key, f"line {i}")
        if clock is not None:
            clock.now += step
    return out


def test_burst_then_rate_then_the_suppressed_count() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=10, rate=1.0, clock=clock)
    assert lines_of(rl, "k", 100) == [f"line {i}" for i in range(10)]   # the burst, then nothing
    assert rl.suppressed_total == 90
    clock.now += 0.5
    assert not rl.log(lambda m: None, "k", "too soon")
    clock.now += 0.5
    out = lines_of(rl, "k", 5)
    assert out == ["line 0 (91 similar messages suppressed)"]           # one token back after 1 s
    clock.now += 1.0
    assert lines_of(rl, "k", 1) == ["line 0 (4 similar messages suppressed)"]
    clock.now += 1.0
    assert lines_of(rl, "k", 1) == ["line 0"]                           # nothing dropped in between
    clock.now += 1.0
    rl.log(lambda m: None, "k", "x")
    rl.log(lambda m: None, "k", "x")
    clock.now += 1.0
    assert lines_of(rl, "k", 1) == ["line 0 (1 similar message suppressed)"]


def test_tokens_refill_only_up_to_the_burst() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=3, rate=2.0, clock=clock)
    lines_of(rl, "k", 3)
    clock.now += 3600
    assert len(lines_of(rl, "k", 100)) == 3
    clock.now += 1.0                                    # 2 lines a second
    assert len(lines_of(rl, "k", 100)) == 2


def test_keys_are_independent() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=2, rate=1.0, clock=clock)
    assert len(lines_of(rl, (1, "bad buffer"), 50)) == 2
    assert len(lines_of(rl, (2, "bad buffer"), 50)) == 2     # another domain
    assert len(lines_of(rl, (1, "refused"), 50)) == 2        # another kind


def test_a_sustained_flood_is_one_line_a_second_with_counts() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=10, rate=1.0, clock=clock)
    out = lines_of(rl, "k", 100_000, clock, step=0.001)     # 100 s of 1000 lines a second
    assert 105 <= len(out) <= 112
    counted = sum(int(line.split("(")[1].split()[0]) for line in out if "suppressed" in line)
    pending = 100_000 - len(out) - counted                  # dropped after the last line that went through
    assert 0 <= pending < 1000


def test_a_clock_going_backwards_gives_no_tokens() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=1, rate=1.0, clock=clock)
    assert len(lines_of(rl, "k", 5)) == 1
    clock.now -= 100
    assert len(lines_of(rl, "k", 5)) == 0
    clock.now += 1
    assert len(lines_of(rl, "k", 5)) == 1


def test_many_keys_are_forgotten_once_quiet_but_counts_are_kept() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=1, rate=1.0, clock=clock, max_keys=8)
    lines_of(rl, "loud", 5)                                  # 4 suppressed, owed to the next line
    for i in range(100):
        rl.log(lambda m: None, ("quiet", i), "x")
        clock.now += 0.01
    assert len(rl._buckets) <= 8
    clock.now += 0.01
    # "loud" owed a count: kept while quiet keys were dropped, unless it was among the oldest half
    out = lines_of(rl, "loud", 1)
    assert out in (["line 0 (4 similar messages suppressed)"], ["line 0"])


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst=0)
    with pytest.raises(ValueError):
        RateLimiter(rate=0)


def test_threads_share_one_limit() -> None:
    rl = RateLimiter(burst=10, rate=1e-9)
    written: list[str] = []
    lock = threading.Lock()

    def writer(msg: str) -> None:
        with lock:
            written.append(msg)

    def hammer() -> None:
        for _ in range(2000):
            rl.log(writer, "k", "x")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(written) == 10 and rl.suppressed_total == 8000 - 10


# -- where guests reach it


def test_hypercalls_with_bad_buffers_cannot_flood_the_log(dh: DomainHarness) -> None:
    clock = FakeClock()
    dh.dom.hypercalls.limit.clock = clock
    unmapped = 1 << 47
    for _ in range(10_000):
        assert dh.call("xen_version", abi.XENVER_extraversion, unmapped) == -abi.EFAULT
        clock.now += 0.001                                   # 10 000 calls in 10 s
    faults = [m for m in dh.logs if "bad guest buffer" in m]
    assert 15 <= len(faults) <= 25                           # a burst of 10, then one a second
    assert all(m.startswith("(d1) xen_version: bad guest buffer") for m in faults)
    counts = [int(m.split("(")[-1].split()[0]) for m in faults if "similar messages suppressed" in m]
    assert len(counts) == len(faults) - 10 and all(c >= 900 for c in counts)
    assert 10_000 - len(faults) - sum(counts) < 1000        # the rest is owed to the next line
    assert not dh.dom.finished
    # unknown hypercalls are logged once per number, and not without limit either
    for nr in set(range(40)) - set(dh.dom.hypercalls.table):
        for cmd in range(64):
            assert dh.call(nr, cmd) == -abi.ENOSYS
    assert sum("not implemented" in m for m in dh.logs) <= 10


def test_refused_xenstore_requests_cannot_flood_the_log() -> None:
    env = Env()
    try:
        g = env.guest(1)
        for _ in range(2000):
            assert g.err(W.XS_READ, z("/bad//path")) == "EINVAL"
        refused = [line for line in env.logs if "dom1" in line and "refused" in line]
        assert 1 <= len(refused) <= 11
        assert env.xs.limit.suppressed_total >= 1989
    finally:
        env.close()
