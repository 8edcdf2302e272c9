"""xenstored's Unix socket: the door domain 0's own tools come in by (Debian's xenstore-utils and every
other libxenstore user, PyPI's pyxs), beside the guests' rings. One xenstored, two doors.

Each client of the socket is a privileged domain-0 connection to the same store (a
`Xenstored.local_connection()`: its own watches and transactions, relative paths under
/local/domain/0), speaking the wire protocol of xen/include/public/io/xs_wire.h: a `struct xsd_sockmsg`
header (type, req_id, tx_id, len; little-endian u32s on the same host) followed by `len` <=
XENSTORE_PAYLOAD_MAX bytes, answered by a message of the same type, req_id and tx_id, or XS_ERROR with
an xsd_errors[] name (docs/misc/xenstore.txt). Watch events are XS_WATCH_EVENT messages with req_id and
tx_id 0, sent whenever they happen, but never before the reply to the request that caused them (a WATCH's
first event follows its OK, as xenstored's do: the event is queued after the reply).

Where the path is: `XENSTORED_PATH` is what libxenstore's xs_open() looks at before its built-in
/run/xenstored/socket (tools/libs/store/xs.c: xs_daemon_socket()), so tools find a daemon elsewhere by it;
the daemon takes the same default.

Messages a client may not send (docs/misc/xenstore.txt: WATCH_EVENT and ERROR go only from xenstored to
clients; RESTRICT was removed from Xen) and types xenstored does not know are answered ENOSYS, as both C
xenstored (process_message(): "Client unknown operation", send_error(conn, ENOSYS)) and oxenstored
(process.ml: do_error raises Unknown_operation -> "ENOSYS") do; a header announcing more than
XENSTORE_PAYLOAD_MAX bytes cannot be resynchronised (xenstored drops such a client): it gets one E2BIG
reply and is disconnected. Everything else is the store's (server.py); INTRODUCE is refused there, as
domains are introduced by domain 0 itself.

Never blocking on a client: one selector thread serves every connection on non-blocking sockets. A client
with more than OUTPUT_PAUSE bytes of replies waiting is not read from until it catches up (replies
cannot pile up); watch events go on queueing, and a client whose queued output passes OUTPUT_LIMIT is
disconnected. At most MAX_CLIENTS connections; more are closed as soon as they are accepted.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from ...core.ratelimit import RateLimiter
from ...errors import HyperdiscoError
from .server import LocalConnection, Xenstored
from .wire import (
    HEADER_SIZE,
    PAYLOAD_MAX,
    TYPE_NAMES,
    XS_ERROR,
    XS_RESTRICT,
    XS_WATCH_EVENT,
    Header,
    XsError,
    encode,
    error_payload,
    type_name,
)

DEFAULT_PATH = "/run/xenstored/socket"  # libxenstore's built-in: XEN_RUN_STORED "/socket"
PATH_ENV = "XENSTORED_PATH"
MAX_CLIENTS = 128
OUTPUT_PAUSE = 64 << 10  # stop reading a client's requests while this much output waits for it
OUTPUT_LIMIT = 1 << 20  # drop a client whose unread output (watch events it does not read) passes this
READ_CHUNK = 64 << 10
SEND_CHUNK = 256 << 10
LISTEN_BACKLOG = 64

# Types a client may send: everything xs_wire.h numbers, but WATCH_EVENT and ERROR (xenstored -> client
# only) and RESTRICT (removed).
CLIENT_TYPES = frozenset(TYPE_NAMES) - {XS_WATCH_EVENT, XS_ERROR, XS_RESTRICT}


def socket_path(explicit: str | None = None) -> Path:
    """The socket's path: the one given, else $XENSTORED_PATH, else /run/xenstored/socket."""
    return Path(explicit or os.environ.get(PATH_ENV) or DEFAULT_PATH)


class XenstoredSocketError(HyperdiscoError):
    pass


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.conn: LocalConnection | None = None
        self.lock = threading.Lock()  # out, held, busy, dead: touched by watch callbacks in any thread
        self.inbuf = bytearray()
        self.out = bytearray()
        self.held: list[bytes] = []  # watch events waiting for the reply being made
        self.busy = False
        self.dead = ""  # why it must be dropped ("-": an ordinary end, not logged)
        self.closing = ""  # why it is to be dropped once what is queued has been offered to it
        self.events = 0  # the selector mask it is registered with


class XenstoredSocket:
    """Serve `xenstored` on a Unix stream socket at `path` (mode 0600, or 0660 with group `gid`)."""

    def __init__(self, xenstored: Xenstored, path: str | Path, *, gid: int | None = None,
                 log: Callable[[str], None] | None = None, max_clients: int = MAX_CLIENTS,
                 output_limit: int = OUTPUT_LIMIT, output_pause: int = OUTPUT_PAUSE) -> None:
        self.xenstored = xenstored
        self.path = Path(path)
        self.gid = gid
        self.log = log or xenstored.log
        self.limit = RateLimiter()
        self.max_clients = max_clients
        self.output_limit = output_limit
        self.output_pause = output_pause
        self._clients: dict[int, _Client] = {}
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._inode: tuple[int, int] | None = None

    # ---- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Claim the path (a stale socket left by a dead daemon is replaced; a live one, or anything
        that is not a socket, is an error), listen, and serve from a thread of its own."""
        self._claim()
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            lst.bind(str(self.path))
        except OSError as exc:
            lst.close()
            raise XenstoredSocketError(f"hyperdisco: cannot serve xenstored on {self.path}: "
                                       f"{exc.strerror}") from None
        finally:
            os.umask(old)
        try:
            st = os.lstat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            if self.gid is not None:
                os.chown(self.path, -1, self.gid)
                os.chmod(self.path, 0o660)
            else:
                os.chmod(self.path, 0o600)
            lst.listen(LISTEN_BACKLOG)
            lst.setblocking(False)
        except OSError as exc:
            lst.close()
            self._unlink()
            raise XenstoredSocketError(f"hyperdisco: cannot serve xenstored on {self.path}: "
                                       f"{exc.strerror}") from None
        self._listener = lst
        self._sel.register(lst, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name="xenstored-socket", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving: every client is disconnected (its watches and transactions go) and the socket
        file is removed, if it is still ours."""
        self._stop = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        for c in list(self._clients.values()):
            self._drop(c, "")
        if self._listener is not None:
            try:
                self._sel.unregister(self._listener)
            except (KeyError, ValueError):
                pass
            self._listener.close()
            self._listener = None
            self._unlink()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def client_count(self) -> int:
        return len(self._clients)

    def _claim(self) -> None:
        path = self.path
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise XenstoredSocketError(f"hyperdisco: cannot create {path.parent}: {exc.strerror}") from None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise XenstoredSocketError(f"hyperdisco: cannot use {path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise XenstoredSocketError(f"hyperdisco: {path} exists and is not a socket; "
                                       "not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except PermissionError:
            raise XenstoredSocketError(f"hyperdisco: {path} belongs to a xenstored you may not reach "
                                       "(permission denied)") from None
        except OSError:  # nobody listens (ECONNREFUSED): left by a daemon that died
            try:
                path.unlink()
            except OSError as exc:
                raise XenstoredSocketError(f"hyperdisco: cannot remove the stale socket {path}: "
                                           f"{exc.strerror}") from None
            return
        finally:
            probe.close()
        raise XenstoredSocketError(f"hyperdisco: a xenstored is already serving {path}")

    def _unlink(self) -> None:
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        except OSError:
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    # ---- the selector thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop:
            try:
                ready = self._sel.select(1.0)
            except (OSError, ValueError):
                if self._stop:
                    return
                raise
            for key, mask in ready:
                try:
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        c = key.data
                        assert isinstance(c, _Client)
                        if mask & selectors.EVENT_READ:
                            self._read(c)
                except Exception as exc:  # a bug must not end the door for every client
                    self.limit.log(self.log, "internal",
                                   f"xenstored socket: internal error: {exc!r}")
            for c in list(self._clients.values()):
                try:
                    self._pump(c)
                except Exception as exc:
                    self.limit.log(self.log, "internal",
                                   f"xenstored socket: internal error: {exc!r}")
                    self._drop(c, "internal error")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.limit.log(self.log, "accept", f"xenstored socket: accept: {exc.strerror}")
                return
            if len(self._clients) >= self.max_clients:
                self.limit.log(self.log, "full", f"xenstored socket: a client refused: "
                                                 f"{self.max_clients} connections already")
                sock.close()
                continue
            sock.setblocking(False)
            c = _Client(sock)
            c.conn = self.xenstored.local_connection(on_watch=self._watcher(c))
            self._clients[sock.fileno()] = c
            c.events = selectors.EVENT_READ
            self._sel.register(sock, c.events, c)

    def _read(self, c: _Client) -> None:
        if c.dead or c.closing or len(c.out) >= self.output_pause:
            return
        try:
            data = c.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            c.dead = f"recv: {exc.strerror}"
            return
        if not data:
            c.closing = "-"  # the client closed (or shut its side down): answer what came, then end
            return
        c.inbuf += data

    def _pump(self, c: _Client) -> None:
        """Answer what has arrived (while the output is under the pause mark), send what is queued,
        then register for what the client is waiting on, or drop it."""
        if not c.dead:
            self._requests(c)
        with c.lock:
            if not c.dead and c.out:
                try:
                    n = c.sock.send(bytes(c.out[:SEND_CHUNK]))
                    del c.out[:n]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    c.dead = f"send: {exc.strerror}"
            if c.closing:  # one offer of what is queued (non-blocking), never a wait
                c.dead = c.dead or c.closing
            dead = c.dead
            pending = bool(c.out)
            paused = c.closing or len(c.out) >= self.output_pause
        if dead:
            self._drop(c, "" if dead == "-" else dead)
            return
        events = (0 if paused else selectors.EVENT_READ) | (selectors.EVENT_WRITE if pending else 0)
        if events != c.events:
            if c.events and events:
                self._sel.modify(c.sock, events, c)
            elif events:
                self._sel.register(c.sock, events, c)
            else:
                self._sel.unregister(c.sock)
            c.events = events

    def _requests(self, c: _Client) -> None:
        while len(c.inbuf) >= HEADER_SIZE and len(c.out) < self.output_pause:
            hdr = Header.unpack(c.inbuf)
            if hdr.len > PAYLOAD_MAX:
                # docs/misc/xenstore.txt: payloads are at most XENSTORE_PAYLOAD_MAX; the stream cannot
                # be followed past such a header: answer once, then close.
                self.limit.log(self.log, "oversized",
                               f"xenstored socket: {type_name(hdr.type)} announcing {hdr.len} bytes "
                               f"(max {PAYLOAD_MAX}): client disconnected")
                with c.lock:
                    c.out += encode(XS_ERROR, hdr.req_id, hdr.tx_id, error_payload("E2BIG"))
                    c.closing = "-"  # logged above, rate-limited
                c.inbuf.clear()
                return
            end = HEADER_SIZE + hdr.len
            if len(c.inbuf) < end:
                return
            payload = bytes(c.inbuf[HEADER_SIZE:end])
            del c.inbuf[:end]
            self._answer(c, hdr, payload)

    def _answer(self, c: _Client, hdr: Header, payload: bytes) -> None:
        assert c.conn is not None
        if hdr.type not in CLIENT_TYPES:
            self.limit.log(self.log, "unknown type",
                           f"xenstored socket: {type_name(hdr.type)} refused: ENOSYS")
            rtype, reply = XS_ERROR, error_payload("ENOSYS")
        else:
            with c.lock:
                c.busy = True
            try:
                rtype, reply = c.conn.request(hdr.type, payload, hdr.tx_id)
            except XsError as e:
                rtype, reply = XS_ERROR, error_payload(e.name)
            except Exception as exc:  # oxenstored's process_packet answers EIO to what it could not do
                self.limit.log(self.log, "internal",
                               f"xenstored socket: {type_name(hdr.type)}: internal error: {exc!r}")
                rtype, reply = XS_ERROR, error_payload("EIO")
        with c.lock:
            c.out += encode(rtype, hdr.req_id, hdr.tx_id, reply)
            for ev in c.held:
                c.out += ev
            c.held.clear()
            c.busy = False
            self._check_limit(c)

    # ---- watch events (any thread) ---------------------------------------------------------------

    def _watcher(self, c: _Client) -> Callable[[str, str], None]:
        def on_watch(path: str, token: str) -> None:
            self._event(c, path, token)
        return on_watch

    def _event(self, c: _Client, path: str, token: str) -> None:
        # WATCH_EVENT <epath>|<token>| with req_id and tx_id 0 (docs/misc/xenstore.txt)
        msg = encode(XS_WATCH_EVENT, 0, 0, path.encode("latin-1") + b"\0" + token.encode("latin-1") + b"\0")
        with c.lock:
            if c.dead:
                return
            if c.busy:
                c.held.append(msg)  # after the reply being made
            else:
                c.out += msg
            self._check_limit(c)
        self._wake()

    def _check_limit(self, c: _Client) -> None:
        queued = len(c.out) + sum(len(m) for m in c.held)
        if queued > self.output_limit and not c.dead:
            c.dead = f"{queued} bytes unread (limit {self.output_limit})"
            c.out.clear()
            c.held.clear()

    def _drop(self, c: _Client, why: str) -> None:
        if why:
            self.limit.log(self.log, "dropped", f"xenstored socket: client disconnected: {why}")
        with c.lock:
            c.dead = c.dead or "-"
            c.out.clear()
            c.held.clear()
        if c.events:
            try:
                self._sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.events = 0
        self._clients.pop(c.fd, None)
        try:
            c.sock.close()
        except OSError:
            pass
        if c.conn is not None:
            c.conn.close()
