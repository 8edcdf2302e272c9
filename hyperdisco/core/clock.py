"""Time: the host TSC as the guest sees it, Xen system time (ns) and the pvclock scale between them."""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """Converts the guest TSC into Xen system time: nanoseconds since this clock was made.

    The scale is the one pvclock publishes (system_time = ((tsc - tsc0) * mul) >> 32 with shift 0), so
    the hypervisor and the guest compute exactly the same time from the same TSC value.
    """

    def __init__(self, tsc: Callable[[], int], calibrate_s: float = 0.05,
                 params: dict[str, float] | None = None) -> None:
        self.tsc = tsc
        if params is not None:  # the same clock another process calibrated (domain 0's, for all domains)
            self.tsc_hz, self.shift = float(params["tsc_hz"]), int(params["shift"])
            self.mul = int(params["mul"])
            self.tsc0, self.mono0 = int(params["tsc0"]), float(params["mono0"])
            return
        t0, c0 = self._pair()
        time.sleep(calibrate_s)
        t1, c1 = self._pair()
        self.tsc_hz = (c1 - c0) / (t1 - t0)
        self.shift = 0
        mul = int((1e9 / self.tsc_hz) * (1 << 32))
        while mul >= 1 << 32:  # a TSC slower than 1 GHz needs a positive shift
            self.shift += 1
            mul = int((1e9 / self.tsc_hz) * (1 << (32 - self.shift)))
        self.mul = mul
        self.tsc0 = tsc()
        self.mono0 = time.monotonic()

    def _pair(self) -> tuple[float, int]:
        """(host seconds, TSC) read as close together as possible: the tightest of a few brackets, so
        that a preemption during calibration does not skew the guest's clock rate."""
        best: tuple[int, float, int] | None = None
        for _ in range(16):
            p0 = time.perf_counter_ns()
            c = self.tsc()
            p1 = time.perf_counter_ns()
            if best is None or p1 - p0 < best[0]:
                best = (p1 - p0, (p0 + p1) / 2e9, c)
        assert best is not None
        return best[1], best[2]

    def params(self) -> dict[str, float]:
        """What another process needs to run this same clock (CLOCK_MONOTONIC and the TSC are host-wide)."""
        return {"tsc_hz": self.tsc_hz, "shift": self.shift, "mul": self.mul, "tsc0": self.tsc0,
                "mono0": self.mono0}

    def ns_at(self, tsc: int) -> int:
        d = tsc - self.tsc0
        if self.shift >= 0:
            d <<= self.shift
        return (d * self.mul) >> 32

    def now_ns(self) -> int:
        return self.ns_at(self.tsc())

    def mono_at(self, tsc: int) -> float:
        """The host's time.monotonic() at which the TSC read `tsc`."""
        return self.mono0 + self.ns_at(tsc) / 1e9

    def tsc_khz(self) -> int:
        return int(self.tsc_hz / 1000)

    def wallclock_at_zero(self) -> tuple[int, int]:
        """Wall-clock time (s, ns) at system time 0, for shared_info's wc_sec/wc_nsec."""
        boot = time.time() - self.now_ns() / 1e9
        sec = int(boot)
        return sec, int((boot - sec) * 1e9)
