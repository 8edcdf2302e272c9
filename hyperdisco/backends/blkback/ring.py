"""The back end of one blkif ring: take requests, check every field, do the I/O, answer.

Everything the frontend wrote is untrusted. A request is copied out of the shared page once, then parsed
and validated from that copy (the guest may change the page meanwhile). Checks follow what blkif.h
promises and what Linux's blkback enforces: nr_segments between 1 and BLKIF_MAX_SEGMENTS_PER_REQUEST
(0 only for flushes and barriers), 1..feature-max-indirect-segments for indirect requests (at most
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST pages), first_sect <= last_sect < 8 in each 4 KiB frame, the sector
range inside the disk, every grant checked by the grant table before its page is touched, no writes to a
read-only disk. A bad request fails alone (BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP for unknown operations);
a producer index more than a ring ahead of our responses (ring.h's RING_REQUEST_PROD_OVERFLOW) means the
ring itself cannot be trusted: RingError, and the device is disconnected.

Notification follows ring.h: after responses are published, the frontend is signalled only if rsp_event
lies in the newly published range (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY); when the ring looks empty we set
req_event = req_cons + 1 and look once more (RING_FINAL_CHECK_FOR_REQUESTS), so a request produced in
between is not missed and the frontend signals us for the next one.

Durability: a flush (BLKIF_OP_FLUSH_DISKCACHE) or barrier (BLKIF_OP_WRITE_BARRIER: flush, write, flush)
is answered only after disk.flush() returned.

Order: requests are taken off the ring in order. With an I/O queue (ioqueue.DomainIoQueue), reads,
writes and discards that have company (more requests behind them, or others still in flight) run on the
shared I/O threads and are answered as they finish, out of order; a lone request is served at once on the
consumer's thread (the common queue-depth-1 case, where a hand-off would only add latency). A flush or
barrier first waits until every request taken before it has been answered (as Linux blkback's
drain_io), then runs alone; requests behind it are taken only after it. Without a queue (unit tests, or
a caller that wants strict order) every request is served in ring order on the consumer's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from ...core.grant import GrantError
from ...core.ratelimit import RateLimiter
from ..back_ring import BackRing, RingError  # noqa: F401  (RingError: re-exported)
from ..disk.base import DiskImage as Disk
from . import abi
from .ioqueue import DomainIoQueue

DEFAULT_MAX_INDIRECT_SEGMENTS = 256  # what Linux blkback offers (MAX_INDIRECT_SEGMENTS)
MAX_PERSISTENT_GRANTS = 4096  # per ring; Linux blkback's default max_persistent_grants is 1056
LOG_INTERVAL_S = 10.0  # one log line per kind of bad request per device per this many seconds
DRAIN_TIMEOUT_S = 60.0  # close() waits this long for requests in flight before it gives up their pages
ORDERED_OPS = (abi.OP_FLUSH_DISKCACHE, abi.OP_WRITE_BARRIER)


class BadRequest(Exception):
    def __init__(self, kind: str, msg: str, status: int = abi.RSP_ERROR) -> None:
        super().__init__(msg)
        self.kind = kind
        self.status = status


class Page(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def u32(self, offset: int) -> int: ...  # ring indices: one access each (core/memory.py)
    def set_u32(self, offset: int, value: int) -> None: ...


class Grants(Protocol):
    def access(self, ref: int, grantee: int, write: bool) -> AbstractContextManager[Page]: ...


@dataclass
class Request:
    op: int  # the operation the response echoes (indirect_op for indirect requests, as blkfront checks)
    id: int
    sector: int
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (gref, first_sect, last_sect)
    nr_sectors: int = 0  # discard
    indirect_grefs: list[int] = field(default_factory=list)
    nr_indirect: int = 0


@dataclass
class RingStats:
    requests: int = 0
    errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    flushes: int = 0
    notifications: int = 0


class BlkRing:
    """One single-page ring (ring-ref). One consumer at a time calls process(); responses are published
    under a lock by whichever thread finished the request."""

    def __init__(self, page: Page, grants: Grants, disk: Disk, notify: Callable[[], None],
                 log: Callable[[str], None], backend_domid: int = 0,
                 max_indirect_segments: int = DEFAULT_MAX_INDIRECT_SEGMENTS,
                 clock: Callable[[], float] = time.monotonic, persistent: bool = False,
                 queue: DomainIoQueue | None = None, wake: Callable[[], None] | None = None) -> None:
        self.page = page
        self.queue = queue
        # called when a request in flight finished, so the consumer can take what it left on the ring
        self.wake = wake or (lambda: None)
        self._lock = threading.Lock()  # responses, stats, in-flight count, persistent grants
        self._drained = threading.Condition(self._lock)
        self.inflight = 0
        # Persistent grants (blkif.h "feature-persistent"): the frontend keeps a pool of pages granted
        # read-write for the life of the connection and copies data through them, so it does not grant
        # and revoke pages per request. Each is checked once, at first use, and held (busy) until close.
        self.persistent = persistent
        self._pgrants: dict[int, Page] = {}
        self._held = ExitStack()
        self.grants = grants
        self.disk = disk
        self.notify = notify
        self.log = log
        self.domid = backend_domid
        self.max_indirect = max_indirect_segments
        self.clock = clock
        self.ring = BackRing(page, abi.REQUEST_SIZE)  # BACK_RING_INIT
        self.stats = RingStats()
        self._limit = RateLimiter(burst=1, rate=1 / LOG_INTERVAL_S, clock=clock)  # by kind of bad request
        self.disk_sectors = disk.size // abi.SECTOR

    def close(self) -> None:
        """Wait for the requests in flight, then release the persistent grants (their busy bits). The
        caller has stopped calling process()."""
        if not self.drain(DRAIN_TIMEOUT_S):
            self._limit.log(self.log, "close",
                            f"{self.inflight} requests still in flight after {DRAIN_TIMEOUT_S:.0f}s at close")
        with self._lock:
            self._pgrants.clear()
            self._held.close()

    def drain(self, timeout: float | None = None) -> bool:
        """Until no request is in flight (True), or `timeout` seconds passed (False)."""
        with self._drained:
            return self._drained.wait_for(lambda: self.inflight == 0, timeout)

    def _grant(self, gref: int, write: bool) -> AbstractContextManager[Page]:
        if self.persistent:
            page = self._pgrants.get(gref)
            if page is None:
                with self._lock:
                    page = self._pgrants.get(gref)
                    if page is None and len(self._pgrants) < MAX_PERSISTENT_GRANTS:
                        try:
                            page = self._held.enter_context(self.grants.access(gref, self.domid, write=True))
                        except GrantError:
                            page = None  # not a read-write grant: used per request, as a non-persistent one
                        else:
                            self._pgrants[gref] = page
            if page is not None:
                return nullcontext(page)
        return self.grants.access(gref, self.domid, write=write)

    # -- the loop ---------------------------------------------------------------------------------------
    @property
    def req_cons(self) -> int:
        return self.ring.req_cons

    def process(self, budget: int) -> bool:
        """Take up to `budget` requests. True if more may be waiting (call again); False when the ring is
        empty and req_event is armed, or when the next request must wait for requests in flight (their
        completion calls `wake`). Raises RingError if the ring is unusable."""
        done = 0
        while True:
            n = self.ring.unconsumed()
            while n:
                if done >= budget:
                    return True
                raw = self.ring.peek()  # one copy: never re-read the guest's page
                if not self._dispatch(raw, alone=n == 1):
                    return False
                n -= 1
                done += 1
            if not self.ring.final_check():
                return False

    def _dispatch(self, raw: bytes, alone: bool) -> bool:
        """Serve the request at req_cons now, or hand it to the I/O queue; False if it must wait."""
        with self._lock:
            inflight = self.inflight
        if raw[0] in ORDERED_OPS and inflight:
            return False  # drain first; the last completion wakes the consumer
        if self.queue is None or raw[0] in ORDERED_OPS or (alone and not inflight):
            self.ring.advance()
            self._respond(*self.handle(raw))
            return True
        if not self.queue.try_start(self.wake):
            return False  # the domain is at its bound
        self.ring.advance()
        with self._lock:
            self.inflight += 1
        self.queue.run(lambda: self._serve_async(raw))
        return True

    def _serve_async(self, raw: bytes) -> None:
        assert self.queue is not None
        try:
            self._respond(*self.handle(raw))
        finally:
            with self._lock:
                self.inflight -= 1
                self._drained.notify_all()
            self.queue.finish()
            self.wake()

    def _respond(self, op: int, rid: int, status: int) -> None:
        with self._lock:
            self.stats.requests += 1
            if status != abi.RSP_OKAY:
                self.stats.errors += 1
            self._publish(rid, op, status)

    def _publish(self, rid: int, op: int, status: int) -> None:
        self.ring.put_response(abi.RESPONSE.pack(rid, op & 0xFF, status))
        if self.ring.push():  # RING_PUSH_RESPONSES_AND_CHECK_NOTIFY
            self.stats.notifications += 1
            self.notify()

    # -- one request ------------------------------------------------------------------------------------
    def handle(self, raw: bytes) -> tuple[int, int, int]:
        """(operation to echo, id, status) for one request; never raises."""
        op, _nseg, _handle, rid, _sector = abi.REQUEST_HEAD.unpack_from(raw)
        echo = raw[1] if op == abi.OP_INDIRECT and raw[1] in (abi.OP_READ, abi.OP_WRITE) else op
        try:
            req = self.parse(raw)
            echo = req.op
            self.execute(op, req)
            return echo, rid, abi.RSP_OKAY
        except BadRequest as e:
            self._complain(e.kind, str(e))
            return echo, rid, e.status
        except GrantError as e:
            self._complain("grant", f"bad grant: {e}")
            return echo, rid, abi.RSP_ERROR
        except (OSError, ValueError) as e:
            self._complain("io", f"{abi.OP_NAMES.get(echo, echo)} at sector {_sector} failed: {e}")
            return echo, rid, abi.RSP_ERROR
        except Exception as e:  # a bug here fails the request, never the backend thread
            self._complain("internal", f"internal error: {e!r}")
            return echo, rid, abi.RSP_ERROR

    def parse(self, raw: bytes) -> Request:
        op, nseg, _handle, rid, sector = abi.REQUEST_HEAD.unpack_from(raw)
        if op in (abi.OP_READ, abi.OP_WRITE, abi.OP_FLUSH_DISKCACHE, abi.OP_WRITE_BARRIER):
            if nseg > abi.MAX_SEGMENTS_PER_REQUEST or (nseg == 0 and op in (abi.OP_READ, abi.OP_WRITE)):
                raise BadRequest("segments", f"{abi.OP_NAMES[op]} with {nseg} segments")
            segs = [abi.SEGMENT.unpack_from(raw, abi.REQUEST_HEAD.size + i * abi.SEGMENT.size)
                    for i in range(nseg)]
            return Request(op, rid, sector, [(g, f, la) for g, f, la in segs])
        if op == abi.OP_DISCARD:
            _op, _flag, _h, _id, sector, nr = abi.DISCARD.unpack_from(raw)
            return Request(op, rid, sector, nr_sectors=nr)
        if op == abi.OP_INDIRECT:
            _op, iop, nseg, rid, sector, _h, *grefs = abi.INDIRECT.unpack_from(raw)
            if iop not in (abi.OP_READ, abi.OP_WRITE):
                raise BadRequest("indirect", f"indirect request for operation {iop}")
            if not 0 < nseg <= self.max_indirect:
                raise BadRequest("segments", f"indirect {abi.OP_NAMES[iop]} with {nseg} segments "
                                             f"(max {self.max_indirect})")
            pages = -(-nseg // abi.SEGMENTS_PER_INDIRECT_PAGE)
            if pages > abi.MAX_INDIRECT_PAGES_PER_REQUEST:
                raise BadRequest("segments", f"indirect request needs {pages} pages")
            return Request(iop, rid, sector, indirect_grefs=list(grefs[:pages]), nr_indirect=nseg)
        raise BadRequest("op", f"unknown operation {op}", abi.RSP_EOPNOTSUPP)

    def _load_indirect(self, req: Request) -> None:
        left = req.nr_indirect
        for gref in req.indirect_grefs:
            n = min(left, abi.SEGMENTS_PER_INDIRECT_PAGE)
            with self._grant(gref, write=False) as page:
                data = page.read(0, n * abi.SEGMENT.size)
            for i in range(n):
                req.segments.append(abi.SEGMENT.unpack_from(data, i * abi.SEGMENT.size))
            left -= n

    def _check_range(self, sector: int, count: int) -> None:
        if sector + count > self.disk_sectors:
            raise BadRequest("range", f"sectors {sector}+{count} beyond the disk "
                                      f"({self.disk_sectors} sectors)")

    def _sectors(self, req: Request) -> int:
        total = 0
        for gref, first, last in req.segments:
            if first > last or last >= abi.SECTORS_PER_PAGE:
                raise BadRequest("segments", f"segment of grant {gref}: sectors {first}..{last}")
            total += last - first + 1
        self._check_range(req.sector, total)
        return total

    def execute(self, op: int, req: Request) -> None:
        if op == abi.OP_INDIRECT:
            self._load_indirect(req)
        disk = self.disk
        if req.op == abi.OP_READ:
            self._sectors(req)
            self._read(req)
        elif req.op == abi.OP_WRITE:
            self._sectors(req)
            self._write(req)
        elif req.op == abi.OP_FLUSH_DISKCACHE:
            if req.segments:  # a flush with data: write it, then make it durable
                self._sectors(req)
                self._write(req)
            self._flush()
        elif req.op == abi.OP_WRITE_BARRIER:
            if req.segments:
                self._sectors(req)
                self._readonly_check()
            self._flush()  # everything before the barrier is durable first
            if req.segments:
                self._write(req)
            self._flush()
        elif req.op == abi.OP_DISCARD:
            self._readonly_check()
            self._check_range(req.sector, req.nr_sectors)
            if req.nr_sectors:
                disk.discard(req.sector * abi.SECTOR, req.nr_sectors * abi.SECTOR)

    def _readonly_check(self) -> None:
        if self.disk.readonly:
            raise BadRequest("readonly", "write to a read-only disk")

    def _flush(self) -> None:
        self.disk.flush()
        with self._lock:
            self.stats.flushes += 1

    def _spans(self, req: Request) -> Iterator[tuple[int, int, int, int]]:
        """(gref, offset in the page, offset in the transfer, length) per segment."""
        pos = 0
        for gref, first, last in req.segments:
            n = (last - first + 1) * abi.SECTOR
            yield gref, first * abi.SECTOR, pos, n
            pos += n

    def _read(self, req: Request) -> None:
        total = sum(n for *_, n in self._spans(req))
        data = self.disk.read(req.sector * abi.SECTOR, total)
        for gref, off, pos, n in self._spans(req):  # the disk is read into the guest's pages
            with self._grant(gref, write=True) as page:
                page.write(off, data[pos:pos + n])
        with self._lock:
            self.stats.bytes_read += total

    def _write(self, req: Request) -> None:
        self._readonly_check()
        parts = []
        for gref, off, _pos, n in self._spans(req):  # every grant is checked before anything is written
            with self._grant(gref, write=False) as page:
                parts.append(page.read(off, n))
        data = b"".join(parts)
        self.disk.write(req.sector * abi.SECTOR, data)
        with self._lock:
            self.stats.bytes_written += len(data)

    # -- logging ----------------------------------------------------------------------------------------
    def _complain(self, kind: str, msg: str) -> None:
        self._limit.log(self.log, kind, f"request failed: {msg}")
