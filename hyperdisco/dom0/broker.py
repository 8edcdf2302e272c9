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

MAX_BINDS = 16
PEER_TIMEOUT_S = 3.0  # below the binder's own wait (vmm/interdomain.BIND_TIMEOUT_S)
MAX_PORT = abi.EVTCHN_2L_NR_CHANNELS


def _port(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v < MAX_PORT else None


class EventChannelBroker:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._links: dict[tuple[int, int], tuple[int, int]] = {}
        self._binds = threading.BoundedSemaphore(MAX_BINDS)
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
        with self._lock:
            if (src.domid, port) in self._links:
                return answer(abi.EINVAL)
        if not self._binds.acquire(blocking=False):
            return answer(abi.EBUSY)

        def ask() -> None:
            try:
                ask = {"t": "evtchn-peer-bind", "remote": src.domid, "rport": rport, "port": port}
                reply = peer.call(ask, timeout=PEER_TIMEOUT_S)
                err = reply.get("errno") if reply is not None else abi.ESRCH
                err = err if isinstance(err, int) and 0 <= err < 4096 else abi.EINVAL
                if err == 0:
                    with self._lock:
                        if peer.finished or src.finished:
                            err = abi.ESRCH
                        else:
                            self._links[(src.domid, port)] = (peer.domid, rport)
                            self._links[(peer.domid, rport)] = (src.domid, port)
                answer(err)
            finally:
                self._binds.release()

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
        if port is not None:
            self._unlink(src.domid, port)

    def _unlink(self, domid: int, port: int) -> None:
        with self._lock:
            dst = self._links.pop((domid, port), None)
            if dst is not None:
                self._links.pop(dst, None)
        peer = self.host.domain(dst[0]) if dst is not None else None
        if peer is not None and dst is not None:
            peer.send({"t": "evtchn-peer-closed", "port": dst[1], "from": domid})

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
            for item in links[:MAX_PORT]:
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
