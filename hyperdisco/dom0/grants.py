"""Domain 0's broker of grant mappings between domain processes (the protocol is in vmm/grants.py).

Domain 0 routes only what it can check: who asks (the channel a message came on), of whom (a live
domain other than itself), which grant; the granter's own process checks its grant entry. Domain 0 keeps
the table of live mappings, mid -> (grantee, granter, ref, write), bounded per grantee and per granter,
so that an unmap or a death reaches exactly the granter of that mapping and no other. A read-only
mapping's memfd is reopened read-only here before it reaches the grantee, which then cannot write the
page whatever it does. The question to the granter runs on a short-lived thread (at most MAX_ASKS at a
time, MAX_ASKS_PER_DOMAIN per asking or asked domain): nothing waits on a domain's reader thread.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import TYPE_CHECKING, Any

from ..xen import abi

if TYPE_CHECKING:
    from .handle import DomainHandle
    from .host import Host

MAX_ASKS = 64
MAX_ASKS_PER_DOMAIN = 4
MAX_MAPS_PER_DOMAIN = 256  # live mappings one domain holds of others' pages (vmm/grants.MAX_MAPS)
MAX_LENT_PER_DOMAIN = 1024  # live mappings others hold of one domain's pages
PEER_TIMEOUT_S = 3.0  # below the grantee's own wait (vmm/grants.MAP_TIMEOUT_S)


def _int(v: object, lo: int, hi: int) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi else None


class _Ask:
    def __init__(self, granter: int) -> None:
        self.granter = granter
        self.done = threading.Event()
        self.status = abi.GNTST_general_error
        self.fds: list[int] = []


class GrantBroker:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._mids = itertools.count(1)
        self._qids = itertools.count(1)
        self._live: dict[int, tuple[int, int, int, bool]] = {}  # mid -> (grantee, granter, ref, write)
        self._asks: dict[int, _Ask] = {}
        self._slots = threading.BoundedSemaphore(MAX_ASKS)
        self._asking: dict[int, int] = {}

    def _count(self, domid: int, pos: int) -> int:
        return sum(1 for m in self._live.values() if m[pos] == domid)

    # -- from a grantee ---------------------------------------------------------------------------------
    def map(self, src: DomainHandle, msg: dict[str, Any]) -> None:
        req, remote = msg.get("id"), _int(msg.get("remote"), 1, abi.DOMID_FIRST_RESERVED)
        ref, write = _int(msg.get("ref"), 0, 1 << 32), msg.get("write")

        def answer(status: int, mid: int = 0, fds: list[int] | None = None) -> None:
            src.send({"t": "gnt-mapped", "id": req, "status": status, "mid": mid}, fds or [])

        if ref is None or not isinstance(write, bool):
            return answer(abi.GNTST_general_error)
        peer = self.host.domain(remote) if remote is not None else None
        if peer is None or peer is src or peer.finished:
            return answer(abi.GNTST_bad_domain)
        with self._lock:
            if (self._count(src.domid, 0) >= MAX_MAPS_PER_DOMAIN
                    or self._count(peer.domid, 1) >= MAX_LENT_PER_DOMAIN):
                return answer(abi.GNTST_no_device_space)
            if (self._asking.get(src.domid, 0) >= MAX_ASKS_PER_DOMAIN
                    or self._asking.get(peer.domid, 0) >= MAX_ASKS_PER_DOMAIN
                    or not self._slots.acquire(blocking=False)):
                return answer(abi.GNTST_eagain)  # Linux's gnttab_map_refs retries it
            for d in (src.domid, peer.domid):
                self._asking[d] = self._asking.get(d, 0) + 1
            mid, qid = next(self._mids), next(self._qids)
            ask = self._asks[qid] = _Ask(peer.domid)

        def run() -> None:
            fds: list[int] = []
            try:
                peer.send({"t": "gnt-peer-map", "id": qid, "grantee": src.domid, "ref": ref, "write": write,
                           "mid": mid})
                answered = ask.done.wait(PEER_TIMEOUT_S)
                with self._lock:
                    self._asks.pop(qid, None)
                    fds, ask.fds, status = ask.fds, [], ask.status
                ok = answered and status == abi.GNTST_okay and len(fds) == 1
                if ok and not write:
                    fd, fds = fds[0], []
                    fds = [_reopen_read_only(fd)]
                with self._lock:
                    if ok and not (src.finished or peer.finished):
                        self._live[mid] = (src.domid, peer.domid, ref, write)
                    elif ok or not answered:
                        status = abi.GNTST_general_error
                        ok = False
                if not ok:
                    # it may have lent the page after all (late, or the grantee is gone): undo there
                    peer.send({"t": "gnt-peer-unmap", "grantee": src.domid, "mid": mid})
                    answer(status if answered and -12 <= status < 0 else abi.GNTST_general_error)
                else:
                    answer(abi.GNTST_okay, mid, fds)
            except OSError:
                peer.send({"t": "gnt-peer-unmap", "grantee": src.domid, "mid": mid})
                answer(abi.GNTST_general_error)
            finally:
                for fd in fds:  # sends took copies of their own
                    os.close(fd)
                with self._lock:
                    self._asks.pop(qid, None)
                    for d in (src.domid, peer.domid):
                        self._asking[d] -= 1
                        if not self._asking[d]:
                            del self._asking[d]
                self._slots.release()

        threading.Thread(target=run, name=f"gnt-map-d{src.domid}", daemon=True).start()
        return None

    def unmap(self, src: DomainHandle, msg: dict[str, Any]) -> None:
        mid = _int(msg.get("mid"), 1, 1 << 62)
        with self._lock:
            m = self._live.get(mid) if mid is not None else None
            if m is None or m[0] != src.domid:
                return
            del self._live[mid]  # type: ignore[arg-type]
        granter = self.host.domain(m[1])
        if granter is not None:
            granter.send({"t": "gnt-peer-unmap", "grantee": src.domid, "mid": mid})

    # -- from a granter ---------------------------------------------------------------------------------
    def shared(self, src: DomainHandle, msg: dict[str, Any], fds: list[int]) -> None:
        """A granter's answer to gnt-peer-map, with the page's memfd when it lent it."""
        qid = msg.get("id")
        status = _int(msg.get("status"), -64, 1)
        with self._lock:
            ask = self._asks.get(qid) if isinstance(qid, int) else None
            if ask is not None and ask.granter == src.domid and not ask.done.is_set():
                ask.status = status if status is not None else abi.GNTST_general_error
                ask.fds, fds = fds[:1], fds[1:]
                ask.done.set()
        for fd in fds:
            os.close(fd)

    # -- domains going ----------------------------------------------------------------------------------
    def domain_gone(self, domid: int) -> None:
        with self._lock:
            mine = [(mid, m) for mid, m in self._live.items() if domid in (m[0], m[1])]
            for mid, _m in mine:
                del self._live[mid]
        for mid, m in mine:
            granter = self.host.domain(m[1]) if m[0] == domid else None
            if granter is not None:
                granter.send({"t": "gnt-peer-unmap", "grantee": domid, "mid": mid})

    def live(self) -> dict[int, tuple[int, int, int, bool]]:
        with self._lock:
            return dict(self._live)


def _reopen_read_only(fd: int) -> int:
    """A read-only open of the same memfd (through /proc, which domain processes cannot reach): mapping it
    writable, writing or resizing it fails. Closes `fd`."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)
