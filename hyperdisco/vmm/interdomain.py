"""Inter-domain event channels between domains in different processes, brokered by domain 0.

Xen's inter-domain channel (EVTCHNOP_alloc_unbound in A offering a port to B, EVTCHNOP_bind_interdomain
in B) joins two domains' ports; here the two domains live in separate jailed processes that cannot reach
each other, so domain 0 (dom0/broker.py) checks and routes:

  B binds:  B -> dom0  evtchn-bind {id, remote A, rport, port}
            dom0 -> A  evtchn-peer-bind {id, remote B, rport, port}: A checks its port `rport` is unbound
                       and offered to B (Xen's evtchn_bind_interdomain checks), links it, answers
            dom0 -> B  evtchn-bound {id, errno}: B keeps its new port or closes it
  sends:    X -> dom0  evtchn-send {port}; dom0 -> Y  evtchn-raise {port, from, from_port}, only along a
            link it made: a domain can raise only the port it is linked to
  closes:   X -> dom0  evtchn-close {port}; dom0 -> Y  evtchn-peer-closed {port, from}: Y's end becomes
            unbound and offered to X again, as in Xen

Every message from domain 0 is checked against this process's own port table too, so a confused
domain 0 cannot make a port change state in a way Xen would not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..core.domain import Domain
from ..core.evtchn import EvtchnError, Port
from ..xen import abi

BIND_TIMEOUT_S = 5.0
MAX_BINDS_IN_FLIGHT = 8


class BrokeredChannels:
    def __init__(self, dom: Domain, send: Callable[[dict[str, Any]], None],
                 call: Callable[[dict[str, Any], float], dict[str, Any] | None]) -> None:
        self.dom = dom
        self.send = send  # to domain 0, no answer
        self.call = call  # to domain 0, waits for the answer with the same id (None: no answer in time)
        self._binds = threading.BoundedSemaphore(MAX_BINDS_IN_FLIGHT)

    # -- the guest's hypercalls -------------------------------------------------------------------------
    def bind(self, remote: int, rport: int) -> int:
        if not 0 < remote < abi.DOMID_FIRST_RESERVED:
            raise EvtchnError(abi.ESRCH, f"no domain {remote}")
        if not self._binds.acquire(blocking=False):
            raise EvtchnError(abi.EBUSY, "too many binds in flight")
        ec = self.dom.evtchn
        try:
            port = ec.alloc(Port(abi.EVTCHNSTAT_interdomain, remote_dom=remote, remote_port=rport))
            reply = self.call({"t": "evtchn-bind", "remote": remote, "rport": rport, "port": port},
                              BIND_TIMEOUT_S)
            err = abi.ESRCH if reply is None else reply.get("errno", abi.EINVAL)
            if not isinstance(err, int) or err < 0 or err > 4095:
                err = abi.EINVAL
            if err:
                if reply is None:  # domain 0 may still link it: tell it we gave up
                    self.send({"t": "evtchn-close", "port": port})
                ec.close(port)
                raise EvtchnError(err, f"d{remote} port {rport}: refused")
            self._link(ec.ports[port], port)
        finally:
            self._binds.release()
        ec.notify(port)  # as Xen, the new local end starts pending
        return port

    def _link(self, p: Port, port: int) -> None:
        p.on_send = lambda: self.send({"t": "evtchn-send", "port": port})
        p.on_close = lambda: self.send({"t": "evtchn-close", "port": port})

    def describe(self) -> list[list[int]]:
        """Our brokered links, [port, remote domain, remote port] each (for a domain 0 that adopts us:
        it links two ends again only where both sides say the same)."""
        return [[n, p.remote_dom, p.remote_port] for n, p in list(self.dom.evtchn.ports.items())
                if p.state == abi.EVTCHNSTAT_interdomain and p.on_close is not None]

    # -- from domain 0 ----------------------------------------------------------------------------------
    def peer_bind(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Domain `remote` wants our port `rport`, its end being `port`: Xen's checks, then link."""
        remote, rport, port = msg.get("remote"), msg.get("rport"), msg.get("port")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (remote, rport, port)):
            return {"errno": abi.EINVAL}
        assert isinstance(rport, int) and isinstance(remote, int) and isinstance(port, int)
        ec = self.dom.evtchn
        with ec.lock:  # against the guest closing that port on a vCPU thread meanwhile
            p = ec.ports.get(rport)
            if (p is None or p.state != abi.EVTCHNSTAT_unbound or p.remote_dom != remote
                    or p.on_send is not None):
                return {"errno": abi.EINVAL}
            p.state, p.remote_port = abi.EVTCHNSTAT_interdomain, port
            self._link(p, rport)
        return {"errno": 0}

    def raise_port(self, msg: dict[str, Any]) -> None:
        port, src, src_port = msg.get("port"), msg.get("from"), msg.get("from_port")
        p = self.dom.evtchn.ports.get(port) if isinstance(port, int) else None
        if (p is not None and p.state == abi.EVTCHNSTAT_interdomain and p.remote_dom == src
                and p.remote_port == src_port and isinstance(port, int)):
            self.dom.evtchn.notify(port)

    def peer_closed(self, msg: dict[str, Any]) -> None:
        port, src, src_port = msg.get("port"), msg.get("from"), msg.get("from_port")
        ec = self.dom.evtchn
        with ec.lock:
            p = ec.ports.get(port) if isinstance(port, int) else None
            if (p is not None and p.state == abi.EVTCHNSTAT_interdomain and p.remote_dom == src
                    and p.remote_port == src_port and p.on_close is not None):
                p.state, p.remote_port, p.on_send, p.on_close = abi.EVTCHNSTAT_unbound, 0, None, None
