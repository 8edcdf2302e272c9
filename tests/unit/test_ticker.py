"""The slice stopper: a stop that the engine ignored is repeated until the slice is disarmed."""

from __future__ import annotations

import threading
import time

from hyperdisco.engine.tcg.ticker import Ticker


def test_a_due_slice_is_stopped_again_until_disarmed() -> None:
    tk = Ticker()
    calls: list[float] = []
    third = threading.Event()

    def stop() -> None:  # an engine that was not running yet: the first two stops are lost
        calls.append(time.monotonic())
        if len(calls) == 3:
            third.set()

    tk.arm(1, time.monotonic() + 0.002, stop)
    assert third.wait(2)
    tk.disarm(1)
    n = len(calls)
    time.sleep(0.02)
    assert len(calls) == n  # disarmed: no more stops


def test_a_slice_disarmed_before_its_deadline_is_never_stopped() -> None:
    tk = Ticker()
    calls: list[int] = []
    tk.arm(2, time.monotonic() + 0.05, lambda: calls.append(1))
    tk.disarm(2)
    time.sleep(0.08)
    assert calls == []
