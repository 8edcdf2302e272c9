"""FIFO event channels (core/evtchn_fifo.py) on plain guest memory, no domain, no engine: the guest's side
is played the way Linux's drivers/xen/events/events_fifo.c does it (READY taken with xchg, each queue read
from HEAD, each word unlinked with cmpxchg, MASKED cleared with cmpxchg unless BUSY), with the same host
atomics the hypervisor uses."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator

import pytest
from unit_support import SCRATCH_VA, DomainHarness

from hyperdisco.core import atomic
from hyperdisco.core.evtchn import EventChannels, EvtchnError, Port
from hyperdisco.core.evtchn_fifo import BUSY, LINK_MASK, LINKED, MASKED, PENDING, WORDS_PER_PAGE, Fifo
from hyperdisco.core.memory import PAGE, GuestMemory
from hyperdisco.xen import abi

PAGES = 200
DOMID_IO = 0x7FF1  # xen.h
SI = 1 * PAGE  # shared_info; vCPU 0's vcpu_info is its first slot
VI1 = 2 * PAGE  # vCPU 1's vcpu_info
CB0, CB1 = 3 * PAGE, 4 * PAGE  # control blocks
ARRAY = 8  # first event array page (gfn)


class Guest:
    """Linux's side of the ABI, on the same memory."""

    def __init__(self, ec: EventChannels) -> None:
        self.ec = ec
        self.mem = ec.mem
        self.local_head: dict[tuple[int, int], int] = {}  # Linux's per-cpu copy of each queue's HEAD
        self.cb = {0: CB0, 1: CB1}

    def word_gpa(self, port: int) -> int:
        fifo = self.ec.abi
        assert isinstance(fifo, Fifo)
        page, index = divmod(port, WORDS_PER_PAGE)
        return fifo.array[page][0] + 4 * index

    def word(self, port: int) -> int:
        return self.mem.u32(self.word_gpa(port))

    def host(self, gpa: int) -> int:
        return self.mem.host_address(gpa, 4)

    def new_array_page(self, gfn: int) -> None:
        """events_fifo.c's init_array_page: every event masked before the page is given."""
        for i in range(WORDS_PER_PAGE):
            self.mem.set_u32((gfn << 12) + 4 * i, MASKED)
        self.ec.expand_array(gfn, is_ram)

    def unmask(self, port: int) -> None:
        """events_fifo.c's evtchn_fifo_unmask: clear MASKED unless PENDING (spinning while BUSY), else
        EVTCHNOP_unmask."""
        at = self.host(self.word_gpa(port))
        w = atomic.load_u32(at)
        while True:
            if not w & MASKED:
                return
            if w & PENDING:
                self.ec.unmask(port)
                return
            old = w & ~BUSY
            w = atomic.cmpxchg_u32(at, old, old & ~MASKED)
            if w == old:
                return

    def mask(self, port: int) -> None:
        atomic.fetch_or_u32(self.host(self.word_gpa(port)), MASKED)

    def clear_linked(self, port: int) -> int:
        at = self.host(self.word_gpa(port))
        w = atomic.load_u32(at)
        while True:
            old = w
            w = atomic.cmpxchg_u32(at, old, old & ~(LINKED | LINK_MASK))
            if w == old:
                return w & LINK_MASK

    def upcall(self, vcpu: int) -> bool:
        vi = SI if vcpu == 0 else VI1
        was = self.mem.u8(vi + abi.VI_UPCALL_PENDING)
        self.mem.set_u8(vi + abi.VI_UPCALL_PENDING, 0)
        return was != 0

    def consume(self, vcpu: int = 0, ack: bool = True) -> list[int]:
        """events_fifo.c's handle_events: the ports handled, in order (each acked: PENDING cleared)."""
        cb = self.cb[vcpu]
        ready_at = self.host(cb + abi.EVTCHN_FIFO_CB_READY)
        out: list[int] = []
        ready = atomic.fetch_and_u32(ready_at, 0)
        while ready:
            prio = (ready & -ready).bit_length() - 1
            head = self.local_head.get((vcpu, prio), 0)
            if head == 0:
                head = self.mem.u32(cb + abi.EVTCHN_FIFO_CB_HEAD + 4 * prio)
            port = head
            head = self.clear_linked(port)
            if head == 0:
                ready &= ~(1 << prio)
            w = self.word(port)
            if w & PENDING and not w & MASKED:
                out.append(port)
                if ack:
                    atomic.fetch_and_u32(self.host(self.word_gpa(port)), ~PENDING & 0xFFFFFFFF)
            self.local_head[(vcpu, prio)] = head
            ready |= atomic.fetch_and_u32(ready_at, 0)
        return out


def is_ram(gpa: int) -> bool:
    return 0 <= gpa < PAGES * PAGE


class Env:
    def __init__(self, vcpus: int = 2) -> None:
        self.mem = GuestMemory(PAGES * PAGE)
        self.ec = EventChannels(self.mem, 1, lambda: None)
        self.ec.shared_info = SI
        self.ec.vcpu_info[0] = SI
        self.ec.vcpu_info[1] = VI1
        self.vcpus = vcpus
        self.guest = Guest(self.ec)

    def fifo(self, pages: int = 1) -> Fifo:
        self.ec.init_control(0, CB0 >> 12, 0, self.vcpus, is_ram)
        for i in range(pages):
            self.guest.new_array_page(ARRAY + i)
        assert isinstance(self.ec.abi, Fifo)
        return self.ec.abi

    def bind(self, n: int = 1, vcpu: int = 0, unmask: bool = True) -> list[int]:
        ports = [self.ec.alloc(Port(abi.EVTCHNSTAT_ipi, vcpu=vcpu)) for _ in range(n)]
        if unmask:
            for p in ports:
                self.guest.unmask(p)
        return ports


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.mem.close()


def test_events_are_consumed_in_the_order_raised(env: Env) -> None:
    env.fifo()
    ports = env.bind(6)
    order = [ports[i] for i in (3, 0, 5, 1, 4, 2)]
    for p in order:
        env.ec.set_pending(p)
    assert env.guest.upcall(0) and not env.guest.upcall(1)
    cb_ready = env.mem.u32(CB0 + abi.EVTCHN_FIFO_CB_READY)
    assert cb_ready == 1 << abi.EVTCHN_FIFO_PRIORITY_DEFAULT
    assert env.mem.u32(CB0 + abi.EVTCHN_FIFO_CB_HEAD + 4 * abi.EVTCHN_FIFO_PRIORITY_DEFAULT) == order[0]
    assert env.guest.word(order[0]) & LINK_MASK == order[1]  # the tail was linked to the next event
    assert env.guest.consume() == order
    assert all(not env.guest.word(p) & (LINKED | PENDING) for p in ports)


def test_one_upcall_per_ready_transition(env: Env) -> None:
    env.fifo()
    a, b = env.bind(2)
    env.ec.set_pending(a)
    assert env.guest.upcall(0)
    env.ec.set_pending(b)  # appended behind a: READY was already set, no new upcall
    assert not env.guest.upcall(0)
    env.ec.set_pending(a)  # already pending and linked: nothing
    assert env.guest.consume() == [a, b]
    env.ec.set_pending(b)  # the queue is empty again: HEAD, READY and an upcall again
    assert env.guest.upcall(0)
    assert env.guest.consume() == [b]


def test_priorities_are_served_highest_first(env: Env) -> None:
    env.fifo()
    low, mid, high = env.bind(3)
    env.ec.set_priority(high, abi.EVTCHN_FIFO_PRIORITY_MAX)
    env.ec.set_priority(low, abi.EVTCHN_FIFO_PRIORITY_MIN)
    for p in (low, mid, high):
        env.ec.set_pending(p)
    assert env.mem.u32(CB0) == 1 << 0 | 1 << 7 | 1 << 15
    assert env.guest.consume() == [high, mid, low]


def test_priority_change_applies_to_later_events(env: Env) -> None:
    env.fifo()
    a, b = env.bind(2)
    env.ec.set_pending(a)
    env.ec.set_priority(a, 3)  # already linked on priority 7: stays there (event_fifo.c)
    env.ec.set_pending(b)
    assert env.guest.consume() == [a, b]
    env.ec.set_pending(b)
    env.ec.set_pending(a)  # now on queue 3, ahead of b
    assert env.guest.consume() == [a, b]


def test_masked_port_is_pending_but_not_linked_until_unmasked(env: Env) -> None:
    env.fifo()
    (p,) = env.bind(1, unmask=False)
    env.ec.set_pending(p)
    assert env.guest.word(p) == MASKED | PENDING
    assert not env.guest.upcall(0) and env.guest.consume() == []
    env.guest.unmask(p)  # pending: the guest asks the hypervisor (EVTCHNOP_unmask)
    assert env.guest.word(p) & (PENDING | LINKED | MASKED) == PENDING | LINKED
    assert env.guest.upcall(0)
    assert env.guest.consume() == [p]


def test_guest_masking_a_linked_event_skips_it(env: Env) -> None:
    env.fifo()
    a, b = env.bind(2)
    env.ec.set_pending(a)
    env.ec.set_pending(b)
    env.guest.mask(a)
    assert env.guest.consume() == [b]  # a is unlinked but not handled: still pending and masked
    assert env.guest.word(a) & (PENDING | MASKED | LINKED) == PENDING | MASKED


def test_tail_consumed_by_the_guest_meanwhile_starts_a_new_queue(env: Env) -> None:
    env.fifo()
    a, b = env.bind(2)
    env.ec.set_pending(a)
    env.guest.clear_linked(a)  # the guest took a off the queue; the hypervisor's tail is still a
    env.ec.set_pending(b)  # set_link finds the tail not LINKED: b becomes HEAD
    assert env.mem.u32(CB0 + abi.EVTCHN_FIFO_CB_HEAD + 4 * 7) == b
    assert not env.guest.word(a) & LINK_MASK


def test_set_link_takes_the_busy_protocol_when_the_tail_changes(env: Env,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fifo = env.fifo()
    a, b = env.bind(2)
    env.ec.set_pending(a)
    real = atomic.cmpxchg_u32
    calls = {"n": 0}

    def racing(addr: int, old: int, new: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # the guest changes the tail word between the read and the cmpxchg
            atomic.fetch_or_u32(addr, MASKED)
        return real(addr, old, new)

    monkeypatch.setattr(atomic, "cmpxchg_u32", racing)
    env.ec.set_pending(b)
    assert fifo.link_retries == 1 and fifo.link_giveups == 0
    w = env.guest.word(a)
    assert w & LINK_MASK == b and not w & BUSY  # linked after BUSY, BUSY cleared by the final cmpxchg


def test_per_vcpu_queues(env: Env) -> None:
    env.fifo()
    env.ec.init_control(1, CB1 >> 12, 0, 2, is_ram)
    (p0,) = env.bind(1, vcpu=0)
    (p1,) = env.bind(1, vcpu=1)
    env.ec.set_pending(p1)
    env.ec.set_pending(p0)
    assert env.guest.upcall(1) and env.guest.upcall(0)
    assert env.guest.consume(1) == [p1]
    assert env.guest.consume(0) == [p0]


def test_event_for_a_vcpu_without_control_block_only_pends(env: Env) -> None:
    env.fifo()
    (p,) = env.bind(1, vcpu=1)
    env.ec.set_pending(p)
    assert env.guest.word(p) & (PENDING | LINKED) == PENDING
    assert not env.guest.upcall(1)


def test_events_before_their_array_page_are_raised_when_it_comes(env: Env) -> None:
    env.fifo(pages=1)
    env.ec.max_port = 4 * WORDS_PER_PAGE
    ports = [env.ec.alloc(Port(abi.EVTCHNSTAT_ipi)) for _ in range(WORDS_PER_PAGE + 5)]
    late = ports[-1]
    assert late >= WORDS_PER_PAGE
    env.ec.set_pending(late)  # no word yet (Linux expands the array when it binds; a raise may come first)
    assert env.ec.abi.is_masked(late) and not env.ec.abi.is_pending(late)
    for i in range(WORDS_PER_PAGE):  # the guest's new page, this port already unmasked
        env.mem.set_u32(((ARRAY + 1) << 12) + 4 * i, 0 if i == late - WORDS_PER_PAGE else MASKED)
    env.ec.expand_array(ARRAY + 1, is_ram)
    assert env.guest.consume() == [late]


def test_switch_carries_2_level_pending_state(env: Env) -> None:
    a, b = env.bind(2, unmask=False)
    env.ec.set_pending(b)  # 2-level: shared_info's bit
    assert env.mem.u64(SI + abi.SI_EVTCHN_PENDING) == 1 << b
    env.ec.init_control(0, CB0 >> 12, 0, 2, is_ram)
    assert isinstance(env.ec.abi, Fifo) and env.ec.abi.early == {b}  # event_fifo.c's setup_ports
    env.guest.new_array_page(ARRAY)  # the page that gives b a word raises it again
    assert env.guest.word(b) == MASKED | PENDING and env.guest.word(a) == MASKED
    env.guest.unmask(b)
    assert env.guest.consume() == [b]


def test_closed_linked_port_is_not_reused_until_the_guest_unlinks_it(env: Env) -> None:
    env.fifo()
    a, b = env.bind(2)
    env.ec.set_pending(a)
    env.ec.close(a)
    assert not env.guest.word(a) & PENDING and env.guest.word(a) & LINKED
    c = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    assert c not in (a, b)  # Xen's get_free_port skips a busy port
    assert env.guest.consume() == []  # unlinked and skipped: not pending any more
    env.ec.close(c)
    assert env.ec.alloc(Port(abi.EVTCHNSTAT_ipi)) == a


def test_closed_port_reopens_at_default_priority(env: Env) -> None:
    fifo = env.fifo()
    (a,) = env.bind(1)
    env.ec.set_priority(a, 2)
    env.ec.close(a)
    assert a not in fifo.priority


def test_init_control_errors(env: Env) -> None:
    ec = env.ec
    cases = [((2, CB0 >> 12, 0), abi.ENOENT), ((-1 & 0xFFFFFFFF, CB0 >> 12, 0), abi.ENOENT),
             ((0, CB0 >> 12, PAGE - abi.EVTCHN_FIFO_CONTROL_BLOCK_SIZE + 4), abi.ENXIO),
             ((0, CB0 >> 12, 0xFFFFFFFF), abi.ENXIO), ((0, CB0 >> 12, 2), abi.ENXIO),
             ((0, PAGES, 0), abi.EINVAL), ((0, 1 << 52, 0), abi.EINVAL), ((0, (1 << 64) - 1, 0), abi.EINVAL)]
    for (vcpu, gfn, offset), errno in cases:
        with pytest.raises(EvtchnError) as e:
            ec.init_control(vcpu, gfn, offset, 2, is_ram)
        assert e.value.errno == errno, (vcpu, gfn, offset)
    env.mem.given_back.add(CB0 >> 12)  # a page the guest gave back (balloon): Xen finds no page there
    with pytest.raises(EvtchnError) as e:
        ec.init_control(0, CB0 >> 12, 0, 2, is_ram)
    assert e.value.errno == abi.EINVAL
    env.mem.given_back.discard(CB0 >> 12)
    assert ec.abi.name == "2-level"
    ec.init_control(0, CB0 >> 12, PAGE - abi.EVTCHN_FIFO_CONTROL_BLOCK_SIZE, 2, is_ram)  # last that fits
    assert ec.abi.name == "FIFO"
    with pytest.raises(EvtchnError) as e:
        ec.init_control(0, CB1 >> 12, 0, 2, is_ram)
    assert e.value.errno == abi.EINVAL  # already has one
    ec.init_control(1, CB1 >> 12, 4, 2, is_ram)  # 4-byte alignment is enough since Xen 4.16


def test_expand_array_limits(env: Env) -> None:
    with pytest.raises(EvtchnError) as e:
        env.ec.expand_array(ARRAY, is_ram)
    assert e.value.errno == abi.EOPNOTSUPP
    fifo = env.fifo(pages=0)
    env.mem.given_back.add(ARRAY + 60)
    for gfn in (PAGES, 1 << 40, (1 << 64) - 1, ARRAY + 60):
        with pytest.raises(EvtchnError) as e:
            env.ec.expand_array(gfn, is_ram)
        assert e.value.errno == abi.EINVAL
    for i in range(128):
        env.ec.expand_array(ARRAY + i % 50, is_ram)  # the same pages again are the guest's problem, as in Xen
    assert fifo.nr_ports == abi.EVTCHN_FIFO_NR_CHANNELS
    with pytest.raises(EvtchnError) as e:
        env.ec.expand_array(ARRAY, is_ram)
    assert e.value.errno == abi.ENOSPC


def test_set_priority_errors(env: Env) -> None:
    (p,) = env.bind(1, unmask=False)
    with pytest.raises(EvtchnError) as e:
        env.ec.set_priority(p, 3)
    assert e.value.errno == abi.ENOSYS  # 2-level has no priorities
    env.fifo()
    for port, prio, errno in ((p, 16, abi.EINVAL), (p, 1 << 31, abi.EINVAL), (100, 3, abi.EINVAL),
                              (-1, 3, abi.EINVAL)):
        with pytest.raises(EvtchnError) as e:
            env.ec.set_priority(port, prio)
        assert e.value.errno == errno
    env.ec.set_priority(5, 3)  # an existing port that is not bound: accepted, as Xen


def test_all_2_to_the_17_ports(env: Env) -> None:
    """The FIFO ABI names 2^17 ports (port 0 reserved); a domain allowed that many can use them all."""
    env.fifo(pages=0)
    env.ec.max_port = abi.EVTCHN_FIFO_NR_CHANNELS - 1
    for i in range(128):
        env.ec.expand_array(ARRAY + i % 50, is_ram)
    for p in range(1, abi.EVTCHN_FIFO_NR_CHANNELS):
        env.ec.ports[p] = Port(abi.EVTCHNSTAT_ipi)
    last = abi.EVTCHN_FIFO_NR_CHANNELS - 1
    with pytest.raises(EvtchnError) as e:
        env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    assert e.value.errno == abi.ENOSPC
    del env.ec.ports[last]
    assert env.ec.alloc(Port(abi.EVTCHNSTAT_ipi)) == last
    env.guest.unmask(last)
    env.ec.set_pending(last)
    assert env.guest.consume() == [last]


def test_reset_goes_back_to_2_level(env: Env) -> None:
    env.fifo()
    a, b = env.bind(2)
    env.ec.set_pending(a)
    env.ec.close(b)
    env.ec.reset_abi()
    assert env.ec.abi.name == "2-level"
    assert env.mem.u64(SI + abi.SI_EVTCHN_PENDING) == 1 << a  # the port that stayed keeps its event
    env.ec.init_control(0, CB0 >> 12, 0, 2, is_ram)  # and FIFO can be set up again
    assert env.ec.abi.name == "FIFO" and env.ec.abi_switches == 2


def test_concurrent_guest_consumer_loses_no_event(env: Env) -> None:
    """The hypervisor raises from one thread while the guest consumes on another with its own atomics:
    every raise is handled at least once after it (none is left PENDING, unmasked and off the queue)."""
    env.fifo()
    ports = env.bind(64)
    stop = threading.Event()
    handled: list[int] = []

    def guest() -> None:
        while not stop.is_set():
            handled.extend(env.guest.consume())

    t = threading.Thread(target=guest)
    t.start()
    rng = random.Random(7)
    try:
        for _ in range(3000):
            env.ec.set_pending(rng.choice(ports))
    finally:
        stop.set()
        t.join()
    handled.extend(env.guest.consume())
    for p in ports:
        w = env.guest.word(p)
        assert not (w & PENDING and not w & LINKED), f"port {p} lost its event: {w:#x}"
    assert len(handled) > 100


# -- through the hypercall, on a real domain whose vCPU never runs -----------------------------------------
def evtchn_op(dh: DomainHarness, cmd: int, fmt: object, *values: int) -> int:
    import struct
    assert isinstance(fmt, struct.Struct)
    return dh.call("event_channel_op", cmd, dh.put(fmt, *values))


def test_init_control_hypercall(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    cb = 0x400000
    ram_end = 32 << 20
    assert evtchn_op(dh, abi.EVTCHNOP_expand_array, abi.EVTCHN_EXPAND_ARRAY, 0x401) == -abi.EOPNOTSUPP
    for gfn, offset, vcpu, errno in ((cb >> 12, 0, 2, abi.ENOENT), (cb >> 12, 4090, 0, abi.ENXIO),
                                     (cb >> 12, 6, 0, abi.ENXIO), (ram_end >> 12, 0, 0, abi.EINVAL),
                                     (0xFEE00, 0, 0, abi.EINVAL), ((1 << 64) - 1, 0, 0, abi.EINVAL)):
        ret = evtchn_op(dh, abi.EVTCHNOP_init_control, abi.EVTCHN_INIT_CONTROL, gfn, offset, vcpu, 0)
        assert ret == -errno
    assert dh.dom.evtchn.abi.name == "2-level"
    assert evtchn_op(dh, abi.EVTCHNOP_init_control, abi.EVTCHN_INIT_CONTROL, cb >> 12, 0, 0, 0) == 0
    assert dh.dom.memory.unpack(abi.EVTCHN_INIT_CONTROL, SCRATCH_VA)[3] == abi.EVTCHN_FIFO_LINK_BITS
    assert dh.dom.evtchn.abi.name == "FIFO" and dh.dom.stats["evtchn.fifo_init_control"] == 1
    assert any("FIFO ABI" in m for m in dh.logs)
    assert evtchn_op(dh, abi.EVTCHNOP_init_control, abi.EVTCHN_INIT_CONTROL, cb >> 12, 0, 0, 0) == -abi.EINVAL
    assert dh.dom.hypervisor_page(cb + 8) is not None  # never granted away nor replaced by a foreign page
    assert evtchn_op(dh, abi.EVTCHNOP_expand_array, abi.EVTCHN_EXPAND_ARRAY, ram_end >> 12) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_expand_array, abi.EVTCHN_EXPAND_ARRAY, 0x401) == 0
    assert dh.dom.hypervisor_page(0x401000) is not None
    port = dh.dom.console_port
    assert evtchn_op(dh, abi.EVTCHNOP_set_priority, abi.EVTCHN_SET_PRIORITY, port, 16) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_set_priority, abi.EVTCHN_SET_PRIORITY, 5000, 1) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_set_priority, abi.EVTCHN_SET_PRIORITY, port, 1) == 0
    # EVTCHNOP_reset: every port the guest may close is closed, and the domain is back on 2-level
    assert evtchn_op(dh, abi.EVTCHNOP_bind_ipi, abi.EVTCHN_BIND_IPI, 0, 0) == 0
    assert evtchn_op(dh, abi.EVTCHNOP_reset, abi.EVTCHN_RESET, 3) == -abi.EPERM
    assert evtchn_op(dh, abi.EVTCHNOP_reset, abi.EVTCHN_RESET, DOMID_IO) == -abi.ESRCH
    assert evtchn_op(dh, abi.EVTCHNOP_reset, abi.EVTCHN_RESET, abi.DOMID_SELF) == 0
    assert dh.dom.evtchn.abi.name == "2-level"
    assert sorted(dh.dom.evtchn.ports) == sorted(dh.dom.reserved_ports)


def test_sub_ops_on_every_port_type(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    st = abi.EVTCHN_STATUS

    def bind(cmd: int, fmt: object, *values: int, out: int) -> int:
        assert evtchn_op(dh, cmd, fmt, *values) == 0
        return dh.dom.memory.u32(SCRATCH_VA + out)

    virq = bind(abi.EVTCHNOP_bind_virq, abi.EVTCHN_BIND_VIRQ, abi.VIRQ_CONSOLE, 0, 0, out=8)
    timer1 = bind(abi.EVTCHNOP_bind_virq, abi.EVTCHN_BIND_VIRQ, abi.VIRQ_TIMER, 1, 0, out=8)
    ipi = bind(abi.EVTCHNOP_bind_ipi, abi.EVTCHN_BIND_IPI, 1, 0, out=4)
    unbound = bind(abi.EVTCHNOP_alloc_unbound, abi.EVTCHN_ALLOC_UNBOUND, abi.DOMID_SELF, 7, 0, out=4)
    # bind_virq: a global VIRQ only on vCPU 0 (event_channel.c, before the vCPU id is checked)
    assert evtchn_op(dh, abi.EVTCHNOP_bind_virq, abi.EVTCHN_BIND_VIRQ, abi.VIRQ_DOM_EXC, 1, 0) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_bind_virq, abi.EVTCHN_BIND_VIRQ, abi.VIRQ_DOM_EXC, 5, 0) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_bind_virq, abi.EVTCHN_BIND_VIRQ, abi.VIRQ_DEBUG, 5, 0) == -abi.ENOENT
    # alloc_unbound in another domain: Xen refuses an unprivileged guest (no such domain: ESRCH)
    assert evtchn_op(dh, abi.EVTCHNOP_alloc_unbound, abi.EVTCHN_ALLOC_UNBOUND, 0, 0, 0) == -abi.EPERM
    assert evtchn_op(dh, abi.EVTCHNOP_alloc_unbound, abi.EVTCHN_ALLOC_UNBOUND, DOMID_IO, 0, 0) == -abi.ESRCH
    # status of each
    expect = {virq: (abi.EVTCHNSTAT_virq, 0, abi.VIRQ_CONSOLE),
              timer1: (abi.EVTCHNSTAT_virq, 1, abi.VIRQ_TIMER), ipi: (abi.EVTCHNSTAT_ipi, 1, None),
              unbound: (abi.EVTCHNSTAT_unbound, 0, 7),
              dh.dom.console_port: (abi.EVTCHNSTAT_interdomain, 0, 0), 0: (abi.EVTCHNSTAT_closed, 0, None)}
    for port, (state, vcpu, union) in expect.items():
        assert evtchn_op(dh, abi.EVTCHNOP_status, st, abi.DOMID_SELF, port, 0, 0) == 0
        assert dh.dom.memory.unpack(st, SCRATCH_VA)[2:] == (state, vcpu)
        if union is not None:
            assert dh.dom.memory.u32(SCRATCH_VA + abi.EVTCHN_STATUS_UNION) & 0xFFFF == union
    assert evtchn_op(dh, abi.EVTCHNOP_status, st, 0, 1, 0, 0) == -abi.EPERM
    # bind_vcpu: global VIRQs and unbound/interdomain ports move; per-vCPU VIRQs and IPIs do not
    bv = abi.EVTCHN_BIND_VCPU
    assert evtchn_op(dh, abi.EVTCHNOP_bind_vcpu, bv, virq, 1) == 0 and dh.dom.evtchn.ports[virq].vcpu == 1
    assert evtchn_op(dh, abi.EVTCHNOP_bind_vcpu, bv, unbound, 1) == 0
    assert evtchn_op(dh, abi.EVTCHNOP_bind_vcpu, bv, timer1, 0) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_bind_vcpu, bv, ipi, 0) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_bind_vcpu, bv, 0, 0) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_bind_vcpu, bv, 40, 0) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_bind_vcpu, bv, virq, 2) == -abi.ENOENT
    # send: IPI and unbound (dropped) succeed, a VIRQ and port 0 do not
    sp = abi.EVTCHN_PORT
    assert evtchn_op(dh, abi.EVTCHNOP_send, sp, ipi) == 0
    assert evtchn_op(dh, abi.EVTCHNOP_send, sp, unbound) == 0
    assert evtchn_op(dh, abi.EVTCHNOP_send, sp, virq) == -abi.EINVAL
    assert evtchn_op(dh, abi.EVTCHNOP_send, sp, 0) == -abi.EINVAL
    # unmask: any existing port (bound or free), not beyond
    assert evtchn_op(dh, abi.EVTCHNOP_unmask, sp, 40) == 0
    assert evtchn_op(dh, abi.EVTCHNOP_unmask, sp, 64) == -abi.EINVAL
    # close: every type; port 0 and a free port are -EINVAL; the VIRQ can be bound again afterwards
    for port in (virq, timer1, ipi, unbound):
        assert evtchn_op(dh, abi.EVTCHNOP_close, sp, port) == 0
        assert port not in dh.dom.evtchn.ports
    for port in (0, virq, 40, 1 << 20):
        assert evtchn_op(dh, abi.EVTCHNOP_close, sp, port) == -abi.EINVAL
    assert dh.dom.evtchn.virqs == {}
    assert evtchn_op(dh, abi.EVTCHNOP_bind_virq, abi.EVTCHN_BIND_VIRQ, abi.VIRQ_TIMER, 1, 0) == 0
    assert evtchn_op(dh, abi.EVTCHNOP_bind_pirq, abi.EVTCHN_BIND_IPI, 5, 0) == -abi.ENOSYS
