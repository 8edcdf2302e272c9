"""The two rings of one vif (io/netif.h), as Linux's netback serves them (drivers/net/xen-netback).

tx (guest -> network): a packet is a first request (its `size` is the packet's), extra-info slots when
XEN_NETTXF_extra_info is set (GSO), then one request per further fragment while XEN_NETTXF_more_data is
set. Everything is copied out of the shared page once and checked: each fragment inside its page; the
first fragment's share (size minus the others) not negative; at least an Ethernet header in all; at
most MAX_DATA_SLOTS fragments (Linux's fatal_skb_slots); extra types known. A bad packet is answered
XEN_NETIF_RSP_ERROR in every slot and dropped; a ring that cannot be trusted (a packet cut off at the
producer index, too many slots, a fragment crossing its page, an unknown extra type) raises RingError
and the vif is disconnected, as Linux's xenvif_fatal_tx_err does.

rx (network -> guest): the frontend posts granted empty pages; a frame is copied into as many of them
as it needs (4 KiB each, from offset 0), plus one slot for the GSO extra after the first, and each
response says how many bytes its page holds. A frame waits (a bounded queue) until enough pages are
posted; when the queue is full, frames are dropped and counted, never blocking the sender.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ...core.grant import GrantError
from ...xen.io import netif
from ...xen.xen import PAGE
from ..back_ring import BackRing, RingError, RingPage
from ..net import frame as fr

MAX_DATA_SLOTS = 20  # Linux netback's fatal_skb_slots (FATAL_SKB_SLOTS_DEFAULT)
MAX_EXTRAS = netif.EXTRA_TYPE_MAX  # a chain of extras longer than the kinds there are is broken
RX_QUEUE_FRAMES = 512  # frames waiting for the guest's rx buffers before new ones are dropped
RX_QUEUE_BYTES = 8 << 20
MAX_RX_FRAME = (netif.NR_SLOTS_MIN - 1) * PAGE  # netfront refuses packets of more slots
# A frontend that keeps sending bad packets is disconnected: a burst of this many is answered with errors,
# then the budget refills at BAD_PACKET_RATE per second
BAD_PACKET_BURST = 256
BAD_PACKET_RATE = 64.0


class Grants(Protocol):
    def access(self, ref: int, grantee: int, write: bool) -> AbstractContextManager[RingPage]: ...


@dataclass
class VifStats:
    tx_packets: int = 0  # from the guest
    tx_bytes: int = 0
    tx_errors: int = 0  # bad packets answered with RSP_ERROR
    tx_dropped: int = 0  # good packets the switch's socket did not take
    rx_packets: int = 0  # to the guest
    rx_bytes: int = 0
    rx_dropped: int = 0  # no room: the guest posted too few buffers
    rx_errors: int = 0  # frames that cannot be delivered (GSO the frontend did not ask for, too big)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Credit:
    """The vif's transmit rate limit, as Linux netback's credit scheduler (xenbus.c xen_net_read_rate,
    netback.c tx_credit_exceeded): `bytes_per` bytes every `usec` microseconds, with a burst of at least
    128 KiB so that the largest packet can always pass."""

    def __init__(self, bytes_per: int, usec: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = bytes_per / (usec / 1e6)  # bytes per second
        self.burst = float(max(bytes_per, 128 << 10))
        self.tokens = self.burst
        self.clock = clock
        self.at = clock()

    def take(self, size: int) -> float:
        """0.0 if `size` bytes may go now (and takes them), else the seconds to wait."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= size:
            self.tokens -= size
            return 0.0
        return (size - self.tokens) / self.rate


class BadPacket(Exception):
    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


class NetRings:
    """Both rings of one connected vif. `send(meta, frame) -> bool` takes a frame the guest sent (False:
    dropped); `complain(kind, msg)` logs a bad packet (rate-limited by the caller); `notify()` signals the
    guest's event channel."""

    def __init__(self, tx_page: RingPage, rx_page: RingPage, grants: Grants, backend_domid: int,
                 send: Callable[[fr.Meta, bytes], bool], notify: Callable[[], None],
                 complain: Callable[[str, str], None], rx_gso: frozenset[int] = frozenset(),
                 rx_sg: bool = True, stats: VifStats | None = None, credit: Credit | None = None) -> None:
        self.tx = BackRing(tx_page, netif.TX_ENTRY)
        self.rx = BackRing(rx_page, netif.RX_ENTRY)
        self.grants = grants
        self.domid = backend_domid
        self.send = send
        self.notify = notify
        self.complain = complain
        self.rx_gso = rx_gso  # GSO types the frontend accepts (feature-gso-tcpv4/6)
        self.rx_sg = rx_sg  # the frontend takes a frame in several pages (feature-sg)
        self.stats = stats if stats is not None else VifStats()
        self.rx_queue: collections.deque[tuple[fr.Meta, bytes]] = collections.deque()
        self.rx_queued_bytes = 0
        self.rx_lock = threading.Lock()  # the rx ring and its queue: the device thread or a vCPU thread
        self.credit = credit
        self.throttled = 0.0  # > 0: seconds until the rate limit lets the next packet go
        self._bad_budget = float(BAD_PACKET_BURST)
        self._bad_at = time.monotonic()

    # -- tx ---------------------------------------------------------------------------------------------
    def tx_process(self, budget: int) -> bool:
        """Take up to about `budget` packets off the tx ring; True if more may be waiting (or the rate
        limit holds them: `throttled` says for how long)."""
        ring = self.tx
        done = 0
        self.throttled = 0.0
        while True:
            n = ring.unconsumed()
            if n == 0:
                if ring.push():
                    self.notify()
                if not ring.final_check():
                    return False
                continue
            raws = ring.peek_many(n)
            i = 0
            while i < len(raws):
                if self.credit is not None:
                    wait = self.credit.take(netif.TX_REQUEST.unpack_from(raws[i])[4])
                    if wait:
                        self.throttled = wait
                        if ring.push():
                            self.notify()
                        return True
                j = self._tx_packet(raws, i)
                ring.advance(j - i)
                i = j
                done += 1
            if ring.push():
                self.notify()
            if done >= budget:
                return True

    def _tx_packet(self, raws: list[bytes], i: int) -> int:
        """Serve the packet starting at raws[i]; return the index after it."""
        gref, off, flags, rid, total = netif.TX_REQUEST.unpack(raws[i])
        frags = [(gref, off, rid, total)]
        responses: list[tuple[int, int]] = [(rid, netif.RSP_OKAY)]  # (id, status) in slot order
        j = i + 1
        meta_flags = 0
        if flags & netif.NETTXF_csum_blank:
            meta_flags |= fr.CSUM_BLANK | fr.DATA_VALIDATED
        elif flags & netif.NETTXF_data_validated:
            meta_flags |= fr.DATA_VALIDATED
        gso_type = gso_size = 0
        bad: BadPacket | None = None
        if flags & netif.NETTXF_extra_info:
            more = True
            count = 0
            while more:
                if j >= len(raws):
                    raise RingError("packet cut off before its extra info")
                etype, eflags, u = netif.EXTRA_INFO.unpack_from(raws[j])
                count += 1
                if etype == netif.EXTRA_TYPE_NONE or etype >= netif.EXTRA_TYPE_MAX or count > MAX_EXTRAS:
                    raise RingError(f"extra info of type {etype}")
                if etype == netif.EXTRA_TYPE_GSO:
                    size, gtype, _pad, _feat = netif.EXTRA_GSO.unpack_from(u)
                    if gtype not in (netif.GSO_TYPE_TCPV4, netif.GSO_TYPE_TCPV6) or size == 0:
                        bad = bad or BadPacket("gso", f"bad GSO extra (type {gtype}, size {size})")
                    gso_type, gso_size = gtype, size
                responses.append((0, netif.RSP_NULL))
                more = bool(eflags & netif.EXTRA_FLAG_MORE)
                j += 1
        more = bool(flags & netif.NETTXF_more_data)
        while more:
            if j >= len(raws):
                raise RingError("packet cut off at the producer index")
            g, o, f, r, s = netif.TX_REQUEST.unpack(raws[j])
            frags.append((g, o, r, s))
            responses.append((r, netif.RSP_OKAY))
            more = bool(f & netif.NETTXF_more_data)
            j += 1
            if len(frags) > MAX_DATA_SLOTS:
                raise RingError(f"a packet of more than {MAX_DATA_SLOTS} slots")
        # the first fragment holds what the others do not
        rest = sum(f[3] for f in frags[1:])
        first_len = total - rest
        if first_len < 0:
            bad = bad or BadPacket("size", f"packet size {total} smaller than its fragments ({rest})")
        for k, (_g, o, _r, s) in enumerate(frags):
            length = first_len if k == 0 else s
            if o + max(length, 0) > PAGE:
                raise RingError(f"fragment {o}+{length} crosses its page")
        if total < fr.ETH_HLEN:
            bad = bad or BadPacket("size", f"packet of {total} bytes")
        data = b""
        if bad is None:
            try:
                data = self._gather(frags, first_len)
            except GrantError as e:
                bad = BadPacket("grant", f"tx grant: {e}")
        if bad is not None:
            self.stats.tx_errors += 1
            self.complain(bad.kind, str(bad))
            self._spend_bad_budget()
            responses = [(r, netif.RSP_ERROR if s == netif.RSP_OKAY else s) for r, s in responses]
        else:
            meta = fr.PLAIN if not (meta_flags or gso_type) else fr.Meta(meta_flags, gso_type, gso_size)
            if self.send(meta, data):
                self.stats.tx_packets += 1
                self.stats.tx_bytes += len(data)
            else:
                self.stats.tx_dropped += 1
        for r, s in responses:
            self.tx.put_response(netif.TX_RESPONSE.pack(r, s))
        return j

    def _spend_bad_budget(self) -> None:
        now = time.monotonic()
        refill = (now - self._bad_at) * BAD_PACKET_RATE
        self._bad_budget = min(float(BAD_PACKET_BURST), self._bad_budget + refill)
        self._bad_at = now
        self._bad_budget -= 1
        if self._bad_budget < 0:
            raise RingError(f"more than {BAD_PACKET_BURST} bad packets in a row")

    def _gather(self, frags: list[tuple[int, int, int, int]], first_len: int) -> bytes:
        chunks = []
        for k, (g, o, _r, s) in enumerate(frags):
            length = first_len if k == 0 else s
            if length == 0:
                continue
            with self.grants.access(g, self.domid, write=False) as page:
                chunks.append(page.read(o, length))
        return b"".join(chunks)

    # -- rx ---------------------------------------------------------------------------------------------
    def rx_enqueue(self, meta: fr.Meta, data: bytes) -> None:
        """A frame for the guest: deliver it now if buffers are posted, else queue it (bounded)."""
        if meta.gso_type and meta.gso_type not in self.rx_gso:
            self.stats.rx_errors += 1
            return
        if len(data) > (MAX_RX_FRAME if self.rx_sg else PAGE):
            self.stats.rx_errors += 1
            return
        with self.rx_lock:
            if len(self.rx_queue) >= RX_QUEUE_FRAMES or self.rx_queued_bytes + len(data) > RX_QUEUE_BYTES:
                self.stats.rx_dropped += 1
                return
            self.rx_queue.append((meta, data))
            self.rx_queued_bytes += len(data)

    def rx_flush(self) -> bool:
        """Copy queued frames into the guest's posted buffers; True if frames still wait for buffers."""
        with self.rx_lock:
            q = self.rx_queue
            ring = self.rx
            while q:
                meta, data = q[0]
                chunks = (len(data) + PAGE - 1) // PAGE
                need = chunks + (1 if meta.gso_type else 0)
                if not ring.wait_for(need):
                    break
                q.popleft()
                self.rx_queued_bytes -= len(data)
                self._rx_frame(ring.requests(need), meta, data, chunks)
            if ring.push():
                self.notify()
            return bool(q)

    def _rx_frame(self, reqs: list[bytes], meta: fr.Meta, data: bytes, chunks: int) -> None:
        flags = 0
        if meta.flags & fr.CSUM_BLANK:
            flags = netif.NETRXF_csum_blank | netif.NETRXF_data_validated
        elif meta.flags & fr.DATA_VALIDATED:
            flags = netif.NETRXF_data_validated
        ok = True
        out: list[bytes] = []
        data_reqs = [reqs[0]] + reqs[2:] if meta.gso_type else reqs
        for k, raw in enumerate(data_reqs):
            rid, gref = netif.RX_REQUEST.unpack(raw)
            piece = data[k * PAGE:(k + 1) * PAGE]
            status = len(piece)
            try:
                with self.grants.access(gref, self.domid, write=True) as page:
                    page.write(0, piece)
            except GrantError as e:
                ok = False
                status = netif.RSP_ERROR
                self.complain("rx grant", f"rx grant: {e}")
            f = netif.NETRXF_more_data if k + 1 < chunks else 0
            if k == 0:
                f |= flags | (netif.NETRXF_extra_info if meta.gso_type else 0)
            out.append(netif.RX_RESPONSE.pack(rid, 0, f, status))
        if meta.gso_type:
            gso = netif.EXTRA_GSO.pack(meta.gso_size, meta.gso_type, 0, 0)
            out.insert(1, netif.EXTRA_INFO.pack(netif.EXTRA_TYPE_GSO, 0, gso))
        for resp in out:
            self.rx.put_response(resp)
        if ok:
            self.stats.rx_packets += 1
            self.stats.rx_bytes += len(data)
        else:
            self.stats.rx_errors += 1

    def close(self) -> None:
        with self.rx_lock:
            self.rx_queue.clear()
            self.rx_queued_bytes = 0
