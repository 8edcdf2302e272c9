"""2-level event channels over a shared_info page in plain guest memory (no domain, no engine)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

import pytest

from hyperdisco.core.evtchn import BUCKET, DEFAULT_MAX_PORT, MAX_PORTS, EventChannels, EvtchnError, Port
from hyperdisco.core.memory import PAGE, GuestMemory
from hyperdisco.xen import abi

SI = 0x3000  # shared_info
VI1 = 0x5000  # vCPU 1's vcpu_info, registered elsewhere


class Env:
    def __init__(self) -> None:
        self.mem = GuestMemory(16 * PAGE)
        self.wakes = 0
        self.ec = EventChannels(self.mem, 1, self._wake)

    def _wake(self) -> None:
        self.wakes += 1

    def map(self, vcpus: int = 2) -> None:
        self.ec.shared_info = SI
        self.ec.vcpu_info[0] = SI
        if vcpus > 1:
            self.ec.vcpu_info[1] = VI1

    def bit(self, array: int, port: int) -> int:
        word, bit = divmod(port, 64)
        return self.mem.u64(SI + array + 8 * word) >> bit & 1

    def set_mask(self, port: int, on: bool) -> None:
        word, bit = divmod(port, 64)
        a = SI + abi.SI_EVTCHN_MASK + 8 * word
        v = self.mem.u64(a)
        self.mem.set_u64(a, v | 1 << bit if on else v & ~(1 << bit))

    def pending(self, port: int) -> int:
        return self.bit(abi.SI_EVTCHN_PENDING, port)

    def sel(self, vcpu: int = 0) -> int:
        return self.mem.u64(self.ec.vcpu_info[vcpu] + abi.VI_PENDING_SEL)

    def upcall(self, vcpu: int = 0) -> int:
        return self.mem.u8(self.ec.vcpu_info[vcpu] + abi.VI_UPCALL_PENDING)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.mem.close()


def test_shared_info_layout_constants() -> None:
    assert abi.SI_EVTCHN_PENDING == 2048
    assert abi.SI_EVTCHN_MASK == 2560
    assert abi.SI_WC_VERSION == 3072
    assert MAX_PORTS == 4096


def test_bind_virq_and_errors(env: Env) -> None:
    ec = env.ec
    p = ec.bind_virq(abi.VIRQ_TIMER, 0, 2)
    assert p == 1
    assert ec.get(p).state == abi.EVTCHNSTAT_virq and ec.get(p).virq == abi.VIRQ_TIMER
    with pytest.raises(EvtchnError) as e:
        ec.bind_virq(abi.VIRQ_TIMER, 0, 2)
    assert e.value.errno == abi.EEXIST
    assert ec.bind_virq(abi.VIRQ_TIMER, 1, 2) == 2  # per-vCPU: the same VIRQ on another vCPU is fine
    for virq, vcpu, errno in ((abi.NR_VIRQS, 0, abi.EINVAL), (-1, 0, abi.EINVAL), (1 << 31, 0, abi.EINVAL),
                              (abi.VIRQ_DEBUG, 2, abi.ENOENT), (abi.VIRQ_DEBUG, -1, abi.ENOENT)):
        with pytest.raises(EvtchnError) as e:
            ec.bind_virq(virq, vcpu, 2)
        assert e.value.errno == errno
    assert sorted(ec.ports) == [1, 2]


def test_get_unbound_and_out_of_range(env: Env) -> None:
    for port in (0, 1, -1, MAX_PORTS, 1 << 32):
        with pytest.raises(EvtchnError) as e:
            env.ec.get(port)
        assert e.value.errno == abi.EINVAL


def test_alloc_reuses_lowest_free(env: Env) -> None:
    ec = env.ec
    ports = [ec.alloc(Port(abi.EVTCHNSTAT_ipi)) for _ in range(5)]
    assert ports == [1, 2, 3, 4, 5]
    ec.close(4)
    ec.close(2)
    assert ec.alloc(Port(abi.EVTCHNSTAT_ipi)) == 2
    assert ec.alloc(Port(abi.EVTCHNSTAT_ipi)) == 4
    assert ec.alloc(Port(abi.EVTCHNSTAT_ipi)) == 6


def test_alloc_exhaustion(env: Env) -> None:
    ec = env.ec
    for _ in range(DEFAULT_MAX_PORT):  # xl's default max_event_channels
        ec.alloc(Port(abi.EVTCHNSTAT_unbound))
    with pytest.raises(EvtchnError) as e:
        ec.alloc(Port(abi.EVTCHNSTAT_unbound))
    assert e.value.errno == abi.ENOSPC
    ec.max_port = 1 << 20  # a domain allowed more: the 2-level ABI names 4096 ports
    for _ in range(MAX_PORTS - 1 - DEFAULT_MAX_PORT):
        ec.alloc(Port(abi.EVTCHNSTAT_unbound))
    with pytest.raises(EvtchnError) as e:
        ec.alloc(Port(abi.EVTCHNSTAT_unbound))
    assert e.value.errno == abi.ENOSPC
    ec.close(1234)
    assert ec.alloc(Port(abi.EVTCHNSTAT_unbound)) == 1234


def test_close_frees_port_and_virq_binding(env: Env) -> None:
    ec = env.ec
    p = ec.bind_virq(abi.VIRQ_CONSOLE, 0, 1)
    ec.close(p)
    assert p not in ec.ports
    with pytest.raises(EvtchnError):
        ec.close(p)
    assert ec.raise_virq(abi.VIRQ_CONSOLE) is False
    assert ec.bind_virq(abi.VIRQ_CONSOLE, 0, 1) == p  # rebinding works and reuses the port


def test_set_pending_before_shared_info_is_a_no_op(env: Env) -> None:
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    env.ec.set_pending(p)
    assert env.ec.raised == 0
    assert env.mem.read(0, 16 * PAGE) == bytes(16 * PAGE)


def test_set_pending_unmasked_raises_upcall(env: Env) -> None:
    env.map()
    ec = env.ec
    for _ in range(69):
        ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    ec.set_pending(69)  # word 1, bit 5
    assert env.pending(69) == 1
    assert env.mem.u64(SI + abi.SI_EVTCHN_PENDING + 8) == 1 << 5
    assert env.sel() == 0b10
    assert env.upcall() == 1
    assert ec.upcall_pending(0) and not ec.upcall_pending(1)
    assert env.sel(1) == 0 and env.upcall(1) == 0


def test_set_pending_targets_the_ports_vcpu(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi, vcpu=1))
    env.ec.set_pending(p)
    assert env.upcall(1) == 1 and env.sel(1) == 1
    assert env.upcall(0) == 0 and env.sel(0) == 0


def test_set_pending_masked_sets_only_the_pending_bit(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    env.set_mask(p, True)
    env.ec.set_pending(p)
    assert env.pending(p) == 1
    assert env.sel() == 0 and env.upcall() == 0
    assert not env.ec.upcall_pending(0)


def test_set_pending_already_pending_does_not_reraise(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    env.ec.set_pending(p)
    # the guest consumes the selector and the upcall flag but leaves the port pending
    env.mem.set_u64(SI + abi.VI_PENDING_SEL, 0)
    env.mem.set_u8(SI + abi.VI_UPCALL_PENDING, 0)
    env.ec.set_pending(p)
    assert env.sel() == 0 and env.upcall() == 0


def test_unmask_of_pending_port_raises_upcall(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    env.set_mask(p, True)
    env.ec.set_pending(p)
    assert env.upcall() == 0
    env.ec.unmask(p)
    assert env.bit(abi.SI_EVTCHN_MASK, p) == 0
    assert env.sel() == 1 and env.upcall() == 1


def test_unmask_of_idle_port_only_clears_mask(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    env.set_mask(p, True)
    env.set_mask(p + 1, True)
    env.ec.unmask(p)
    assert env.bit(abi.SI_EVTCHN_MASK, p) == 0
    assert env.bit(abi.SI_EVTCHN_MASK, p + 1) == 1
    assert env.sel() == 0 and env.upcall() == 0


def test_unmask_errors(env: Env) -> None:
    env.ec.unmask(1)  # an existing port (Xen allocates ports 0-63 at once), no shared_info yet: nothing
    env.map()
    env.ec.unmask(0)
    env.ec.unmask(BUCKET - 1)
    for port in (-1, BUCKET, MAX_PORTS, 1 << 40):
        with pytest.raises(EvtchnError) as e:
            env.ec.unmask(port)
        assert e.value.errno == abi.EINVAL


def test_raise_virq(env: Env) -> None:
    env.map()
    assert env.ec.raise_virq(abi.VIRQ_TIMER, 0) is False
    p = env.ec.bind_virq(abi.VIRQ_TIMER, 1, 2)
    assert env.ec.raise_virq(abi.VIRQ_TIMER, 0) is False
    assert env.ec.raise_virq(abi.VIRQ_TIMER, 1) is True
    assert env.pending(p) == 1 and env.upcall(1) == 1 and env.upcall(0) == 0
    assert env.ec.raised == 1


def test_vcpu_without_vcpu_info_gets_only_pending_bit(env: Env) -> None:
    env.map(vcpus=1)
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi, vcpu=1))
    env.ec.set_pending(p)
    assert env.pending(p) == 1
    assert not env.ec.upcall_pending(1)


def test_any_pending(env: Env) -> None:
    assert env.ec.any_pending([1, 2]) is False
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    env.set_mask(p, True)
    env.ec.set_pending(p)
    assert env.ec.any_pending([p]) is True  # masked ports still count for SCHEDOP_poll
    assert env.ec.any_pending([p + 1, 0, -5, MAX_PORTS, 1 << 32]) is False


def test_notify_from_another_thread_is_applied_only_by_deliver_queued(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_interdomain))
    t = threading.Thread(target=env.ec.notify, args=(p,))
    t.start()
    t.join()
    assert env.wakes == 1
    assert env.ec.has_queued()
    assert env.pending(p) == 0 and env.upcall() == 0
    env.ec.deliver_queued()
    assert not env.ec.has_queued()
    assert env.pending(p) == 1 and env.upcall() == 1


def test_deliver_queued_drops_ports_closed_meanwhile(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_interdomain))
    env.ec.notify(p)
    env.ec.notify(999)  # never bound
    env.ec.close(p)
    env.ec.deliver_queued()
    assert env.pending(p) == 0 and env.pending(999) == 0 and env.upcall() == 0
    assert env.ec.raised == 0


def test_deliver_queued_when_another_vcpu_drained_the_queue(env: Env) -> None:
    """Two vCPU threads drain the queue at once (SMP): the last port can be taken by one between the
    other's test and its pop. Simulated deterministically: the queue empties as soon as it is tested."""

    class DrainedMeanwhile(deque[int]):
        def __bool__(self) -> bool:
            had = len(self) > 0
            self.clear()  # the other vCPU's thread took them
            return had

    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_interdomain))
    q = DrainedMeanwhile()
    env.ec._queue = q
    env.ec.notify(p)
    env.ec.deliver_queued()  # no IndexError when nothing is left (it crashed the domain)
    env.ec._queue = deque()
    env.ec.notify(p)
    env.ec.deliver_queued()
    assert env.pending(p) == 1 and not env.ec.has_queued()


def test_many_notifiers(env: Env) -> None:
    env.map()
    ports = [env.ec.alloc(Port(abi.EVTCHNSTAT_interdomain)) for _ in range(200)]
    def notify_all(ps: list[int]) -> None:
        for q in ps:
            env.ec.notify(q)

    threads = [threading.Thread(target=notify_all, args=(ports[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    env.ec.deliver_queued()
    assert all(env.pending(q) for q in ports)
    assert env.sel() == 0b1111  # ports 1..200 span words 0-3


def test_close_clears_pending_bit(env: Env) -> None:
    env.map()
    p = env.ec.alloc(Port(abi.EVTCHNSTAT_ipi))
    env.set_mask(p, True)
    env.ec.set_pending(p)
    env.ec.close(p)
    assert env.pending(p) == 0
