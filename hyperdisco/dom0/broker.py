"""Domain 0's broker of inter-domain event channels between domain processes (the protocol is described
in vmm/interdomain.py).

Domain 0 keeps the table of links it made, (domain, port) <-> (domain, port), and routes a send only
along a link: a domain process, however compromised, can raise only the ports of its own links, and only
after the other domain's process agreed to the link under Xen's rules (its port unbound and offered to
the binder). Signals are coalesced per destination port while one waits in the destination's queue,
so a domain that sends in a loop cannot fill another's channel. Nothing here waits for a domain on the
thread that reads its messages: a bind's question to the other domain runs on a short-lived thread
(at most MAX_BINDS at a time).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..xen import abi

if TYPE_CHECKING:
    from .handle import DomainHandle
    from .host import Host

MAX_BINDS = 64  # questions in flight on the whole host
MAX_BINDS_PER_DOMAIN = 4  # ... by one domain or of one (one that never answers holds only these)
PEER_TIMEOUT_S = 3.0  # below the binder's own wait (vmm/interdomain.BIND_TIMEOUT_S)
# a port of any domain's: below the FIFO ABI's 2^17 (event_channel.h); each domain process checks its own
# limit (the 2-level ABI's 4096, max_event_channels) when it binds or is asked to
MAX_PORT = abi.EVTCHN_FIFO_NR_CHANNELS
MAX_CLAIMS = abi.EVTCHN_2L_NR_CHANNELS  # links an adopted domain process may claim (each one checked)


def _port(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v < MAX_PORT else None


class EventChannelBroker:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._links: dict[tuple[int, int], tuple[int, int]] = {}
        self._binds = threading.BoundedSemaphore(MAX_BINDS)
        self._asking: dict[int, int] = {}  # domid -> binds in flight it asked or is asked
        self._inflight: set[tuple[int, int]] = set()  # (binder, its port) whose question is out
        self._cancelled: set[tuple[int, int]] = set()  # ... whose binder gave up (closed that port)
        self._claims: dict[int, list[tuple[int, int, int]]] = {}  # adopted domains' own account

    # -- from a domain process --------------------------------------------------------------------------
    def bind(self, src: DomainHandle, msg: dict[str, Any]) -> None:
        remote, req = msg.get("remote"), msg.get("id")
        rport, port = _port(msg.get("rport")), _port(msg.get("port"))
        peer = self.host.domain(remote) if isinstance(remote, int) and not isinstance(remote, bool) else None

        def answer(errno: int) -> None:
            src.send({"t": "evtchn-bound", "id": req, "errno": errno})

        if rport is None or port is None:
            return answer(abi.EINVAL)
        if peer is None or peer is src or peer.finished:
            return answer(abi.ESRCH)
        key = (src.domid, port)
        with self._lock:
            if key in self._links or key in self._inflight:
                return answer(abi.EINVAL)
            if (self._asking.get(src.domid, 0) >= MAX_BINDS_PER_DOMAIN
                    or self._asking.get(peer.domid, 0) >= MAX_BINDS_PER_DOMAIN
                    or not self._binds.acquire(blocking=False)):
                return answer(abi.EBUSY)
            for d in (src.domid, peer.domid):
                self._asking[d] = self._asking.get(d, 0) + 1
            self._inflight.add(key)

        def ask() -> None:
            err = abi.ESRCH
            try:
                question = {"t": "evtchn-peer-bind", "remote": src.domid, "rport": rport, "port": port}
                reply = peer.call(question, timeout=PEER_TIMEOUT_S)
                said = reply.get("errno") if reply is not None else abi.ESRCH
                err = said if isinstance(said, int) and 0 <= said < 4096 else abi.EINVAL
                with self._lock:
                    if err == 0 and (peer.finished or src.finished or key in self._cancelled):
                        err = abi.ESRCH
                    elif err == 0:
                        self._links[key] = (peer.domid, rport)
                        self._links[(peer.domid, rport)] = key
            finally:
                with self._lock:
                    self._inflight.discard(key)
                    self._cancelled.discard(key)
                    for d in (src.domid, peer.domid):
                        self._asking[d] -= 1
                        if not self._asking[d]:
                            del self._asking[d]
                self._binds.release()
            if err:
                # the other process may have linked its end after all (it answered late, or the binder
                # gave up meanwhile): undo that, as a close of ours would
                peer.send({"t": "evtchn-peer-closed", "port": rport, "from": src.domid, "from_port": port})
            answer(err)

        threading.Thread(target=ask, name=f"evtchn-bind-d{src.domid}", daemon=True).start()
        return None

    def send(self, src: DomainHandle, msg: dict[str, Any]) -> None:
        port = _port(msg.get("port"))
        with self._lock:
            dst = self._links.get((src.domid, port)) if port is not None else None
        peer = self.host.domain(dst[0]) if dst is not None else None
        if peer is not None and dst is not None:
            peer.send_coalesced(f"evtchn:{dst[1]}", {"t": "evtchn-raise", "port": dst[1], "from": src.domid,
                                                     "from_port": port})

    def close(self, src: DomainHandle, msg: dict[str, Any]) -> None:
        port = _port(msg.get("port"))
        if port is None:
            return
        with self._lock:
            if (src.domid, port) in self._inflight:  # its bind is still being asked: it gave up
                self._cancelled.add((src.domid, port))
        self._unlink(src.domid, port)

    def _unlink(self, domid: int, port: int) -> None:
        with self._lock:
            dst = self._links.pop((domid, port), None)
            if dst is not None:
                self._links.pop(dst, None)
        peer = self.host.domain(dst[0]) if dst is not None else None
        if peer is not None and dst is not None:
            peer.send({"t": "evtchn-peer-closed", "port": dst[1], "from": domid, "from_port": port})

    # -- domains coming and going -----------------------------------------------------------------------
    def domain_gone(self, domid: int) -> None:
        with self._lock:
            mine = [port for (d, port) in self._links if d == domid]
            self._claims.pop(domid, None)
        for port in mine:
            self._unlink(domid, port)

    def adopt(self, domid: int, links: object) -> None:
        """An adopted domain's account of its links: linked again where the other side says the same."""
        claims = []
        if isinstance(links, list):
            for item in links[:MAX_CLAIMS]:
                if isinstance(item, list) and len(item) == 3 and all(isinstance(v, int) for v in item):
                    claims.append((int(item[0]), int(item[1]), int(item[2])))
        with self._lock:
            self._claims[domid] = claims
            for port, rdom, rport in claims:
                if (rport, domid, port) in self._claims.get(rdom, []):
                    self._links[(domid, port)] = (rdom, rport)
                    self._links[(rdom, rport)] = (domid, port)

    def links(self) -> dict[tuple[int, int], tuple[int, int]]:
        with self._lock:
            return dict(self._links)
