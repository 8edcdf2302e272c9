"""One vif's backend: the xenbus handshake with xen-netfront and the thread that moves its frames.

The handshake is Linux netback's (drivers/net/xen-netback/xenbus.c) as netfront expects it
(drivers/net/xen-netfront.c): we publish our features and go InitWait; netfront then writes tx-ring-ref,
rx-ring-ref, event-channel, request-rx-copy, feature-rx-notify and its offloads, and goes Connected; we
map both rings, bind the event channel and go Connected. Frontend Closing/Closed: we disconnect and
follow; a frontend that comes back to Initialising (its module reloaded) gets a fresh InitWait. We offer
one queue, one event channel, the copying rx path, scatter-gather, TCP GSO both ways and checksum
offload; a frontend that insists on anything else is refused through the backend's error node.

Threads: the guest's event-channel sends arrive on its vCPU thread; when nobody else is serving the
rings, the tx ring is served right there (no thread hand-off per packet), otherwise the device thread is
woken through an eventfd. The device thread also waits on the vif's socket for frames from domain 0's
switch and copies them into the guest's rx buffers.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ...core.grant import GrantError
from ...xen.io import netif
from ...xen.io import xenbus as xb
from ..back_ring import RingError
from ..net import frame as fr
from ..socket_backend import SocketBackend
from .rings import Credit, NetRings, VifStats

TX_BUDGET = 64  # packets per round before the thread looks at its socket and xenstore again
INLINE_BUDGET = 16  # packets served on the guest's vCPU thread when it kicks an idle backend
RX_BATCH = 64  # frames read from the socket per round
MAX_RING_REF = 1 << 32


class VifBackend(SocketBackend):
    def __init__(self, dom: Any, xenstored: Any, devid: int, mac: str, sock: socket.socket,
                 log: Callable[[str], None]) -> None:
        super().__init__(dom, xenstored, "vif", devid, f"netback d{dom.domid} vif{devid}",
                         f"netback-d{dom.domid}-{devid}", sock, log)
        self.mac = mac
        self.stats = VifStats()
        self.rings: NetRings | None = None
        self._serving = threading.RLock()  # one server of the rings at a time
        self._kicked = False
        self._buf = bytearray(fr.MAX_MESSAGE)

    def _prepare(self, sock: socket.socket) -> None:
        super()._prepare(sock)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, fr.SOCKET_BUFFER)
            except OSError:
                pass

    # -- other threads ----------------------------------------------------------------------------------
    def _kick(self) -> None:
        """The guest signalled the event channel (on its vCPU thread): serve a few packets here if the
        rings are idle, hand the rest to the device thread."""
        if self.rings is not None and self._serving.acquire(blocking=False):
            try:
                more = self._serve(INLINE_BUDGET)
            finally:
                self._serving.release()
            if not more:
                return
        with self._flags_lock:
            self._kicked = True
        self._wake()

    def _send(self, meta: fr.Meta, data: bytes) -> bool:
        try:
            self.sock.send(fr.pack(meta, data))
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in (errno.ENOBUFS, errno.EAGAIN):
                return False
            self.limit.log(self.log, "socket", f"switch socket: {e}")
            return False

    # -- the device thread ------------------------------------------------------------------------------
    def _state_lock(self) -> AbstractContextManager[Any]:
        return self._serving

    def _loop(self) -> None:
        more = False
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        sock_fd = -1
        while True:
            if self.sock.fileno() != sock_fd:
                if sock_fd >= 0:
                    poller.unregister(sock_fd)
                sock_fd = self.sock.fileno()
                poller.register(sock_fd, select.POLLIN)
            rings = self.rings
            wait = rings.throttled if rings is not None else 0.0
            events = poller.poll(max(1, int(wait * 1000)) if wait else (0 if more else None))
            with self._flags_lock:
                if self._stop:
                    break
                xenbus = self._xenbus
                self._xenbus = self._kicked = False
            for fd, ev in events:
                if fd == self._wake_fd:
                    self._clear_wake()
                elif ev & (select.POLLHUP | select.POLLERR) and not ev & select.POLLIN:
                    poller.unregister(fd)  # domain 0 went away: frames stop until it adopts us
                    sock_fd = -2
            if xenbus:
                with self._serving:
                    self._frontend_changed()
            self._receive()
            with self._serving:
                more = self._serve(TX_BUDGET)

    def _receive(self) -> None:
        """Frames from the switch, into the guest's rx queue (dropped while not connected)."""
        rings = self.rings
        for _ in range(RX_BATCH):
            try:
                n = self.sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if n == 0:
                return
            try:
                meta, view = fr.parse(memoryview(self._buf)[:n])
            except fr.FrameError as e:
                self.limit.log(self.log, "frame", f"bad frame from the switch: {e}")
                continue
            if rings is None:
                self.stats.rx_dropped += 1
                continue
            rings.rx_enqueue(meta, bytes(view))

    def _serve(self, budget: int) -> bool:
        rings = self.rings
        if rings is None:
            return False
        try:
            more = rings.tx_process(budget)
            rings.rx_flush()  # frames still waiting for buffers: req_event is armed, the guest kicks us
            return more
        except (RingError, GrantError) as e:
            return self._ring_failed(e)

    # -- xenbus (the state machine: backends/xenbus_backend.py) ------------------------------------------
    @property
    def connected(self) -> bool:
        return self.rings is not None

    def _advertise(self) -> None:
        """What Linux netback writes in its backend directory (xenbus.c netback_probe)."""
        nodes = {
            "feature-sg": "1",
            "feature-gso-tcpv4": "1",
            "feature-gso-tcpv6": "1",
            "feature-ipv6-csum-offload": "1",
            "feature-rx-copy": "1",
            "feature-rx-flip": "0",
        }
        self._publish(nodes)

    def _connect(self) -> None:
        queues = self._read_uint("multi-queue-num-queues", 1 << 16)
        if queues is not None and queues > 1:
            return self._fatal(f"frontend asks for {queues} queues, we offer 1")
        if self._read("event-channel-tx") is not None and self._read("event-channel") is None:
            return self._fatal("frontend asks for split event channels, we offer one")
        if self._read("request-rx-copy") != "1":
            return self._fatal("frontend does not ask for the copying rx path (flipping is gone)")
        if self._read("feature-rx-notify") != "1":
            return self._fatal("frontend does not offer feature-rx-notify")
        tx_ref = self._read_uint("tx-ring-ref", MAX_RING_REF)
        rx_ref = self._read_uint("rx-ring-ref", MAX_RING_REF)
        port = self._read_port("event-channel")
        if tx_ref is None or rx_ref is None or port is None:
            return self._fatal("frontend gave no valid tx-ring-ref, rx-ring-ref or event-channel")
        gso = frozenset(t for t, key in ((netif.GSO_TYPE_TCPV4, "feature-gso-tcpv4"),
                                         (netif.GSO_TYPE_TCPV6, "feature-gso-tcpv6"))
                        if self._read(key) == "1")
        sg = self._read("feature-sg") == "1"
        pages = self._attach({"tx-ring-ref": tx_ref, "rx-ring-ref": rx_ref}, "event-channel", port)
        if pages is None:
            return None
        tx_page, rx_page = pages
        self.rings = NetRings(tx_page, rx_page, self.dom.grants, 0, self._send, self._notify,
                              self._complain, rx_gso=gso, rx_sg=sg, stats=self.stats, credit=self._credit())
        self._clear_error()
        self._switch(xb.XenbusStateConnected)
        self.limit.log(self.log, "connected", f"connected: {self.mac}, tx-ring-ref {tx_ref}, "
                       f"rx-ring-ref {rx_ref}, event channel {port}")
        with self._flags_lock:
            self._kicked = True
        return None

    def _credit(self) -> Credit | None:
        """The rate limit domain 0 wrote in our backend directory ("rate" = "BYTES,USEC", as libxl writes
        it and Linux netback reads it), or None. The node is domain 0's: the guest cannot change it."""
        try:
            raw = self.xs.read(f"{self.be}/rate")
        except Exception:
            return None
        parts = str(raw or "").split(",")
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() and 0 < int(p) < 1 << 40 for p in parts):
            return None
        return Credit(int(parts[0]), int(parts[1]))

    def _complain(self, kind: str, msg: str) -> None:
        self.limit.log(self.log, kind, msg)

    def _disconnect(self) -> None:
        if self.rings is None:
            return
        self.limit.log(self.log, "disconnected", "disconnected")
        rings, self.rings = self.rings, None
        rings.close()
        self._detach()
