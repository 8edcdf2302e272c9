"""The blkif ring back end against a real domain's memory and grant table (the domain never runs)."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from unit_support import DomainHarness

from hyperdisco.backends.blkback import abi
from hyperdisco.backends.blkback.ioqueue import DomainIoQueue, IoWorkers
from hyperdisco.backends.blkback.ring import BlkRing, RingError
from hyperdisco.core.grant import GRANT_ENTRY_V1, GTF_permit_access, GTF_readonly
from hyperdisco.xen import abi as xen_abi

GRANT_GPFN = 0x3000  # the grant frame, above the 32 MiB test domain's RAM
RING_GPA = 0x500000
DATA_GPA = 0x600000  # data page n at DATA_GPA + n * 4096, granted as ref 10 + n
INDIRECT_GPA = 0x700000  # indirect segment pages, granted as ref 200 + n
RING_REF = 1


class FakeDisk:
    def __init__(self, sectors: int = 256, readonly: bool = False) -> None:
        self.data = bytearray(sectors * 512)
        self.size = len(self.data)
        self.readonly = readonly
        self.calls: list[str] = []
        self.on_flush: list[object] = []

    def read(self, offset: int, length: int) -> bytes:
        self.calls.append(f"read {offset} {length}")
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        assert not self.readonly
        self.calls.append(f"write {offset} {len(data)}")
        self.data[offset:offset + len(data)] = data

    def flush(self) -> None:
        self.calls.append("flush")

    def discard(self, offset: int, length: int) -> None:
        self.calls.append(f"discard {offset} {length}")


class Rig:
    def __init__(self, dh: DomainHarness, disk: FakeDisk) -> None:
        self.dh = dh
        self.mem = dh.dom.memory
        arg = dh.put(xen_abi.ADD_TO_PHYSMAP, xen_abi.DOMID_SELF, 0, xen_abi.XENMAPSPACE_grant_table, 0,
                     GRANT_GPFN)
        assert dh.call("memory_op", xen_abi.XENMEM_add_to_physmap, arg) == 0
        self.table = GRANT_GPFN << 12
        self.grant(RING_REF, RING_GPA)
        for n in range(64):
            self.grant(10 + n, DATA_GPA + n * 4096)
        for n in range(8):
            self.grant(200 + n, INDIRECT_GPA + n * 4096)
        self.mem.pack(struct.Struct("<IIII"), RING_GPA, 0, 1, 0, 1)  # SHARED_RING_INIT
        self.req_prod = 0
        self.disk = disk
        self.notified = 0
        self.logs: list[str] = []
        self.stack = ExitStack()
        page = self.stack.enter_context(dh.dom.grants.access(RING_REF, 0, write=True))
        self.ring = BlkRing(page, dh.dom.grants, disk, self.notify, self.logs.append)

    def notify(self) -> None:
        self.notified += 1

    def grant(self, ref: int, gpa: int, flags: int = GTF_permit_access, domid: int = 0) -> None:
        self.mem.pack(GRANT_ENTRY_V1, self.table + ref * 8, flags, domid, gpa >> 12)

    def idx(self, off: int) -> int:
        return self.mem.u32(RING_GPA + off)

    def slot(self, i: int) -> int:
        return RING_GPA + abi.RING_HEADER + (i % abi.RING_SIZE) * abi.REQUEST_SIZE

    def put(self, raw: bytes, publish: bool = True) -> int:
        i = self.req_prod
        self.mem.write(self.slot(i), raw.ljust(abi.REQUEST_SIZE, b"\0"))
        self.req_prod += 1
        if publish:
            self.mem.set_u32(RING_GPA + abi.REQ_PROD, self.req_prod)
        return i

    def rw(self, op: int, sector: int, segs: list[tuple[int, int, int]], rid: int = 7) -> int:
        raw = abi.REQUEST_HEAD.pack(op, len(segs), 0, rid, sector)
        raw += b"".join(abi.SEGMENT.pack(*s) for s in segs)
        return self.put(raw)

    def response(self, i: int) -> tuple[int, int, int]:
        rid, op, status = abi.RESPONSE.unpack(self.mem.read(self.slot(i), abi.RESPONSE.size))
        return rid, op, status

    def run(self) -> None:
        assert self.ring.process(1000) is False


@pytest.fixture
def rig(dh: DomainHarness) -> Iterator[Rig]:
    r = Rig(dh, FakeDisk())
    yield r
    r.stack.close()


def test_ring_geometry() -> None:
    assert abi.RING_SIZE == 32 and abi.REQUEST_SIZE == 112 and abi.RESPONSE.size == 16
    assert abi.INDIRECT.size <= abi.REQUEST_SIZE and abi.DISCARD.size <= abi.REQUEST_SIZE
    assert abi.vdev_to_devid("xvda") == 51712 and abi.vdev_to_devid("xvdb") == 51728
    assert abi.vdev_to_devid("xvdq") == (1 << 28) | (16 << 8)
    assert abi.devid_to_vdev(51728) == "xvdb" and abi.devid_to_vdev(abi.vdev_to_devid("xvdaa")) == "xvdaa"


def test_write_then_read_through_grants(rig: Rig) -> None:
    rig.mem.write(DATA_GPA, b"A" * 4096)
    rig.mem.write(DATA_GPA + 4096, b"B" * 4096)
    i = rig.rw(abi.OP_WRITE, 8, [(10, 0, 7), (11, 2, 3)], rid=0x1122334455667788)
    rig.run()
    assert rig.response(i) == (0x1122334455667788, abi.OP_WRITE, abi.RSP_OKAY)
    assert rig.disk.data[8 * 512:16 * 512] == b"A" * 4096
    assert rig.disk.data[16 * 512:18 * 512] == b"B" * 1024
    assert rig.disk.calls == [f"write {8 * 512} {4096 + 1024}"]
    j = rig.rw(abi.OP_READ, 12, [(12, 1, 2)], rid=9)
    rig.run()
    assert rig.response(j) == (9, abi.OP_READ, abi.RSP_OKAY)
    assert rig.mem.read(DATA_GPA + 2 * 4096 + 512, 1024) == b"A" * 1024
    assert rig.mem.read(DATA_GPA + 2 * 4096, 512) == bytes(512)  # outside first..last: untouched
    assert rig.idx(abi.RSP_PROD) == 2
    assert rig.idx(abi.REQ_EVENT) == 3  # RING_FINAL_CHECK_FOR_REQUESTS armed req_event = req_cons + 1


def test_notify_only_when_rsp_event_is_crossed(rig: Rig) -> None:
    rig.rw(abi.OP_READ, 0, [(10, 0, 0)])
    rig.run()
    assert rig.notified == 1  # rsp_event 1 was crossed
    rig.mem.set_u32(RING_GPA + abi.RSP_EVENT, 10)  # the frontend is not waiting for the next few
    for _ in range(3):
        rig.rw(abi.OP_READ, 0, [(10, 0, 0)])
    rig.run()
    assert rig.notified == 1
    for _ in range(6):
        rig.rw(abi.OP_READ, 0, [(10, 0, 0)])
    rig.run()
    assert rig.notified == 2 and rig.idx(abi.RSP_PROD) == 10


def test_budget_and_the_final_check(rig: Rig) -> None:
    rig.rw(abi.OP_READ, 0, [(10, 0, 0)])
    rig.rw(abi.OP_READ, 0, [(10, 0, 0)])
    assert rig.ring.process(1) is True  # budget spent, more waiting: the caller comes back
    assert rig.idx(abi.RSP_PROD) == 1
    # a request published just as req_event is armed is still seen (RING_FINAL_CHECK_FOR_REQUESTS)
    page = rig.ring.ring.page
    set_index = page.set_u32
    late = [abi.REQUEST_HEAD.pack(abi.OP_READ, 1, 0, 3, 0) + abi.SEGMENT.pack(10, 0, 0)]

    def racing_set(off: int, value: int) -> None:
        set_index(off, value)
        if off == abi.REQ_EVENT and late:
            rig.put(late.pop())

    page.set_u32 = racing_set  # type: ignore[method-assign]
    rig.run()
    assert rig.idx(abi.RSP_PROD) == 3 and rig.idx(abi.REQ_EVENT) == 4


def test_producer_more_than_a_ring_ahead_breaks_the_ring(rig: Rig) -> None:
    rig.mem.set_u32(RING_GPA + abi.REQ_PROD, abi.RING_SIZE + 1)
    with pytest.raises(RingError):
        rig.ring.process(100)
    assert rig.disk.calls == []
    rig.mem.set_u32(RING_GPA + abi.REQ_PROD, 0xFFFFFFFF)  # "behind" us is far ahead modulo 2^32
    with pytest.raises(RingError):
        rig.ring.process(100)


@pytest.mark.parametrize(("op", "segs"), [
    (abi.OP_READ, []),                       # no segments
    (abi.OP_WRITE, [(10, 0, 7)] * 12),       # more than 11
    (abi.OP_READ, [(10, 4, 3)]),             # first_sect > last_sect
    (abi.OP_WRITE, [(10, 0, 8)]),            # last_sect beyond the 4 KiB frame
])
def test_bad_segments_fail_that_request_only(rig: Rig, op: int, segs: list[tuple[int, int, int]]) -> None:
    raw = abi.REQUEST_HEAD.pack(op, len(segs), 0, 5, 0) + b"".join(abi.SEGMENT.pack(*s) for s in segs)
    bad = rig.put(raw[:abi.REQUEST_SIZE])
    good = rig.rw(abi.OP_READ, 0, [(10, 0, 0)], rid=6)
    rig.run()
    assert rig.response(bad) == (5, op, abi.RSP_ERROR)
    assert rig.response(good) == (6, abi.OP_READ, abi.RSP_OKAY)
    assert not any(c.startswith("write") for c in rig.disk.calls)
    assert len(rig.logs) == 1 and "segment" in rig.logs[0]


def test_sectors_beyond_the_disk(rig: Rig) -> None:
    last = rig.disk.size // 512
    ok = rig.rw(abi.OP_WRITE, last - 8, [(10, 0, 7)])
    over = rig.rw(abi.OP_WRITE, last - 7, [(10, 0, 7)])
    huge = rig.rw(abi.OP_READ, (1 << 64) - 1, [(10, 0, 0)])
    disc = rig.put(abi.DISCARD.pack(abi.OP_DISCARD, 0, 0, 3, last - 1, 2))
    rig.run()
    assert [rig.response(i)[2] for i in (ok, over, huge, disc)] == [0, -1, -1, -1]
    assert rig.disk.calls == [f"write {(last - 8) * 512} 4096"]


def test_bad_grants_fail_the_request(rig: Rig) -> None:
    rig.grant(20, DATA_GPA, flags=0)                                  # not granted
    rig.grant(21, DATA_GPA, domid=5)                                  # granted to someone else
    rig.grant(22, DATA_GPA, flags=GTF_permit_access | GTF_readonly)  # a read would write into it
    rig.grant(23, 0xFEE00000)                                         # not the guest's RAM
    reqs = [rig.rw(abi.OP_WRITE, 0, [(10, 0, 7), (20, 0, 7)]),
            rig.rw(abi.OP_WRITE, 0, [(21, 0, 0)]),
            rig.rw(abi.OP_READ, 0, [(22, 0, 0)]),
            rig.rw(abi.OP_READ, 0, [(23, 0, 0)]),
            rig.rw(abi.OP_READ, 0, [(99999, 0, 0)])]               # beyond the table
    rig.run()
    assert [rig.response(i)[2] for i in reqs] == [-1] * 5
    assert not any(c.startswith("write") for c in rig.disk.calls)  # nothing written by a half-good write
    assert len(rig.logs) == 1 and "grant" in rig.logs[0]  # rate-limited: one line per kind


def test_read_only_disk(dh: DomainHarness) -> None:
    rig = Rig(dh, FakeDisk(readonly=True))
    w = rig.rw(abi.OP_WRITE, 0, [(10, 0, 0)])
    b = rig.rw(abi.OP_WRITE_BARRIER, 0, [(10, 0, 0)])
    d = rig.put(abi.DISCARD.pack(abi.OP_DISCARD, 0, 0, 3, 0, 1))
    r = rig.rw(abi.OP_READ, 0, [(10, 0, 0)])
    f = rig.rw(abi.OP_FLUSH_DISKCACHE, 0, [])
    rig.run()
    assert [rig.response(i)[2] for i in (w, b, d, r, f)] == [-1, -1, -1, 0, 0]
    assert not any(c.startswith(("write", "discard")) for c in rig.disk.calls)
    rig.stack.close()


def test_unknown_operations_are_not_supported(rig: Rig) -> None:
    i = rig.put(abi.REQUEST_HEAD.pack(abi.OP_RESERVED_1, 0, 0, 4, 0))
    j = rig.put(abi.REQUEST_HEAD.pack(0xEE, 1, 0, 5, 0))
    rig.run()
    assert rig.response(i) == (4, abi.OP_RESERVED_1, abi.RSP_EOPNOTSUPP)
    assert rig.response(j) == (5, 0xEE, abi.RSP_EOPNOTSUPP)


def test_flush_completes_only_after_disk_flush(rig: Rig) -> None:
    seen: list[int] = []
    orig = rig.disk.flush

    def flush() -> None:
        seen.append(rig.idx(abi.RSP_PROD))  # the response is not published yet
        orig()

    rig.disk.flush = flush  # type: ignore[method-assign]
    i = rig.rw(abi.OP_FLUSH_DISKCACHE, 0, [])
    rig.run()
    assert seen == [0] and rig.response(i)[2] == 0 and rig.idx(abi.RSP_PROD) == 1
    rig.disk.calls.clear()
    j = rig.rw(abi.OP_WRITE_BARRIER, 4, [(10, 0, 1)])
    rig.run()
    assert rig.disk.calls == ["flush", f"write {4 * 512} 1024", "flush"] and rig.response(j)[2] == 0
    assert seen == [0, 1, 1]


def test_discard(rig: Rig) -> None:
    i = rig.put(abi.DISCARD.pack(abi.OP_DISCARD, 0, 0, 3, 16, 8))
    rig.run()
    assert rig.response(i) == (3, abi.OP_DISCARD, 0)
    assert rig.disk.calls == [f"discard {16 * 512} 4096"]


def _indirect(rig: Rig, op: int, sector: int, nseg: int, rid: int = 11) -> int:
    segs = b"".join(abi.SEGMENT.pack(10 + n % 64, 0, 7) for n in range(nseg))
    for p in range(0, len(segs), 4096):
        rig.mem.write(INDIRECT_GPA + p, segs[p:p + 4096])
    grefs = [200 + n for n in range(8)]
    return rig.put(abi.INDIRECT.pack(abi.OP_INDIRECT, op, nseg, rid, sector, 0, *grefs))


def test_indirect_requests(rig: Rig) -> None:
    for n in range(20):
        rig.mem.write(DATA_GPA + n * 4096, bytes([n]) * 4096)
    w = _indirect(rig, abi.OP_WRITE, 0, 20)
    rig.run()
    assert rig.response(w) == (11, abi.OP_WRITE, 0)  # the response echoes indirect_op, as blkfront wants
    assert rig.disk.data[19 * 4096:20 * 4096] == bytes([19]) * 4096
    for n in range(20):
        rig.mem.write(DATA_GPA + n * 4096, bytes(4096))
    r = _indirect(rig, abi.OP_READ, 0, 20, rid=12)
    rig.run()
    assert rig.response(r) == (12, abi.OP_READ, 0)
    assert rig.mem.read(DATA_GPA + 7 * 4096, 4096) == bytes([7]) * 4096


@pytest.mark.parametrize(("op", "nseg"), [(abi.OP_READ, 0), (abi.OP_READ, 257), (abi.OP_FLUSH_DISKCACHE, 1)])
def test_bad_indirect_requests(rig: Rig, op: int, nseg: int) -> None:
    i = _indirect(rig, op, 0, nseg)
    rig.run()
    assert rig.response(i)[2] == abi.RSP_ERROR
    assert rig.disk.calls == []


def test_bad_indirect_page_grant(rig: Rig) -> None:
    rig.grant(200, INDIRECT_GPA, flags=0)
    i = _indirect(rig, abi.OP_READ, 0, 4)
    rig.run()
    assert rig.response(i)[2] == abi.RSP_ERROR


def test_garbage_never_escapes(rig: Rig) -> None:
    import random
    rnd = random.Random(4)
    for _ in range(200):
        rig.put(bytes(rnd.randrange(256) for _ in range(abi.REQUEST_SIZE)))
        if rig.req_prod % abi.RING_SIZE == 0:
            rig.run()
    rig.run()
    assert rig.idx(abi.RSP_PROD) == 200
    assert len(rig.logs) <= 8


def test_persistent_grants_are_checked_once_and_held_until_close(rig: Rig) -> None:
    from hyperdisco.core.grant import GTF_reading, GTF_writing

    rig.ring.persistent = True
    rig.mem.write(DATA_GPA, b"P" * 4096)
    i = rig.rw(abi.OP_WRITE, 0, [(10, 0, 7)])
    rig.run()
    assert rig.response(i)[2] == abi.RSP_OKAY and rig.disk.data[:4096] == b"P" * 4096
    flags = rig.mem.unpack(GRANT_ENTRY_V1, rig.table + 10 * 8)[0]
    assert flags & GTF_reading and flags & GTF_writing  # held busy between requests
    j = rig.rw(abi.OP_READ, 0, [(10, 0, 0)])
    rig.run()
    assert rig.response(j)[2] == abi.RSP_OKAY
    # a read-only grant is not made persistent: it is used per request, and writing into it fails
    rig.grant(11, DATA_GPA + 4096, GTF_permit_access | GTF_readonly)
    k = rig.rw(abi.OP_READ, 0, [(11, 0, 0)])
    rig.run()
    assert rig.response(k)[2] == abi.RSP_ERROR
    rig.ring.close()
    flags = rig.mem.unpack(GRANT_ENTRY_V1, rig.table + 10 * 8)[0]
    assert not flags & (GTF_reading | GTF_writing)  # released at disconnect


# -- out-of-order completion through the I/O queue ------------------------------------------------------
class GatedDisk(FakeDisk):
    """Reads of sector 0 wait until the test opens the gate: a slow request."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def read(self, offset: int, length: int) -> bytes:
        if offset == 0:
            self.entered.set()
            assert self.gate.wait(5)
        return super().read(offset, length)


@pytest.fixture
def qrig(dh: DomainHarness) -> Iterator[tuple[Rig, DomainIoQueue]]:
    r = Rig(dh, GatedDisk())
    workers = IoWorkers(2)
    q = DomainIoQueue(workers, limit=2)
    wakes = threading.Semaphore(0)
    r.ring.queue, r.ring.wake = q, wakes.release
    yield r, q
    assert isinstance(r.disk, GatedDisk)
    r.disk.gate.set()
    r.ring.close()
    workers.shutdown()
    r.stack.close()


def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_slow_request_does_not_hold_up_the_ones_behind_it(qrig: tuple[Rig, DomainIoQueue]) -> None:
    rig, q = qrig
    assert isinstance(rig.disk, GatedDisk)
    rig.rw(abi.OP_READ, 0, [(10, 0, 7)], rid=1)  # slow
    rig.rw(abi.OP_READ, 8, [(11, 0, 7)], rid=2)
    assert rig.ring.process(1000) is False
    until(lambda: rig.idx(abi.RSP_PROD) == 1)
    assert rig.response(0) == (2, abi.OP_READ, abi.RSP_OKAY)  # the second answered first
    assert rig.disk.entered.is_set() and rig.ring.inflight == 1
    rig.disk.gate.set()
    until(lambda: rig.idx(abi.RSP_PROD) == 2)
    assert rig.response(1) == (1, abi.OP_READ, abi.RSP_OKAY)
    until(lambda: q.inflight == 0 and rig.ring.inflight == 0)
    assert rig.ring.stats.requests == 2 and rig.ring.stats.errors == 0


def test_the_domain_bound_leaves_requests_on_the_ring(qrig: tuple[Rig, DomainIoQueue]) -> None:
    rig, q = qrig
    assert isinstance(rig.disk, GatedDisk)
    other = q.try_start(lambda: None)  # another device of the domain holds one of its two slots
    assert other
    for rid in range(4):
        rig.rw(abi.OP_READ, 0, [(10 + rid, 0, 0)], rid=rid)  # all slow
    assert rig.ring.process(1000) is False
    assert rig.ring.req_cons == 1 and q.inflight == 2  # one taken, three wait on the ring
    q.finish()  # the other device's request is done: its slot goes to us
    assert rig.ring.process(1000) is False
    assert rig.ring.req_cons == 2
    rig.disk.gate.set()
    while rig.idx(abi.RSP_PROD) < 4:
        rig.ring.process(1000)
        time.sleep(0.005)
    assert sorted(rig.response(i)[0] for i in range(4)) == [0, 1, 2, 3]


def test_a_flush_waits_for_the_requests_before_it(qrig: tuple[Rig, DomainIoQueue]) -> None:
    rig, q = qrig
    assert isinstance(rig.disk, GatedDisk)
    rig.rw(abi.OP_READ, 0, [(10, 0, 7)], rid=1)  # slow
    rig.rw(abi.OP_WRITE, 8, [(11, 0, 7)], rid=2)
    rig.put(abi.REQUEST_HEAD.pack(abi.OP_FLUSH_DISKCACHE, 0, 0, 3, 0))
    rig.rw(abi.OP_READ, 16, [(12, 0, 7)], rid=4)
    assert rig.ring.process(1000) is False
    until(lambda: rig.idx(abi.RSP_PROD) == 1)  # the write finished...
    assert rig.ring.req_cons == 2 and "flush" not in rig.disk.calls  # ...but the flush waits
    rig.disk.gate.set()
    until(lambda: rig.ring.inflight == 0)
    assert rig.ring.process(1000) is False  # woken: the flush, then the read behind it
    until(lambda: rig.idx(abi.RSP_PROD) == 4)
    assert [rig.response(i)[0] for i in range(4)] == [2, 1, 3, 4]
    assert rig.disk.calls.index("flush") > rig.disk.calls.index(f"write {8 * 512} 4096")


def test_a_lone_request_is_served_on_the_consumers_thread(qrig: tuple[Rig, DomainIoQueue]) -> None:
    rig, q = qrig
    rig.rw(abi.OP_READ, 8, [(10, 0, 7)], rid=5)
    assert rig.ring.process(1000) is False
    assert rig.idx(abi.RSP_PROD) == 1 and q.workers._threads == []  # answered before process returned
