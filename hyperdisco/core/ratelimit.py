"""Rate limits for the log lines a guest can cause.

A guest decides how often it makes a bad hypercall, breaks its xenstore ring or fails a disk request; if
each of those wrote a line, one guest could fill the log (and every other domain's share of it) at the
speed of its vCPUs. Every such line goes through a :class:`RateLimiter`: a token bucket per key -- a
(domain, kind) pair, or just a kind for a limiter that already belongs to one domain -- that lets a burst
of ``burst`` lines through, then ``rate`` lines a second. What it holds back is counted, and the next line
of that key that goes through says so: ``... (41 similar messages suppressed)``.

The kind is always a fixed string chosen by the call site, never text from the guest, so the number of keys
is bounded by the code; a limiter still forgets keys that have gone quiet once it holds ``max_keys``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

BURST = 10          # lines let through at once before the rate applies
RATE = 1.0          # lines a second after that, per key
MAX_KEYS = 4096


@dataclass
class _Bucket:
    tokens: float
    stamp: float        # when tokens was last brought up to date
    suppressed: int = 0


class RateLimiter:
    """Token buckets by key; thread-safe. ``clock`` (seconds, monotonic) is injectable for tests."""

    def __init__(self, burst: int = BURST, rate: float = RATE,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError("a rate limiter needs burst >= 1 and rate > 0")
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}
        self._lock = threading.Lock()
        self.suppressed_total = 0

    def allow(self, key: Hashable) -> int | None:
        """Take a token for ``key``: None if the line must be dropped (it is counted), else how many lines
        of this key were dropped since the last one let through (usually 0)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._forget_quiet(now)
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            else:
                elapsed = max(0.0, now - bucket.stamp)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
                bucket.stamp = now
            if bucket.tokens < 1.0:
                bucket.suppressed += 1
                self.suppressed_total += 1
                return None
            bucket.tokens -= 1.0
            dropped, bucket.suppressed = bucket.suppressed, 0
            return dropped

    def log(self, log: Callable[[str], None], key: Hashable, msg: str) -> bool:
        """Write ``msg`` with ``log`` unless ``key`` is over its rate; True if it was written."""
        dropped = self.allow(key)
        if dropped is None:
            return False
        if dropped:
            msg += f" ({dropped} similar message{'s' if dropped != 1 else ''} suppressed)"
        log(msg)
        return True

    def _forget_quiet(self, now: float) -> None:
        """Drop the buckets that have refilled and owe no count; the oldest half if that is not enough."""
        full = [k for k, b in self._buckets.items()
                if not b.suppressed and b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            for k in sorted(self._buckets, key=lambda k: self._buckets[k].stamp)[:len(self._buckets) // 2]:
                del self._buckets[k]
