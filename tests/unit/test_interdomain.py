"""Inter-domain event channels: alloc_unbound / bind_interdomain / send / close with Xen's checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from unit_support import DomainHarness

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.core.evtchn import Port
from hyperdisco.dom0.broker import EventChannelBroker
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import KernelImage
from hyperdisco.vmm.channel import PendingReplies
from hyperdisco.vmm.interdomain import BrokeredChannels
from hyperdisco.xen import abi


class FakeHypervisor:
    xenstored = None

    def __init__(self) -> None:
        self.domains: dict[int, Domain] = {}

    def domain(self, domid: int) -> Domain | None:
        return self.domains.get(domid)


class ProcessEnd:
    """What domain 0 holds of a domain process (dom0/handle.DomainHandle's part the broker uses), joined
    straight to that process's BrokeredChannels the way vmm/domain_process.py dispatches its messages."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.finished = False
        self.channels: BrokeredChannels | None = None
        self.pending = PendingReplies()

    def send(self, msg: dict[str, Any]) -> None:
        assert self.channels is not None
        t = msg["t"]
        if t == "evtchn-bound":
            self.pending.deliver(msg["id"], msg)
        elif t == "evtchn-raise":
            self.channels.raise_port(msg)
        elif t == "evtchn-peer-closed":
            self.channels.peer_closed(msg)

    def send_coalesced(self, key: str, msg: dict[str, Any]) -> None:
        self.send(msg)

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        assert self.channels is not None and msg["t"] == "evtchn-peer-bind"
        return self.channels.peer_bind(msg)


class FakeHost:
    def __init__(self) -> None:
        self.ends: dict[int, ProcessEnd] = {}
        self.broker = EventChannelBroker(self)  # type: ignore[arg-type]

    def domain(self, domid: int) -> ProcessEnd | None:
        return self.ends.get(domid)


def brokered(dom: Domain, host: FakeHost) -> None:
    """`dom` as if it ran in its own process: no direct peers, its channels through domain 0's broker."""
    end = ProcessEnd(dom.domid)
    host.ends[dom.domid] = end
    handlers = {"evtchn-bind": host.broker.bind, "evtchn-send": host.broker.send,
                "evtchn-close": host.broker.close}

    def to_dom0(msg: dict[str, Any]) -> None:
        handlers[msg["t"]](end, msg)  # type: ignore[arg-type]

    def call(msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        reply: dict[str, Any] | None = end.pending.call(lambda req: to_dom0({**msg, "id": req}), timeout)
        return reply

    end.channels = BrokeredChannels(dom, to_dom0, call)
    dom.remote_channels = end.channels


@pytest.fixture(params=["same process", "brokered by domain 0"])
def pair(request: pytest.FixtureRequest, kernel: KernelImage, engine: TcgEngine,
         clock: Clock) -> Iterator[tuple[DomainHarness, DomainHarness]]:
    hv = FakeHypervisor()
    host = FakeHost()
    hs = []
    for domid in (1, 2):
        cfg = DomainConfig(f"d{domid}", kernel, None, "console=hvc0", 32)
        local = request.param == "same process"
        dom = Domain(domid, cfg, engine, clock, lambda b: None, lambda m: None,
                     peers=hv if local else None)
        if local:
            hv.domains[domid] = dom
        else:
            brokered(dom, host)
        h = DomainHarness(dom, [])
        h.call("memory_op", abi.XENMEM_add_to_physmap,
               h.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, 0x300))
        hs.append(h)
    yield hs[0], hs[1]
    for h in hs:
        h.dom.close()
        h.dom.memory.close()


def offer(h: DomainHarness, remote: int) -> int:
    arg = h.put(abi.EVTCHN_ALLOC_UNBOUND, abi.DOMID_SELF, remote, 0)
    assert h.call("event_channel_op", abi.EVTCHNOP_alloc_unbound, arg) == 0
    return h.dom.memory.unpack(abi.EVTCHN_ALLOC_UNBOUND, arg)[2]


def bind(h: DomainHarness, remote: int, rport: int) -> tuple[int, int]:
    arg = h.put(abi.EVTCHN_BIND_INTERDOMAIN, remote, rport, 0)
    ret = h.call("event_channel_op", abi.EVTCHNOP_bind_interdomain, arg)
    return ret, h.dom.memory.unpack(abi.EVTCHN_BIND_INTERDOMAIN, arg)[2]


def pending(h: DomainHarness, port: int) -> bool:
    h.dom.evtchn.deliver_queued()
    word, bit = divmod(port, 64)
    return bool(h.dom.memory.u64(0x300000 + abi.SI_EVTCHN_PENDING + word * 8) >> bit & 1)


def test_bind_and_send_both_ways(pair: tuple[DomainHarness, DomainHarness]) -> None:
    a, b = pair
    pa = offer(a, 2)
    ret, pb = bind(b, 1, pa)
    assert ret == 0 and pb > 0
    assert a.dom.evtchn.ports[pa].state == abi.EVTCHNSTAT_interdomain
    assert a.dom.evtchn.ports[pa].remote_port == pb
    assert pending(b, pb)  # the new local end starts pending, as in Xen
    assert not pending(a, pa)
    assert b.call("event_channel_op", abi.EVTCHNOP_send, b.put(abi.EVTCHN_PORT, pb)) == 0
    assert pending(a, pa)
    assert a.call("event_channel_op", abi.EVTCHNOP_send, a.put(abi.EVTCHN_PORT, pa)) == 0
    assert pending(b, pb)


def test_port_offered_to_someone_else_is_refused(pair: tuple[DomainHarness, DomainHarness]) -> None:
    a, b = pair
    pa = offer(a, 7)  # offered to domain 7, not to 2
    assert bind(b, 1, pa)[0] == -abi.EINVAL


def test_bound_port_cannot_be_bound_twice(pair: tuple[DomainHarness, DomainHarness]) -> None:
    a, b = pair
    pa = offer(a, 2)
    assert bind(b, 1, pa)[0] == 0
    assert bind(b, 1, pa)[0] == -abi.EINVAL


def test_missing_domain_and_bad_port(pair: tuple[DomainHarness, DomainHarness]) -> None:
    a, b = pair
    assert bind(b, 9, 1)[0] == -abi.ESRCH
    assert bind(b, 1, 4000)[0] == -abi.EINVAL
    assert bind(b, 1, 0xFFFFFFFF)[0] == -abi.EINVAL


def test_fifo_port_above_4096_binds_and_sends(pair: tuple[DomainHarness, DomainHarness]) -> None:
    """A FIFO domain whose max_event_channels is above 4096 offers a port above the 2-level ABI's 4096:
    the other domain binds it and they signal each other (domain 0's broker bounds ports by the FIFO
    ABI's 2^17; each domain checks its own limit)."""
    a, b = pair
    a.dom.evtchn.max_port = 8000
    arg = a.put(abi.EVTCHN_INIT_CONTROL, 0x400, 0, 0, 0)
    assert a.call("event_channel_op", abi.EVTCHNOP_init_control, arg) == 0
    for p in range(1, 5000):  # a's other ports
        a.dom.evtchn.ports.setdefault(p, Port(abi.EVTCHNSTAT_ipi))
    pa = offer(a, 2)
    assert pa == 5000 > abi.EVTCHN_2L_NR_CHANNELS
    ret, pb = bind(b, 1, pa)
    assert ret == 0 and a.dom.evtchn.ports[pa].state == abi.EVTCHNSTAT_interdomain
    assert a.dom.evtchn.ports[pa].remote_port == pb
    a.dom.evtchn._queue.clear()
    assert b.call("event_channel_op", abi.EVTCHNOP_send, b.put(abi.EVTCHN_PORT, pb)) == 0
    assert pa in a.dom.evtchn._queue  # raised towards a's port 5000
    assert a.call("event_channel_op", abi.EVTCHNOP_send, a.put(abi.EVTCHN_PORT, pa)) == 0
    assert pending(b, pb)


def test_close_reoffers_the_peer(pair: tuple[DomainHarness, DomainHarness]) -> None:
    a, b = pair
    pa = offer(a, 2)
    _, pb = bind(b, 1, pa)
    assert b.call("event_channel_op", abi.EVTCHNOP_close, b.put(abi.EVTCHN_PORT, pb)) == 0
    assert a.dom.evtchn.ports[pa].state == abi.EVTCHNSTAT_unbound
    assert bind(b, 1, pa)[0] == 0  # and it can be bound again


def test_alloc_unbound_for_another_domain_is_refused(pair: tuple[DomainHarness, DomainHarness]) -> None:
    a, _ = pair
    arg = a.put(abi.EVTCHN_ALLOC_UNBOUND, 2, 1, 0)
    assert a.call("event_channel_op", abi.EVTCHNOP_alloc_unbound, arg) == -abi.EPERM


@pytest.fixture
def brokered_pair(kernel: KernelImage, engine: TcgEngine,
                  clock: Clock) -> Iterator[tuple[DomainHarness, DomainHarness, FakeHost]]:
    host = FakeHost()
    hs = []
    for domid in (1, 2):
        dom = Domain(domid, DomainConfig(f"d{domid}", kernel, None, "console=hvc0", 32), engine, clock,
                     lambda b: None, lambda m: None)
        brokered(dom, host)
        h = DomainHarness(dom, [])
        h.call("memory_op", abi.XENMEM_add_to_physmap,
               h.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, 0x300))
        hs.append(h)
    yield hs[0], hs[1], host
    for h in hs:
        h.dom.close()
        h.dom.memory.close()


def test_broker_routes_only_along_its_links(
        brokered_pair: tuple[DomainHarness, DomainHarness, FakeHost]) -> None:
    a, b, host = brokered_pair
    pa = offer(a, 2)
    _, pb = bind(b, 1, pa)
    other = offer(a, 2)  # offered, never bound: nobody may raise it
    host.broker.send(host.ends[2], {"port": other})  # type: ignore[arg-type]
    host.broker.send(host.ends[2], {"port": 999})  # type: ignore[arg-type]
    assert not pending(a, other)
    # a forged raise that names the wrong source port is ignored by the receiving process too
    assert host.ends[1].channels is not None
    host.ends[1].channels.raise_port({"port": pa, "from": 2, "from_port": pb + 1})
    assert not pending(a, pa)
    assert host.broker.links() == {(2, pb): (1, pa), (1, pa): (2, pb)}


def test_domain_gone_reoffers_and_adoption_relinks(
        brokered_pair: tuple[DomainHarness, DomainHarness, FakeHost]) -> None:
    a, b, host = brokered_pair
    pa = offer(a, 2)
    _, pb = bind(b, 1, pa)
    assert host.ends[1].channels is not None and host.ends[2].channels is not None
    claims_a, claims_b = host.ends[1].channels.describe(), host.ends[2].channels.describe()
    assert claims_a == [[pa, 2, pb]] and claims_b == [[pb, 1, pa]]
    # a new domain 0 learns the links from both processes; a one-sided claim is not believed
    fresh = EventChannelBroker(host)  # type: ignore[arg-type]
    fresh.adopt(1, claims_a + [[pa + 5, 2, 77]])
    fresh.adopt(2, claims_b)
    assert fresh.links() == {(1, pa): (2, pb), (2, pb): (1, pa)}
    host.broker.domain_gone(2)
    assert a.dom.evtchn.ports[pa].state == abi.EVTCHNSTAT_unbound  # offered to domain 2 again, as Xen
    assert a.dom.evtchn.ports[pa].remote_dom == 2
    assert host.broker.links() == {}


def test_a_binder_that_gave_up_leaves_no_link(
        brokered_pair: tuple[DomainHarness, DomainHarness, FakeHost]) -> None:
    a, b, host = brokered_pair
    pa = offer(a, 2)
    end_a, end_b = host.ends[1], host.ends[2]
    assert end_a.channels is not None
    real_call = end_a.call

    def late(msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        # domain 2 gives up (its close reaches domain 0) before domain 1's agreement does
        host.broker.close(end_b, {"port": msg["port"]})  # type: ignore[arg-type]
        return real_call(msg, timeout)

    end_a.call = late  # type: ignore[method-assign]
    assert bind(b, 1, pa)[0] == -abi.ESRCH
    deadline = time.monotonic() + 5
    while a.dom.evtchn.ports[pa].state != abi.EVTCHNSTAT_unbound and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.dom.evtchn.ports[pa].state == abi.EVTCHNSTAT_unbound  # offered again, no half link
    assert host.broker.links() == {}
    end_a.call = real_call  # type: ignore[method-assign]
    assert bind(b, 1, pa)[0] == 0
