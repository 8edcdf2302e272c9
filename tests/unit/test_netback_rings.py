"""netback's tx and rx rings against a real domain's memory and grant table (the domain never runs): a
frontend written here from io/netif.h posts packets and buffers, as xen-netfront does."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from unit_support import DomainHarness

from hyperdisco.backends.back_ring import RingError
from hyperdisco.backends.net import frame as fr
from hyperdisco.backends.netback.rings import Credit, NetRings
from hyperdisco.core.grant import GRANT_ENTRY_V1, GTF_permit_access, GTF_readonly
from hyperdisco.xen import abi as xen_abi
from hyperdisco.xen.io import netif
from hyperdisco.xen.io.ring import REQ_EVENT, REQ_PROD, RING_HEADER, RSP_PROD

GRANT_GPFN = 0x3000
TX_GPA, RX_GPA = 0x500000, 0x501000
DATA_GPA = 0x600000  # page n granted as ref 10 + n
TX_REF, RX_REF = 1, 2


class Front:
    def __init__(self, dh: DomainHarness) -> None:
        self.mem = dh.dom.memory
        arg = dh.put(xen_abi.ADD_TO_PHYSMAP, xen_abi.DOMID_SELF, 0, xen_abi.XENMAPSPACE_grant_table, 0,
                     GRANT_GPFN)
        assert dh.call("memory_op", xen_abi.XENMEM_add_to_physmap, arg) == 0
        self.table = GRANT_GPFN << 12
        self.grant(TX_REF, TX_GPA)
        self.grant(RX_REF, RX_GPA)
        for n in range(64):
            self.grant(10 + n, DATA_GPA + n * 4096)
        for gpa in (TX_GPA, RX_GPA):
            self.mem.pack(struct.Struct("<IIII"), gpa, 0, 1, 0, 1)  # SHARED_RING_INIT
        self.tx_prod = self.rx_prod = 0
        self.sent: list[tuple[fr.Meta, bytes]] = []
        self.complaints: list[str] = []
        self.notified = 0
        self.stack = ExitStack()
        txp = self.stack.enter_context(dh.dom.grants.access(TX_REF, 0, write=True))
        rxp = self.stack.enter_context(dh.dom.grants.access(RX_REF, 0, write=True))
        self.rings = NetRings(txp, rxp, dh.dom.grants, 0, self.send, self.notify, self.complain,
                              rx_gso=frozenset({netif.GSO_TYPE_TCPV4}))

    def send(self, meta: fr.Meta, data: bytes) -> bool:
        self.sent.append((meta, data))
        return True

    def notify(self) -> None:
        self.notified += 1

    def complain(self, kind: str, msg: str) -> None:
        self.complaints.append(kind)

    def grant(self, ref: int, gpa: int, flags: int = GTF_permit_access) -> None:
        self.mem.pack(GRANT_ENTRY_V1, self.table + ref * 8, flags, 0, gpa >> 12)

    # tx: the frontend's side
    def tx_put(self, raw: bytes) -> None:
        self.mem.write(TX_GPA + RING_HEADER + (self.tx_prod % netif.TX_RING_SIZE) * netif.TX_ENTRY, raw)
        self.tx_prod += 1

    def tx_push(self) -> None:
        self.mem.set_u32(TX_GPA + REQ_PROD, self.tx_prod)

    def tx_responses(self) -> list[tuple[int, int]]:
        n = self.mem.u32(TX_GPA + RSP_PROD)
        return [netif.TX_RESPONSE.unpack(self.mem.read(TX_GPA + RING_HEADER + i * netif.TX_ENTRY, 4))
                for i in range(n)]

    # rx
    def rx_post(self, n: int, first_ref: int = 30) -> None:
        for k in range(n):
            at = RX_GPA + RING_HEADER + (self.rx_prod % netif.RX_RING_SIZE) * netif.RX_ENTRY
            self.mem.write(at, netif.RX_REQUEST.pack(self.rx_prod & 0xFFFF, first_ref + k))
            self.rx_prod += 1
        self.mem.set_u32(RX_GPA + REQ_PROD, self.rx_prod)

    def rx_responses(self) -> list[tuple[int, int, int, int]]:
        n = self.mem.u32(RX_GPA + RSP_PROD)
        return [netif.RX_RESPONSE.unpack(self.mem.read(RX_GPA + RING_HEADER + i * netif.RX_ENTRY, 8))
                for i in range(n)]


@pytest.fixture
def front(dh: DomainHarness) -> Iterator[Front]:
    f = Front(dh)
    yield f
    f.stack.close()


def page_data(f: Front, n: int, data: bytes, off: int = 0) -> None:
    f.mem.write(DATA_GPA + n * 4096 + off, data)


def test_single_slot_packet_goes_out_with_its_checksum_state(front: Front) -> None:
    pkt = bytes(range(256)) * 4
    page_data(front, 0, pkt, off=100)
    front.tx_put(netif.TX_REQUEST.pack(10, 100, netif.NETTXF_csum_blank, 7, len(pkt)))
    front.tx_push()
    assert front.rings.tx_process(64) is False
    assert front.sent == [(fr.Meta(fr.CSUM_BLANK | fr.DATA_VALIDATED, 0, 0), pkt)]
    assert front.tx_responses() == [(7, netif.RSP_OKAY)]
    assert front.mem.u32(TX_GPA + REQ_EVENT) == 2  # armed for the next request


def test_multi_slot_gso_packet_is_gathered_and_extra_answered_null(front: Front) -> None:
    a, b, c = b"A" * 2000, b"B" * 4096, b"C" * 1000
    page_data(front, 0, a)
    page_data(front, 1, b)
    page_data(front, 2, c)
    total = len(a) + len(b) + len(c)
    front.tx_put(netif.TX_REQUEST.pack(10, 0, netif.NETTXF_extra_info | netif.NETTXF_more_data, 1, total))
    gso = netif.EXTRA_GSO.pack(1448, netif.GSO_TYPE_TCPV4, 0, 0)
    front.tx_put(netif.EXTRA_INFO.pack(netif.EXTRA_TYPE_GSO, 0, gso))
    front.tx_put(netif.TX_REQUEST.pack(11, 0, netif.NETTXF_more_data, 2, len(b)))
    front.tx_put(netif.TX_REQUEST.pack(12, 0, 0, 3, len(c)))
    front.tx_push()
    front.rings.tx_process(64)
    assert front.sent == [(fr.Meta(0, fr.GSO_TCPV4, 1448), a + b + c)]
    assert front.tx_responses() == [(1, 0), (0, netif.RSP_NULL), (2, 0), (3, 0)]


def test_bad_grant_fails_the_packet_only(front: Front) -> None:
    front.grant(10, DATA_GPA, GTF_permit_access)
    front.mem.pack(GRANT_ENTRY_V1, front.table + 40 * 8, 0, 0, 0)  # ref 40: not granted
    front.tx_put(netif.TX_REQUEST.pack(40, 0, 0, 5, 100))
    page_data(front, 0, b"x" * 60)
    front.tx_put(netif.TX_REQUEST.pack(10, 0, 0, 6, 60))
    front.tx_push()
    front.rings.tx_process(64)
    assert front.tx_responses() == [(5, netif.RSP_ERROR), (6, netif.RSP_OKAY)]
    assert [d for _m, d in front.sent] == [b"x" * 60]
    assert front.rings.stats.tx_errors == 1 and "grant" in front.complaints


def test_size_smaller_than_fragments_is_an_error_not_a_crash(front: Front) -> None:
    front.tx_put(netif.TX_REQUEST.pack(10, 0, netif.NETTXF_more_data, 1, 10))
    front.tx_put(netif.TX_REQUEST.pack(11, 0, 0, 2, 4000))
    front.tx_push()
    front.rings.tx_process(64)
    assert front.tx_responses() == [(1, netif.RSP_ERROR), (2, netif.RSP_ERROR)]
    assert front.sent == []


@pytest.mark.parametrize("case", ["crosses page", "cut off", "too many slots", "bad extra", "prod overflow"])
def test_untrustworthy_ring_raises(front: Front, case: str) -> None:
    if case == "crosses page":
        front.tx_put(netif.TX_REQUEST.pack(10, 4000, 0, 1, 200))
    elif case == "cut off":
        front.tx_put(netif.TX_REQUEST.pack(10, 0, netif.NETTXF_more_data, 1, 200))
    elif case == "too many slots":
        for k in range(30):
            front.tx_put(netif.TX_REQUEST.pack(10, 0, netif.NETTXF_more_data if k < 29 else 0, k, 100))
    elif case == "bad extra":
        front.tx_put(netif.TX_REQUEST.pack(10, 0, netif.NETTXF_extra_info, 1, 100))
        front.tx_put(netif.EXTRA_INFO.pack(9, 0, bytes(6)))
    else:
        front.tx_prod = netif.TX_RING_SIZE + 5
    front.tx_push()
    with pytest.raises(RingError):
        front.rings.tx_process(64)


def test_rx_frame_fills_posted_pages_with_gso_extra(front: Front) -> None:
    data = bytes(i & 0xFF for i in range(9000))
    front.rings.rx_enqueue(fr.Meta(fr.CSUM_BLANK, fr.GSO_TCPV4, 1448), data)
    assert front.rings.rx_flush() is True  # no buffers yet: it waits
    assert front.mem.u32(RX_GPA + REQ_EVENT) == 4  # asks to be told when 3 pages + 1 extra slot are there
    front.rx_post(4)
    assert front.rings.rx_flush() is False
    rsp = front.rx_responses()
    assert len(rsp) == 4
    rid, off, flags, status = rsp[0]
    assert (rid, off, status) == (0, 0, 4096)
    assert flags & netif.NETRXF_extra_info and flags & netif.NETRXF_more_data
    assert flags & netif.NETRXF_csum_blank and flags & netif.NETRXF_data_validated
    extra = front.mem.read(RX_GPA + RING_HEADER + 1 * netif.RX_ENTRY, 8)
    etype, eflags, u = netif.EXTRA_INFO.unpack(extra)
    assert (etype, eflags) == (netif.EXTRA_TYPE_GSO, 0)
    assert netif.EXTRA_GSO.unpack(u)[:2] == (1448, netif.GSO_TYPE_TCPV4)
    assert rsp[2] == (2, 0, netif.NETRXF_more_data, 4096)
    assert rsp[3] == (3, 0, 0, 9000 - 8192)
    got = front.mem.read(DATA_GPA + 20 * 4096, 4096) + front.mem.read(DATA_GPA + 22 * 4096, 4096) \
        + front.mem.read(DATA_GPA + 23 * 4096, 808)
    assert got == data
    assert front.notified >= 1


def test_rx_queue_is_bounded_and_unsupported_gso_dropped(front: Front) -> None:
    front.rings.rx_enqueue(fr.Meta(0, fr.GSO_TCPV6, 1400), b"x" * 3000)
    assert front.rings.stats.rx_errors == 1
    for _ in range(600):
        front.rings.rx_enqueue(fr.PLAIN, b"y" * 60)
    assert front.rings.stats.rx_dropped == 600 - 512


def test_rx_into_read_only_grant_fails_that_slot(front: Front) -> None:
    front.grant(30, DATA_GPA + 20 * 4096, GTF_permit_access | GTF_readonly)
    front.rings.rx_enqueue(fr.PLAIN, b"z" * 100)
    front.rx_post(1)
    front.rings.rx_flush()
    assert front.rx_responses()[0][3] == netif.RSP_ERROR
    assert front.rings.stats.rx_errors == 1


def test_a_frontend_that_keeps_sending_bad_packets_is_disconnected(front: Front) -> None:
    front.mem.pack(GRANT_ENTRY_V1, front.table + 40 * 8, 0, 0, 0)  # ref 40: not granted
    with pytest.raises(RingError, match="bad packets"):
        for _ in range(400):
            for _k in range(100):
                front.tx_put(netif.TX_REQUEST.pack(40, 0, 0, 5, 100))
            front.tx_push()
            front.rings.tx_process(1000)
    assert front.rings.stats.tx_errors > 256


def test_rate_limit_holds_packets_on_the_ring_until_credit_returns(front: Front) -> None:
    now = [100.0]
    credit = Credit(10_000, 1_000_000, clock=lambda: now[0])  # 10 kB/s, burst 128 KiB
    front.rings.credit = credit
    page_data(front, 0, b"p" * 4000)
    for k in range(50):  # 200 kB: the burst lets 32 through, then the ring waits
        front.tx_put(netif.TX_REQUEST.pack(10, 0, 0, k, 4000))
    front.tx_push()
    assert front.rings.tx_process(1000) is True
    sent = len(front.sent)
    assert 30 <= sent <= 33 and front.rings.throttled > 0
    assert len(front.tx_responses()) == sent  # the held packets stay on the ring, unanswered
    now[0] += 4.0  # 40 kB of credit: ten more packets
    front.rings.tx_process(1000)
    assert len(front.sent) == sent + 10
    now[0] += 100.0
    assert front.rings.tx_process(1000) is False
    assert len(front.sent) == 50 and len(front.tx_responses()) == 50
