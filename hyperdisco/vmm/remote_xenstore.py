"""A domain process's xenstore connections, relayed to domain 0's xenstored over the channel.

The block backends that run inside a domain process do the xenbus handshake through these. Domain 0
answers each request through a connection of its own that only reaches this domain's device
directories (dom0/relay.py), so a compromised domain process cannot touch another domain's nodes.
"""

from __future__ import annotations

import base64
import itertools
import threading
from collections.abc import Callable

from ..backends.xenstore.client import XenstoreClient
from ..backends.xenstore.wire import XS_ERROR, XS_UNWATCH, XS_WATCH, error_payload
from .channel import Channel, ChannelClosed, PendingReplies

REPLY_TIMEOUT_S = 30.0


class RemoteXenstore:
    """Makes relayed connections (the `local_connection` of the in-process xenstored, for backends)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._conn_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending = PendingReplies()
        self._conns: dict[int, RelayedConnection] = {}
        self._watches: dict[tuple[int, bytes], None] = {}  # (conn, payload): set again on adoption

    def local_connection(self, on_watch: Callable[[str, str], None] | None = None) -> RelayedConnection:
        conn = RelayedConnection(self, next(self._conn_ids), on_watch)
        with self._lock:
            self._conns[conn.conn_id] = conn
        return conn

    def request(self, conn_id: int, msg_type: int, payload: bytes, tx_id: int) -> tuple[int, bytes]:
        if msg_type == XS_WATCH:
            self._watches[(conn_id, payload)] = None
        elif msg_type == XS_UNWATCH:
            self._watches.pop((conn_id, payload), None)
        encoded = base64.b64encode(payload).decode()

        def send(req: int) -> None:
            self.channel.send({"t": "xs", "id": req, "conn": conn_id, "type": msg_type, "tx": tx_id,
                               "payload": encoded})

        try:
            reply: tuple[int, bytes] | None = self._pending.call(send, REPLY_TIMEOUT_S)
        except ChannelClosed:
            reply = None
        return reply if reply is not None else (XS_ERROR, error_payload("EIO"))

    def fail_pending(self) -> None:
        """Domain 0 is gone: every request waiting for it fails now (EIO) instead of timing out."""
        self._pending.fail_all((XS_ERROR, error_payload("EIO")))

    def replay_watches(self) -> None:
        """A new domain 0 adopted us: set our backends' watches again in its xenstored (their paths fire
        once, which the backends treat as 'look again')."""
        for conn_id, payload in list(self._watches):
            threading.Thread(target=self.request, args=(conn_id, XS_WATCH, payload, 0), daemon=True).start()

    # -- messages from domain 0 (the channel's reader thread) -------------------------------------------
    def reply(self, msg: dict[str, object]) -> None:
        self._pending.deliver(msg.get("id"), (int(msg["type"]),  # type: ignore[call-overload]
                                              base64.b64decode(str(msg["payload"]))))

    def watch_event(self, msg: dict[str, object]) -> None:
        with self._lock:
            conn = self._conns.get(int(msg["conn"]))  # type: ignore[call-overload]
        if conn is not None and conn.on_watch is not None:
            conn.on_watch(str(msg["path"]), str(msg["token"]))

    def forget(self, conn_id: int) -> None:
        with self._lock:
            self._conns.pop(conn_id, None)
            for key in [k for k in self._watches if k[0] == conn_id]:
                del self._watches[key]
        try:
            self.channel.send({"t": "xs-close", "conn": conn_id})
        except ChannelClosed:
            pass


class RelayedConnection(XenstoreClient):
    def __init__(self, hub: RemoteXenstore, conn_id: int,
                 on_watch: Callable[[str, str], None] | None) -> None:
        self.hub = hub
        self.conn_id = conn_id
        self.on_watch = on_watch

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        return self.hub.request(self.conn_id, msg_type, payload, tx_id)

    def close(self) -> None:
        self.hub.forget(self.conn_id)
