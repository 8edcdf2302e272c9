"""xenstored: the store daemon, serving guests over their ring pages and domain 0 in-process.

Protocol and semantics from docs/misc/xenstore.txt and xen/include/public/io/xs_wire.h (xen-project/xen);
the ring from docs/misc/xenstore-ring.txt; quota defaults from xenstored (tools/xenstore/xenstored_core.c:
quota_nb_entry_per_domain = 1000, quota_max_entry_size = 2048, quota_nb_watch_per_domain = 128,
quota_max_transaction = 10, quota_nb_perms_per_node = 5, quota_trans_nodes = 1024,
quota_req_outstanding = 20, quota_max_path_len = XENSTORE_REL_PATH_MAX) and the errors it answers when
one is exceeded (ENOSPC for nodes, node size, transactions and permission entries; E2BIG for watches).

Everything runs under one lock, in whichever thread calls in (a guest's `kick`, a local request).
Event-channel notifications and local watch callbacks run after the lock is released, so a callback
may call back into the store.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...core.memory import GuestFault, PhysicalPages
from ...core.ratelimit import RateLimiter
from ...xen.xen import DOMID_FIRST_RESERVED
from . import store as st
from .client import XenstoreClient
from .ring import ERROR_COMM, ERROR_PROTO, RING_SIZE, Ring, RingError
from .store import Caller, Change, Context, Perm, Perms, Store
from .transaction import Transaction
from .watches import INTRODUCE_DOMAIN, RELEASE_DOMAIN, Watch, WatchList
from .wire import (
    HEADER_SIZE,
    OK,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    TYPE_NAMES,
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_PERMS,
    XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_RM,
    XS_SET_PERMS,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    Header,
    XsError,
    all_strings,
    encode,
    error_payload,
    one_string,
    path_and_value,
    strings,
    type_name,
)

XenstoreError = XsError

MAX_ROUNDS = 64  # ring passes per kick: bounded work however fast the guest produces

# Errors that mean "refused" or "malformed" and are logged; ENOENT, EEXIST, EAGAIN are ordinary answers.
_LOGGED = {"EACCES", "EINVAL", "ENOSPC", "E2BIG", "ENOSYS", "EBUSY", "ENOMEM"}


@dataclass
class Quota:
    """Per-domain limits on unprivileged domains (domain 0 is exempt). Defaults are xenstored's."""
    max_nodes_per_domain: int = 1000  # quota_nb_entry_per_domain -> ENOSPC
    max_node_size: int = 2048  # quota_max_entry_size -> ENOSPC (here: the value's size)
    max_watches: int = 128  # quota_nb_watch_per_domain -> E2BIG
    max_transactions: int = 10  # quota_max_transaction -> ENOSPC
    max_outstanding: int = 20  # quota_req_outstanding: stop reading requests while this many wait
    max_path: int = REL_PATH_MAX  # quota_max_path_len: bytes below /local/domain/<domid> -> EINVAL
    max_perms_per_node: int = 5  # quota_nb_perms_per_node -> ENOSPC
    max_transaction_nodes: int = 1024  # quota_trans_nodes -> ENOSPC
    max_queued_events: int = 256  # ours: watch events beyond this many unread messages are dropped


class _Conn:
    """A client: its domain, watches and open transactions."""

    def __init__(self, domid: int, privileged: bool) -> None:
        self.domid = domid
        self.privileged = privileged
        self.watches = WatchList()
        self.transactions: dict[int, Transaction] = {}
        self.next_tx = 1

    def reset(self) -> None:
        self.watches.clear()
        self.transactions.clear()


class _GuestConn(_Conn):
    def __init__(self, domid: int, mem: PhysicalPages, ring_gpa: int, notify: Callable[[], None]) -> None:
        super().__init__(domid, privileged=False)
        self.ring = Ring(mem, ring_gpa)
        self.notify = notify
        self.inbuf = bytearray()
        self.out: deque[bytes] = deque()
        self.out_off = 0  # bytes of out[0] already in the ring
        self.broken = False
        self.dropped_events = 0

    def reset(self) -> None:
        super().reset()
        self.inbuf.clear()
        self.out.clear()
        self.out_off = 0


class _LocalConn(_Conn):
    def __init__(self, on_watch: Callable[[str, str], None] | None) -> None:
        super().__init__(0, privileged=True)
        self.on_watch = on_watch
        self.closed = False


class Xenstored:
    def __init__(self, log: Callable[[str], None], quota: Quota | None = None) -> None:
        self.log = log
        self.limit = RateLimiter()  # lines a guest can cause, by (domid, kind)
        self.quota = quota or Quota()
        self.store = Store()
        self._lock = threading.RLock()
        self._guests: dict[int, _GuestConn] = {}
        self._locals: list[_LocalConn] = []
        self._targets: dict[int, int] = {}
        # @introduceDomain / @releaseDomain behave as nodes owned by domain 0 that nobody else may read,
        # so only privileged watchers see their events (as in current xenstored), until dom0 SET_PERMS
        # them.
        self._special_perms: dict[str, Perms] = {
            INTRODUCE_DOMAIN: (Perm(0, 0),), RELEASE_DOMAIN: (Perm(0, 0),)}
        self._notify: dict[int, Callable[[], None]] = {}
        self._callbacks: list[Callable[[], None]] = []

    # ---- domains -------------------------------------------------------------------------------

    def introduce_domain(self, domid: int, mem: PhysicalPages, ring_gpa: int,
                         notify: Callable[[], None], watches: list[Watch] | None = None) -> None:
        """A domain's ring is served from now on; `watches` are its watches kept across a restart of
        domain 0 (persist.py)."""
        if not 0 < domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"domain id {domid} cannot be introduced")
        with self._lock:
            old = self._guests.pop(domid, None)
            if old is not None:
                old.reset()
                self.log(f"xenstore: dom{domid}: introduced again, the old connection is dropped")
            conn = _GuestConn(domid, mem, ring_gpa, notify)
            conn.ring.advertise()  # a GuestFault here is the caller's mistake: let it propagate
            for w in watches or ():
                conn.watches.add(w)
            self._guests[domid] = conn
            home = st.home_path(domid)
            if self.store.get(home) is None:
                dom0 = Caller(0, privileged=True)
                ctx = self._context()
                st.mkdir(self.store, dom0, home, ctx)
                st.set_perms(self.store, dom0, home, (Perm(0, domid),), ctx)
                self._fire_all(ctx.changes)
            self._fire_special(INTRODUCE_DOMAIN)
        self._run_callbacks()

    def release_domain(self, domid: int) -> None:
        with self._lock:
            if self._release(domid):
                self._fire_special(RELEASE_DOMAIN)
        self._run_callbacks()

    def is_introduced(self, domid: int) -> bool:
        with self._lock:
            return domid == 0 or domid in self._guests

    def _release(self, domid: int) -> bool:
        conn = self._guests.pop(domid, None)
        self._targets.pop(domid, None)
        if conn is None:
            return False
        conn.reset()
        return True

    def kick(self, domid: int) -> None:
        """The guest signalled its xenstore event channel. Never raises."""
        try:
            with self._lock:
                conn = self._guests.get(domid)
                if conn is not None:
                    self._service(conn)
        except Exception as e:  # a bug here must not take the caller's thread (a vCPU) down
            self.limit.log(self.log, (domid, "internal"), f"xenstore: dom{domid}: internal error: {e!r}")
        self._run_callbacks()

    def local_connection(self, on_watch: Callable[[str, str], None] | None = None) -> LocalConnection:
        conn = _LocalConn(on_watch)
        with self._lock:
            self._locals.append(conn)
        return LocalConnection(self, conn)

    # ---- the guest's ring ----------------------------------------------------------------------

    def _service(self, conn: _GuestConn) -> None:
        try:
            if conn.ring.reconnect_requested():
                # xenstore-ring.txt "ring reconnection": drop everything, empty the queues, reconnect
                conn.reset()
                conn.broken = False
                conn.ring.reset()
                self._signal(conn)
                return
            if conn.broken:
                return
            for _ in range(MAX_ROUNDS):
                progressed = self._flush(conn)
                while len(conn.out) < self.quota.max_outstanding and not conn.broken:
                    msg = self._take(conn)
                    if msg is None:
                        break
                    self._guest_message(conn, *msg)
                    progressed = True
                if conn.broken or len(conn.out) >= self.quota.max_outstanding:
                    break  # wait until the guest reads its replies (it signals when it does)
                data = conn.ring.read(RING_SIZE)
                if data:
                    conn.inbuf += data
                    self._signal(conn)  # the guest may be waiting for room in the request ring
                    progressed = True
                if not progressed:
                    break
        except RingError as e:
            self._break(conn, e.code, str(e))
        except GuestFault as e:
            self._break(conn, ERROR_COMM, f"ring not accessible: {e}")

    def _take(self, conn: _GuestConn) -> tuple[Header, bytes] | None:
        if len(conn.inbuf) < HEADER_SIZE:
            return None
        hdr = Header.unpack(conn.inbuf)
        if hdr.len > PAYLOAD_MAX:
            # docs/misc/xenstore.txt: a client exceeding XENSTORE_PAYLOAD_MAX has its connection killed
            raise RingError(ERROR_PROTO, f"{type_name(hdr.type)} with a {hdr.len}-byte payload")
        end = HEADER_SIZE + hdr.len
        if len(conn.inbuf) < end:
            return None
        payload = bytes(conn.inbuf[HEADER_SIZE:end])
        del conn.inbuf[:end]
        return hdr, payload

    def _guest_message(self, conn: _GuestConn, hdr: Header, payload: bytes) -> None:
        rtype, rpayload, post = self._request(conn, hdr.type, hdr.tx_id, payload)
        self._queue(conn, encode(rtype, hdr.req_id, hdr.tx_id, rpayload))
        for action in post:
            action()

    def _queue(self, conn: _GuestConn, msg: bytes) -> None:
        conn.out.append(msg)
        self._flush(conn)

    def _flush(self, conn: _GuestConn) -> bool:
        """Move queued output into the response ring; True if anything moved."""
        moved = False
        try:
            while conn.out and not conn.broken:
                msg = conn.out[0]
                n = conn.ring.write(memoryview(msg)[conn.out_off:])
                if n:
                    moved = True
                conn.out_off += n
                if conn.out_off < len(msg):
                    break
                conn.out.popleft()
                conn.out_off = 0
        except RingError as e:
            self._break(conn, e.code, str(e))
        except GuestFault as e:
            self._break(conn, ERROR_COMM, f"ring not accessible: {e}")
        if moved:
            self._signal(conn)
        return moved

    def _break(self, conn: _GuestConn, code: int, why: str) -> None:
        """xenstore-ring.txt "connection error": set the indicator and stop talking to the guest,
        discarding queued data, watches and transactions (a reconnect may revive the ring)."""
        self.limit.log(self.log, (conn.domid, "broken"),
                       f"xenstore: dom{conn.domid}: connection broken (error {code}): {why}")
        conn.reset()
        conn.broken = True
        try:
            conn.ring.set_error(code)
        except GuestFault:
            pass
        self._signal(conn)

    def _signal(self, conn: _GuestConn) -> None:
        self._notify[conn.domid] = conn.notify

    def _run_callbacks(self) -> None:
        """Outside the lock: event-channel notifications and local watch callbacks, in order."""
        while True:
            with self._lock:
                notify = list(self._notify.values())
                self._notify.clear()
                calls = self._callbacks
                self._callbacks = []
            if not notify and not calls:
                return
            for fn in notify + calls:
                try:
                    fn()
                except Exception as e:
                    self.limit.log(self.log, "callback",
                                   f"xenstore: notification or watch callback failed: {e!r}")

    # ---- requests ------------------------------------------------------------------------------

    def _local_request(self, conn: _LocalConn, msg_type: int, payload: bytes,
                       tx_id: int) -> tuple[int, bytes]:
        with self._lock:
            if conn.closed:
                raise XsError("EINVAL", "connection closed")
            if len(payload) > PAYLOAD_MAX:
                self.log(f"xenstore: dom0: {type_name(msg_type)} refused: EINVAL (payload of {len(payload)})")
                result: tuple[int, bytes] = (XS_ERROR, error_payload("EINVAL"))
            else:
                rtype, rpayload, post = self._request(conn, msg_type, tx_id, payload)
                result = (rtype, rpayload)
                for action in post:
                    action()
        self._run_callbacks()
        return result

    def _request(self, conn: _Conn, msg_type: int, tx_id: int,
                 payload: bytes) -> tuple[int, bytes, list[Callable[[], None]]]:
        """One request: (reply type, reply payload, actions to run once the reply is queued)."""
        post: list[Callable[[], None]] = []
        try:
            reply = self._dispatch(conn, msg_type, tx_id, payload, post)
            if len(reply) > PAYLOAD_MAX:
                raise XsError("E2BIG", f"reply of {len(reply)} bytes")
            return msg_type, reply, post
        except XsError as e:
            if e.name in _LOGGED or e.why.startswith("no transaction"):
                kind = ("refused", msg_type if msg_type in TYPE_NAMES else -1)  # a bounded set of kinds
                self.limit.log(self.log, (conn.domid, kind),
                               f"xenstore: dom{conn.domid}: {type_name(msg_type)} refused: {e}")
            # docs/misc/xenstore.txt: an error reply has type ERROR and the request's req_id and tx_id
            return XS_ERROR, error_payload(e.name), post

    def _caller(self, conn: _Conn) -> Caller:
        return Caller(conn.domid, conn.privileged, self._targets.get(conn.domid))

    def _context(self) -> Context:
        q = self.quota
        return Context(q.max_nodes_per_domain, q.max_node_size, q.max_perms_per_node)

    def _path(self, caller: Caller, path: str) -> str:
        return st.canonical_path(caller, path, self.quota.max_path)

    def _dispatch(self, conn: _Conn, t: int, tx_id: int, payload: bytes,
                  post: list[Callable[[], None]]) -> bytes:
        caller = self._caller(conn)
        tx: Transaction | None = None
        if tx_id and t != XS_TRANSACTION_START:
            tx = conn.transactions.get(tx_id)
            if tx is None:
                raise XsError("ENOENT", f"no transaction {tx_id}")
        view: st.NodeView = tx if tx is not None else self.store

        if t == XS_READ:
            return st.read(view, caller, self._path(caller, one_string(payload)))
        if t == XS_WRITE:
            path, value = path_and_value(payload)
            ctx = self._context()
            st.write(view, caller, self._path(caller, path), value, ctx)
            self._changed(tx, ctx, post)
            return OK
        if t == XS_MKDIR:
            ctx = self._context()
            st.mkdir(view, caller, self._path(caller, one_string(payload)), ctx)
            self._changed(tx, ctx, post)
            return OK
        if t == XS_RM:
            ctx = self._context()
            st.rm(view, caller, self._path(caller, one_string(payload)), ctx)
            self._changed(tx, ctx, post)
            return OK
        if t == XS_DIRECTORY:
            _, children = st.directory(view, caller, self._path(caller, one_string(payload)))
            return b"".join(c.encode("latin-1") + b"\0" for c in children)
        if t == XS_DIRECTORY_PART:
            return self._directory_part(view, caller, payload)
        if t == XS_GET_PERMS:
            path = one_string(payload)
            if path in self._special_perms:
                perms = self._special_perms[path]
                if not caller.access(perms) & st.PERM_READ:
                    raise XsError("EACCES", f"no read access to {path}")
            else:
                perms = st.get_perms(view, caller, self._path(caller, path))
            return b"".join(s.encode() + b"\0" for s in st.perms_to_strings(perms))
        if t == XS_SET_PERMS:
            args = all_strings(payload)
            if len(args) < 2:
                raise XsError("EINVAL", "SET_PERMS needs a path and at least one permission")
            perms = st.parse_perms(args[1:])
            ctx = self._context()
            if args[0] in self._special_perms:
                if not caller.access(self._special_perms[args[0]]) & st.PERM_OWNER:
                    raise XsError("EACCES", f"not the owner of {args[0]}")
                self._special_perms[args[0]] = perms
            else:
                st.set_perms(view, caller, self._path(caller, args[0]), perms, ctx)
                self._changed(tx, ctx, post)
            return OK
        if t == XS_WATCH:
            return self._watch(conn, caller, payload, post)
        if t == XS_UNWATCH:
            path, token = strings(payload, 2)
            w = self._make_watch(caller, path, token)
            if not conn.watches.remove(w.path, w.token):
                raise XsError("ENOENT", f"no watch {path!r} {token!r}")
            return OK
        if t == XS_TRANSACTION_START:
            return self._transaction_start(conn, tx_id)
        if t == XS_TRANSACTION_END:
            return self._transaction_end(conn, tx, payload, post)
        if t == XS_RESET_WATCHES:
            # docs/misc/xenstore.txt: "Reset all watches and transactions of the caller."
            conn.watches.clear()
            conn.transactions.clear()
            return OK
        if t == XS_GET_DOMAIN_PATH:
            return st.home_path(_domid(one_string(payload))).encode() + b"\0"
        if t == XS_IS_DOMAIN_INTRODUCED:
            domid = _domid(one_string(payload))
            return b"T\0" if domid == 0 or domid in self._guests else b"F\0"
        if t in (XS_INTRODUCE, XS_RELEASE, XS_RESUME, XS_SET_TARGET, XS_CONTROL):
            if not caller.privileged:
                raise XsError("EACCES", "domain 0 only")
            return self._privileged(t, payload)
        raise XsError("EINVAL", f"unknown message type {t}")

    def _changed(self, tx: Transaction | None, ctx: Context, post: list[Callable[[], None]]) -> None:
        if tx is not None:
            tx.changes.extend(ctx.changes)  # fire only if and when committed
        elif ctx.changes:
            changes = list(ctx.changes)
            post.append(lambda: self._fire_all(changes))

    def _directory_part(self, view: st.NodeView, caller: Caller, payload: bytes) -> bytes:
        """DIRECTORY_PART <path>|<offset>: <gencnt>|<child>|* from byte `offset` of the children list;
        the list's end is marked by an extra NUL (as xenstored does)."""
        parts = payload.split(b"\0")
        if parts and parts[-1] == b"":
            parts.pop()
        if len(parts) != 2 or not parts[1].isdigit():
            raise XsError("EINVAL", "DIRECTORY_PART needs <path>|<offset>")
        node, children = st.directory(view, caller, self._path(caller, parts[0].decode("latin-1")))
        listing = b"".join(c.encode("latin-1") + b"\0" for c in children)
        offset = int(parts[1])
        if offset > len(listing):
            raise XsError("EINVAL", "offset beyond the children list")
        head = f"{node.gen}".encode() + b"\0"
        out = bytearray(head)
        rest = listing[offset:]
        pos = 0
        while pos < len(rest):
            end = rest.index(b"\0", pos) + 1
            if len(out) + (end - pos) + 1 > PAYLOAD_MAX:
                return bytes(out)
            out += rest[pos:end]
            pos = end
        return bytes(out) + b"\0"

    def _make_watch(self, caller: Caller, path: str, token: str) -> Watch:
        if path.startswith("@"):
            if len(path) > REL_PATH_MAX:
                raise XsError("EINVAL", "special watch path too long")
            return Watch(path, token)
        absolute = self._path(caller, path)
        return Watch(absolute, token, None if path.startswith("/") else st.home_path(caller.domid))

    def _watch(self, conn: _Conn, caller: Caller, payload: bytes, post: list[Callable[[], None]]) -> bytes:
        path, token = strings(payload, 2)
        w = self._make_watch(caller, path, token)
        if (w.path, w.token) in {(x.path, x.token) for x in conn.watches}:
            raise XsError("EEXIST", f"watch {path!r} {token!r} exists")
        if not conn.privileged and len(conn.watches) >= self.quota.max_watches:
            raise XsError("E2BIG", f"more than {self.quota.max_watches} watches")
        conn.watches.add(w)
        # "When a watch is first set up it is triggered once straight away, with <path> equal to <wpath>"
        post.append(lambda: self._deliver(conn, w.given_path, w.token))
        return OK

    def _transaction_start(self, conn: _Conn, tx_id: int) -> bytes:
        if tx_id:
            raise XsError("EBUSY", "TRANSACTION_START inside a transaction")  # no nesting (xenstored)
        if not conn.privileged and len(conn.transactions) >= self.quota.max_transactions:
            raise XsError("ENOSPC", f"more than {self.quota.max_transactions} open transactions")
        tid = conn.next_tx
        while tid == 0 or tid in conn.transactions:
            tid = (tid + 1) & 0xFFFFFFFF
        conn.next_tx = (tid + 1) & 0xFFFFFFFF
        limit = None if conn.privileged else self.quota.max_transaction_nodes
        conn.transactions[tid] = Transaction(tid, self.store, limit)
        return f"{tid}".encode() + b"\0"

    def _transaction_end(self, conn: _Conn, tx: Transaction | None, payload: bytes,
                         post: list[Callable[[], None]]) -> bytes:
        arg = one_string(payload)
        if arg not in ("T", "F"):
            raise XsError("EINVAL", f"TRANSACTION_END {arg[:8]!r}")
        if tx is None:
            raise XsError("ENOENT", "no transaction")
        del conn.transactions[tx.tx_id]
        if arg == "F":
            return OK
        if tx.conflicts():
            raise XsError("EAGAIN", "conflicting change")
        if not conn.privileged and tx.over_quota(self.quota.max_nodes_per_domain):
            raise XsError("ENOSPC", "node quota exceeded at commit")
        tx.apply()
        changes = list(tx.changes)
        post.append(lambda: self._fire_all(changes))
        return OK

    def _privileged(self, t: int, payload: bytes) -> bytes:
        if t == XS_INTRODUCE:
            raise XsError("ENOSYS", "guests are introduced through Xenstored.introduce_domain()")
        if t == XS_RELEASE:
            domid = _domid(one_string(payload))
            if not self._release(domid):
                raise XsError("ENOENT", f"domain {domid} is not introduced")
            self._fire_special(RELEASE_DOMAIN)
            return OK
        if t == XS_RESUME:
            domid = _domid(one_string(payload))
            if domid not in self._guests:
                raise XsError("ENOENT", f"domain {domid} is not introduced")
            return OK
        if t == XS_SET_TARGET:
            a, b = strings(payload, 2)
            domid, target = _domid(a), _domid(b)
            if domid not in self._guests:
                raise XsError("ENOENT", f"domain {domid} is not introduced")
            self._targets[domid] = target
            return OK
        args = all_strings(payload)  # XS_CONTROL
        if args[0] == "print" and len(args) >= 2:
            self.log(f"xenstore: {args[1]}")
            return OK
        raise XsError("EINVAL", f"unsupported CONTROL {args[0][:40]!r}")

    # ---- watches -------------------------------------------------------------------------------

    def _connections(self) -> list[_Conn]:
        return [*self._locals, *self._guests.values()]

    def _fire_all(self, changes: Sequence[Change]) -> None:
        for ch in changes:
            for conn in self._connections():
                if not Caller(conn.domid, conn.privileged, self._targets.get(conn.domid)).access(
                        ch.perms) & st.PERM_READ:
                    continue  # watches are restricted by the permissions system
                for w, reported in conn.watches.matches(ch.path, ch.removal):
                    self._deliver(conn, reported, w.token)

    def _fire_special(self, name: str) -> None:
        self._fire_all([Change(name, self._special_perms[name])])

    def _deliver(self, conn: _Conn, path: str, token: str) -> None:
        if isinstance(conn, _LocalConn):
            cb = conn.on_watch
            if cb is not None and not conn.closed:
                self._callbacks.append(lambda: cb(path, token))
            return
        assert isinstance(conn, _GuestConn)
        if conn.broken or conn not in self._guests.values():
            return
        if len(conn.out) >= self.quota.max_queued_events:
            conn.dropped_events += 1
            self.limit.log(self.log, (conn.domid, "event dropped"),
                           f"xenstore: dom{conn.domid}: watch event for {path} dropped: "
                           f"{len(conn.out)} messages unread")
            return
        payload = path.encode("latin-1") + b"\0" + token.encode("latin-1") + b"\0"
        # WATCH_EVENT: "req_id and tx_id are both 0" (docs/misc/xenstore.txt)
        self._queue(conn, encode(XS_WATCH_EVENT, 0, 0, payload))


def _domid(text: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > st.DOMID_MAX:
        raise XsError("EINVAL", f"bad domain id {text[:16]!r}")
    return int(text)


class LocalConnection(XenstoreClient):
    """Domain 0's in-process connection: privileged, relative paths resolve to /local/domain/0."""

    def __init__(self, server: Xenstored, conn: _LocalConn) -> None:
        self._server = server
        self._conn = conn

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        """One raw request: (reply type, reply payload); XS_ERROR with b"EACCES\\0" and the like."""
        return self._server._local_request(self._conn, msg_type, payload, tx_id)

    def close(self) -> None:
        with self._server._lock:
            self._conn.closed = True
            self._conn.reset()
            if self._conn in self._server._locals:
                self._server._locals.remove(self._conn)

