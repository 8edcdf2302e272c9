"""One host thread that ends running vCPUs' time slices at their deadlines.

A stop can be lost: unicorn's uc_emu_stop() does nothing while the engine is between two uc_emu_start()
calls, and uc_emu_start() clears a stop request as it begins. A deadline that passes while the vCPU thread
is still on its way into uc_emu_start() (a 50 µs slice, a busy host) would leave the slice running until
the guest itself exits, and a guest spinning on a timer interrupt never does. So a due slice is stopped
again every RETRY_S until its vCPU disarms it on return.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RETRY_S = 0.001


class Ticker:
    """Calls a vCPU's stop function once its slice deadline passes, unless the slice ended first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Callable[[], None]]] = {}
        self._wakes_at = float("inf")  # when the ticker thread will next look, if nobody notifies it
        self._thread = threading.Thread(target=self._loop, name="hd-ticker", daemon=True)
        self._thread.start()

    def arm(self, key: int, deadline: float, stop: Callable[[], None]) -> None:
        with self._cond:
            self._armed[key] = (deadline, stop)
            # wake the thread only if it would look too late: most slices end before their deadline, and
            # a thread switch per slice costs more than the rare spurious wake-up this saves
            if deadline < self._wakes_at:
                self._cond.notify()

    def disarm(self, key: int) -> None:
        with self._cond:
            self._armed.pop(key, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                due = [(k, stop) for k, (d, stop) in self._armed.items() if d <= now]
                for k, stop in due:
                    self._armed[k] = (now + RETRY_S, stop)  # until disarm(): see the module's docstring
                    stop()
                nxt = min((d for d, _ in self._armed.values()), default=None)
                self._wakes_at = float("inf") if nxt is None else nxt
                self._cond.wait(None if nxt is None else max(0.0, nxt - now))
                self._wakes_at = 0.0  # awake: arm() need not notify until we wait again


_ticker: Ticker | None = None
_lock = threading.Lock()


def ticker() -> Ticker:
    global _ticker
    with _lock:
        if _ticker is None:
            _ticker = Ticker()
        return _ticker
