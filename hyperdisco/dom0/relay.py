"""Domain 0's end of a domain process's relayed xenstore connections (vmm/remote_xenstore.py).

The block backends inside domain N's process do their xenbus handshake through these. Each relayed
connection is a privileged connection of domain 0's xenstored, but only for the requests a block
backend of domain N needs: reads and watches under /local/domain/N (its frontends) and under domain 0's
backend directories for N (vbd, vif, console: its channels), writes only to the latter. Anything else
is refused with EACCES, so a compromised domain process reaches no other domain's nodes.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

from ..backends.xenstore import Xenstored
from ..backends.xenstore.client import XenstoreClient
from ..backends.xenstore.wire import (
    PAYLOAD_MAX,
    XS_DIRECTORY,
    XS_ERROR,
    XS_GET_PERMS,
    XS_MKDIR,
    XS_READ,
    XS_RM,
    XS_SET_PERMS,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WRITE,
    error_payload,
)

READS = {XS_READ, XS_DIRECTORY, XS_GET_PERMS, XS_WATCH, XS_UNWATCH}
WRITES = {XS_WRITE, XS_MKDIR, XS_RM, XS_SET_PERMS}
MAX_CONNECTIONS = 64  # per domain: one per block device, and then some


def backend_roots(domid: int) -> tuple[str, ...]:
    return tuple(f"/local/domain/0/backend/{kind}/{domid}" for kind in ("vbd", "vif", "console"))


def allowed(domid: int, msg_type: int, payload: bytes) -> bool:
    if msg_type in (XS_TRANSACTION_START, XS_TRANSACTION_END):
        return True
    if msg_type not in READS and msg_type not in WRITES:
        return False
    path = payload.split(b"\0", 1)[0].decode("latin-1")

    def under(root: str) -> bool:
        return path == root or path.startswith(root + "/")

    if any(under(r) for r in backend_roots(domid)):
        return True
    return msg_type in READS and under(f"/local/domain/{domid}")


class XenstoreRelay:
    def __init__(self, domid: int, xenstored: Xenstored, send: Callable[[dict[str, Any]], None]) -> None:
        self.domid = domid
        self.xenstored = xenstored
        self.send = send
        self._conns: dict[int, XenstoreClient] = {}
        self._lock = threading.Lock()

    def _conn(self, conn_id: int) -> XenstoreClient | None:
        with self._lock:
            conn = self._conns.get(conn_id)
            if conn is None and len(self._conns) < MAX_CONNECTIONS:
                def on_watch(path: str, token: str) -> None:
                    self.send({"t": "xs-watch", "conn": conn_id, "path": path, "token": token})
                conn = self.xenstored.local_connection(on_watch)
                self._conns[conn_id] = conn
            return conn

    def request(self, msg: dict[str, Any]) -> None:
        """One relayed request (already a dict from the channel; its fields are still the domain's)."""
        req_id, conn_id, msg_type, tx = msg.get("id"), msg.get("conn"), msg.get("type"), msg.get("tx", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (req_id, conn_id, msg_type, tx)):
            return
        try:
            payload = base64.b64decode(str(msg.get("payload", "")), validate=True)
        except ValueError:
            payload = b"\xff" * (PAYLOAD_MAX + 1)
        conn = self._conn(conn_id)  # type: ignore[arg-type]
        if conn is None or len(payload) > PAYLOAD_MAX or not allowed(self.domid, msg_type, payload):  # type: ignore[arg-type]
            rtype, reply = XS_ERROR, error_payload("EACCES")
        else:
            rtype, reply = conn.request(msg_type, payload, tx)  # type: ignore[arg-type]
        self.send({"t": "xs-reply", "id": req_id, "type": rtype, "payload": base64.b64encode(reply).decode()})

    def close_conn(self, conn_id: Any) -> None:
        with self._lock:
            conn = self._conns.pop(conn_id, None) if isinstance(conn_id, int) else None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            c.close()
