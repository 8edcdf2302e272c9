"""Where block requests run when they need not run in ring order: a few shared I/O threads, and a bound on
how many requests each domain may have in flight at once.

A ring's consumer (the device thread, or the guest's vCPU thread serving inline) takes requests off the
ring in order and hands those that may overlap to these threads, so a slow request (a cold read, a write
that allocates qcow2 clusters) does not hold up the ones behind it and responses go back in the order
the I/O finishes (blkif.h: "responses may be returned out of order"). A domain with many devices cannot
take more than its share: when its bound is reached the consumer stops taking requests off the ring
(they wait there, which the frontend sees as a full queue) until one of the domain's requests finishes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

IO_WORKERS = 4  # threads shared by every domain; os.pread/pwrite release the GIL while the kernel works
MAX_INFLIGHT_PER_DOMAIN = 64  # two full rings' worth (Linux blkback bounds each ring by its 32 slots)


class IoWorkers:
    """A small pool of daemon threads, started on first use."""

    def __init__(self, n: int = IO_WORKERS, log: Callable[[str], None] | None = None) -> None:
        self.n = n
        self._log = log
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        if len(self._threads) < self.n:
            with self._start_lock:
                if len(self._threads) < self.n:
                    t = threading.Thread(target=self._work, name=f"blkio-{len(self._threads)}", daemon=True)
                    self._threads.append(t)
                    t.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception as e:  # a job handles its own errors; this only keeps the thread alive
                if self._log is not None:
                    self._log(f"blkio: internal error: {e!r}")

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class DomainIoQueue:
    """One domain's share of the workers: at most `limit` of its requests in flight."""

    def __init__(self, workers: IoWorkers, limit: int = MAX_INFLIGHT_PER_DOMAIN) -> None:
        self.workers = workers
        self.limit = limit
        self.inflight = 0
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []

    def try_start(self, waiter: Callable[[], None]) -> bool:
        """Reserve a slot. If the domain is at its bound, False, and `waiter` is called once a slot frees."""
        with self._lock:
            if self.inflight >= self.limit:
                if waiter not in self._waiters:
                    self._waiters.append(waiter)
                return False
            self.inflight += 1
            return True

    def run(self, job: Callable[[], None]) -> None:
        """Run `job` (which holds a slot from try_start and calls finish) on a worker."""
        self.workers.submit(job)

    def finish(self) -> None:
        with self._lock:
            self.inflight -= 1
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()
