"""Inter-domain event channels: alloc_unbound / bind_interdomain / send / close with Xen's checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from unit_support import DomainHarness

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import KernelImage
from hyperdisco.xen import abi


class FakeHypervisor:
    xenstored = None

    def __init__(self) -> None:
        self.domains: dict[int, Domain] = {}

    def domain(self, domid: int) -> Domain | None:
        return self.domains.get(domid)


@pytest.fixture
def pair(kernel: KernelImage, engine: TcgEngine,
         clock: Clock) -> Iterator[tuple[DomainHarness, DomainHarness]]:
    hv = FakeHypervisor()
    hs = []
    for domid in (1, 2):
        cfg = DomainConfig(f"d{domid}", kernel, None, "console=hvc0", 32)
        dom = Domain(domid, cfg, engine, clock, lambda b: None, lambda m: None,
                     peers=hv)
        hv.domains[domid] = dom
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
