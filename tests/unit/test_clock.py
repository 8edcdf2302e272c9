"""Clock: Xen system time from the TSC, with the pvclock mul/shift the guest uses."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from hyperdisco.core.clock import Clock


def fake_tsc(hz: float) -> Callable[[], int]:
    t0 = time.perf_counter_ns()
    return lambda: 1_000_000 + int((time.perf_counter_ns() - t0) * hz / 1e9)


def pvclock_ns(clock: Clock, tsc: int) -> int:
    """Linux's pvclock_scale_delta() over the parameters the hypervisor publishes."""
    delta = tsc - clock.tsc0
    delta = delta << clock.shift if clock.shift >= 0 else delta >> -clock.shift
    return (delta * clock.mul) >> 32


@pytest.mark.parametrize("hz", [3.0e9, 1.0e9 + 1, 2.2e8, 2.5e7, 4.9e9])
def test_mul_shift_reproduce_rate(hz: float) -> None:
    c = Clock(fake_tsc(hz), calibrate_s=0.02)
    assert c.tsc_hz == pytest.approx(hz, rel=0.01)
    assert 0 < c.mul < 1 << 32
    assert 0 <= c.shift < 64
    one_second = c.ns_at(c.tsc0 + int(hz))
    assert one_second == pytest.approx(1e9, rel=0.01)
    assert c.tsc_khz() == pytest.approx(hz / 1000, rel=0.01)


def test_slow_tsc_needs_positive_shift() -> None:
    c = Clock(fake_tsc(1e8), calibrate_s=0.01)
    assert c.shift > 0
    assert Clock(fake_tsc(3e9), calibrate_s=0.01).shift == 0


@pytest.mark.parametrize("hz", [3.0e9, 1e8])
def test_guest_computes_the_same_time(hz: float) -> None:
    c = Clock(fake_tsc(hz), calibrate_s=0.01)
    for d in (0, 1, 12345, 10**9, 10**12, 1 << 40):
        assert c.ns_at(c.tsc0 + d) == pvclock_ns(c, c.tsc0 + d)


def test_ns_at_monotonic() -> None:
    c = Clock(fake_tsc(2.7e9), calibrate_s=0.01)
    prev = -1
    for tsc in range(c.tsc0, c.tsc0 + 10**7, 9973):
        ns = c.ns_at(tsc)
        assert ns >= prev
        prev = ns
    assert c.ns_at(c.tsc0) == 0


def test_now_ns_advances_with_real_time() -> None:
    c = Clock(fake_tsc(3e9), calibrate_s=0.01)
    a, t0 = c.now_ns(), time.perf_counter_ns()
    time.sleep(0.05)
    b, t1 = c.now_ns(), time.perf_counter_ns()
    assert b > a
    assert (b - a) == pytest.approx(t1 - t0, rel=0.05)


def test_real_engine_tsc() -> None:
    from hyperdisco.engine.tcg.engine import host_tsc

    c = Clock(host_tsc, calibrate_s=0.02)
    assert c.tsc_hz > 1e8
    t0 = time.perf_counter()
    a = c.now_ns()
    time.sleep(0.02)
    b = c.now_ns()
    assert (b - a) / 1e9 == pytest.approx(time.perf_counter() - t0, rel=0.1)
    ns_at_mono = c.mono_at(c.tsc())
    assert ns_at_mono == pytest.approx(time.monotonic(), abs=0.05)


def test_wallclock_at_zero() -> None:
    c = Clock(fake_tsc(3e9), calibrate_s=0.01)
    sec, nsec = c.wallclock_at_zero()
    assert 0 <= nsec < 10**9
    assert sec + nsec / 1e9 + c.now_ns() / 1e9 == pytest.approx(time.time(), abs=0.05)
