"""xenstored's Unix socket (backends/xenstore/unix_socket.py) spoken to with raw wire messages: the
xsd_sockmsg header of xs_wire.h and the payloads of docs/misc/xenstore.txt."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdisco.backends.xenstore import Xenstored
from hyperdisco.backends.xenstore import wire as W
from hyperdisco.backends.xenstore.unix_socket import XenstoredSocket, XenstoredSocketError, socket_path


class Raw:
    """A client writing xsd_sockmsg headers and payloads by hand."""

    def __init__(self, path: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(5)
        self.s.connect(str(path))
        self.buf = b""
        self.next_req = 100

    def send(self, msg_type: int, payload: bytes, tx: int = 0, req_id: int | None = None) -> int:
        rid = self.next_req if req_id is None else req_id
        self.next_req += 1
        self.s.sendall(W.encode(msg_type, rid, tx, payload))
        return rid

    def recv(self) -> tuple[W.Header, bytes]:
        while len(self.buf) < W.HEADER_SIZE:
            self._more()
        hdr = W.Header.unpack(self.buf)
        while len(self.buf) < W.HEADER_SIZE + hdr.len:
            self._more()
        payload = self.buf[W.HEADER_SIZE:W.HEADER_SIZE + hdr.len]
        self.buf = self.buf[W.HEADER_SIZE + hdr.len:]
        return hdr, payload

    def _more(self) -> None:
        data = self.s.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def call(self, msg_type: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
        rid = self.send(msg_type, payload, tx)
        hdr, reply = self.recv()
        assert hdr.req_id == rid and hdr.tx_id == tx
        assert hdr.type in (msg_type, W.XS_ERROR)
        return hdr.type, reply

    def ok(self, msg_type: int, payload: bytes, tx: int = 0) -> bytes:
        t, reply = self.call(msg_type, payload, tx)
        assert t == msg_type, reply
        return reply

    def closed(self, timeout: float = 5.0) -> bool:
        """The server closed the connection (EOF, or reset) within `timeout`."""
        self.s.settimeout(timeout)
        try:
            while self.s.recv(65536):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.s.close()


def z(*parts: str) -> bytes:
    return b"".join(p.encode() + b"\0" for p in parts)


@pytest.fixture
def xs() -> Xenstored:
    return Xenstored(lambda m: None)


@pytest.fixture
def door(xs: Xenstored, tmp_path: Path) -> Iterator[XenstoredSocket]:
    d = XenstoredSocket(xs, tmp_path / "run" / "socket")
    d.start()
    yield d
    d.close()


@pytest.fixture
def client(door: XenstoredSocket) -> Iterator[Raw]:
    c = Raw(door.path)
    yield c
    c.close()


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- the socket file ----------------------------------------------------------------------------

def test_socket_is_0600_and_removed_on_close(xs: Xenstored, tmp_path: Path) -> None:
    d = XenstoredSocket(xs, tmp_path / "xenstored" / "socket")
    d.start()
    st = os.lstat(d.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    c = Raw(d.path)
    d.close()
    assert not d.path.exists()
    assert c.closed()


def test_group_makes_it_0660(xs: Xenstored, tmp_path: Path) -> None:
    d = XenstoredSocket(xs, tmp_path / "socket", gid=os.getgid())
    d.start()
    try:
        st = os.lstat(d.path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    finally:
        d.close()


def test_stale_socket_replaced_live_or_foreign_refused(xs: Xenstored, tmp_path: Path) -> None:
    path = tmp_path / "socket"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening: what a killed daemon leaves
    stale.close()
    d = XenstoredSocket(xs, path)
    d.start()
    try:
        with pytest.raises(XenstoredSocketError, match="already serving"):
            XenstoredSocket(xs, path).start()
        assert Raw(path).ok(W.XS_READ, z("/")) == b""  # the first one still serves
    finally:
        d.close()
    path.write_text("not a socket")
    with pytest.raises(XenstoredSocketError, match="not a socket"):
        XenstoredSocket(xs, path).start()
    assert path.read_text() == "not a socket"


def test_a_successors_socket_is_not_removed(xs: Xenstored, tmp_path: Path) -> None:
    path = tmp_path / "socket"
    d = XenstoredSocket(xs, path)
    d.start()
    path.unlink()
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    d.close()
    assert path.exists()
    other.close()


def test_path_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    assert socket_path() == Path("/run/xenstored/socket")
    monkeypatch.setenv("XENSTORED_PATH", "/tmp/elsewhere")
    assert socket_path() == Path("/tmp/elsewhere")
    assert socket_path("/x/y") == Path("/x/y")


# ---- requests -----------------------------------------------------------------------------------

def test_requests_are_domain_0s(xs: Xenstored, client: Raw) -> None:
    local = xs.local_connection()
    assert client.ok(W.XS_WRITE, z("/tool/a") + b"v\x01\xff") == W.OK
    assert local.read_bytes("/tool/a") == b"v\x01\xff"
    local.write("/tool/b", "from inside")
    assert client.ok(W.XS_READ, z("/tool/b")) == b"from inside"
    assert client.ok(W.XS_DIRECTORY, z("/tool")) == z("a", "b")
    assert client.ok(W.XS_MKDIR, z("/tool/d")) == W.OK
    assert client.ok(W.XS_SET_PERMS, z("/tool/d", "n0", "r3")) == W.OK
    assert client.ok(W.XS_GET_PERMS, z("/tool/d")) == z("n0", "r3")
    assert client.ok(W.XS_RM, z("/tool/d")) == W.OK
    assert local.read("/tool/d") is None
    assert client.call(W.XS_READ, z("/tool/d")) == (W.XS_ERROR, b"ENOENT\0")
    # relative paths are domain 0's: /local/domain/0
    assert client.ok(W.XS_WRITE, z("name") + b"Domain-0") == W.OK
    assert local.read("/local/domain/0/name") == "Domain-0"
    assert client.ok(W.XS_GET_DOMAIN_PATH, z("7")) == z("/local/domain/7")
    assert client.ok(W.XS_IS_DOMAIN_INTRODUCED, z("0")) == b"T\0"
    assert client.ok(W.XS_CONTROL, z("print", "hello")) == W.OK
    # a domain cannot be introduced through the socket: domain 0 introduces its own domains
    assert client.call(W.XS_INTRODUCE, z("5", "1234", "3"))[0] == W.XS_ERROR


def test_pipelined_requests_answered_in_order(client: Raw) -> None:
    ids = [client.send(W.XS_WRITE, z(f"/p/{i}") + str(i).encode()) for i in range(50)]
    ids += [client.send(W.XS_READ, z(f"/p/{i}")) for i in range(50)]
    replies = [client.recv() for _ in ids]
    assert [h.req_id for h, _ in replies] == ids
    assert [p for _, p in replies[50:]] == [str(i).encode() for i in range(50)]


def test_watch_event_follows_its_reply(xs: Xenstored, client: Raw) -> None:
    rid = client.send(W.XS_WATCH, z("/w", "tok"))
    hdr, payload = client.recv()
    assert (hdr.type, hdr.req_id, payload) == (W.XS_WATCH, rid, W.OK)
    hdr, payload = client.recv()  # fired once straight away (docs/misc/xenstore.txt)
    assert (hdr.type, hdr.req_id, hdr.tx_id, payload) == (W.XS_WATCH_EVENT, 0, 0, z("/w", "tok"))
    # a change it makes itself: the WRITE's reply, then the event
    rid = client.send(W.XS_WRITE, z("/w/x") + b"1")
    hdr, payload = client.recv()
    assert (hdr.type, hdr.req_id, payload) == (W.XS_WRITE, rid, W.OK)
    hdr, payload = client.recv()
    assert (hdr.type, payload) == (W.XS_WATCH_EVENT, z("/w/x", "tok"))
    # a change from inside domain 0
    xs.local_connection().write("/w/y", "2")
    hdr, payload = client.recv()
    assert (hdr.type, payload) == (W.XS_WATCH_EVENT, z("/w/y", "tok"))
    assert client.ok(W.XS_UNWATCH, z("/w", "tok")) == W.OK
    assert client.ok(W.XS_WRITE, z("/w/z") + b"3") == W.OK
    assert client.ok(W.XS_READ, z("/w/z")) == b"3"  # no event came in between


def test_watch_reply_first_many_times(client: Raw) -> None:
    for i in range(200):
        rid = client.send(W.XS_WATCH, z(f"/many/{i}", f"t{i}"))
        first, second = client.recv(), client.recv()
        assert first[0].type == W.XS_WATCH and first[0].req_id == rid
        assert second[0].type == W.XS_WATCH_EVENT


def test_watches_and_transactions_end_with_the_connection(xs: Xenstored, door: XenstoredSocket) -> None:
    c = Raw(door.path)
    c.ok(W.XS_WATCH, z("/gone", "t"))
    c.recv()
    c.close()
    wait_for(lambda: door.client_count() == 0)
    xs.local_connection().write("/gone/x", "1")  # nothing to deliver to, nothing breaks
    assert Raw(door.path).ok(W.XS_READ, z("/gone/x")) == b"1"


def test_large_directory_by_directory_part(xs: Xenstored, client: Raw) -> None:
    local = xs.local_connection()
    names = [f"entry-with-a-longish-name-{i:05d}" for i in range(5000)]
    for n in names:
        local.write(f"/big/{n}", "x")
    # too big for one reply: E2BIG, which makes libxenstore's xs_directory() fall back to
    # DIRECTORY_PART <path>|<offset>| -> <gencnt>|<child>|* (an extra NUL once the list is complete)
    assert client.call(W.XS_DIRECTORY, z("/big")) == (W.XS_ERROR, b"E2BIG\0")
    got = b""
    gen = None
    while True:
        reply = client.ok(W.XS_DIRECTORY_PART, z("/big", str(len(got))))
        assert len(reply) <= W.PAYLOAD_MAX
        g, _, rest = reply.partition(b"\0")
        assert gen in (None, g)
        gen = g
        if rest.endswith(b"\0\0") or rest == b"\0":
            got += rest[:-1]
            break
        got += rest
    assert got[:-1].decode().split("\0") == names


def test_transaction_conflict_gets_eagain(xs: Xenstored, door: XenstoredSocket) -> None:
    a, b = Raw(door.path), Raw(door.path)
    a.ok(W.XS_WRITE, z("/t/x") + b"0")
    tx = int(a.ok(W.XS_TRANSACTION_START, b"\0").rstrip(b"\0"))
    assert a.ok(W.XS_READ, z("/t/x"), tx) == b"0"
    b.ok(W.XS_WRITE, z("/t/x") + b"b")
    assert a.ok(W.XS_WRITE, z("/t/x") + b"a", tx) == W.OK
    assert a.call(W.XS_TRANSACTION_END, z("T"), tx) == (W.XS_ERROR, b"EAGAIN\0")
    assert xs.local_connection().read("/t/x") == "b"
    # retried, it commits
    tx = int(a.ok(W.XS_TRANSACTION_START, b"\0").rstrip(b"\0"))
    assert a.ok(W.XS_WRITE, z("/t/x") + b"a", tx) == W.OK
    assert a.ok(W.XS_TRANSACTION_END, z("T"), tx) == W.OK
    assert xs.local_connection().read("/t/x") == "a"
    # transactions are the connection's own
    tx = int(a.ok(W.XS_TRANSACTION_START, b"\0").rstrip(b"\0"))
    assert b.call(W.XS_READ, z("/t/x"), tx) == (W.XS_ERROR, b"ENOENT\0")


# ---- hostile clients ----------------------------------------------------------------------------

@pytest.mark.parametrize("msg_type", [W.XS_WATCH_EVENT, W.XS_ERROR, W.XS_RESTRICT, 23, 999, 0xFFFF,
                                      0xFFFFFFFF])
def test_types_a_client_cannot_send_get_enosys(client: Raw, msg_type: int) -> None:
    assert client.call(msg_type, z("/x", "y")) == (W.XS_ERROR, b"ENOSYS\0")
    assert client.ok(W.XS_WRITE, z("/still") + b"usable") == W.OK


def test_malformed_payloads_get_errors(client: Raw) -> None:
    assert client.call(W.XS_READ, b"/no-nul") == (W.XS_ERROR, b"EINVAL\0")
    assert client.call(W.XS_READ, b"") == (W.XS_ERROR, b"EINVAL\0")
    assert client.call(W.XS_WATCH, z("/only-path")) == (W.XS_ERROR, b"EINVAL\0")
    assert client.call(W.XS_READ, z("/bad//path")) == (W.XS_ERROR, b"EINVAL\0")
    assert client.call(W.XS_TRANSACTION_END, z("T"), 77)[0] == W.XS_ERROR
    assert client.call(W.XS_DIRECTORY_PART, z("/", "x"))[0] == W.XS_ERROR
    assert client.ok(W.XS_READ, z("/")) == b""


def test_oversized_header_answered_then_disconnected(door: XenstoredSocket, client: Raw) -> None:
    client.s.sendall(W.HEADER.pack(W.XS_WRITE, 9, 0, W.PAYLOAD_MAX + 1) + b"x" * 100)
    hdr, payload = client.recv()
    assert (hdr.type, hdr.req_id, payload) == (W.XS_ERROR, 9, b"E2BIG\0")
    assert client.closed()
    c2 = Raw(door.path)
    assert c2.ok(W.XS_READ, z("/")) == b""


def test_largest_payload_is_accepted(client: Raw) -> None:
    value = b"v" * (W.PAYLOAD_MAX - len(z("/max")))
    assert client.ok(W.XS_WRITE, z("/max") + value) == W.OK
    assert client.ok(W.XS_READ, z("/max")) == value


def test_garbage_never_hurts_the_server(door: XenstoredSocket) -> None:
    import random

    rnd = random.Random(11)
    for _ in range(30):
        c = Raw(door.path)
        c.s.sendall(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000))))
        c.s.shutdown(socket.SHUT_WR)
        assert c.closed()  # answered what it could, then closed: never hung
        c.close()
    for _ in range(30):  # well-formed headers of any type with random payloads
        c = Raw(door.path)
        t = rnd.randrange(0, 30)
        payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 200)))
        c.send(t, payload)
        hdr, _ = c.recv()
        assert hdr.type in (t, W.XS_ERROR)
        c.close()
    assert door._thread is not None and door._thread.is_alive()
    assert Raw(door.path).ok(W.XS_READ, z("/")) == b""


def test_a_client_that_never_reads_is_dropped(xs: Xenstored, tmp_path: Path) -> None:
    log: list[str] = []
    door = XenstoredSocket(xs, tmp_path / "socket", output_limit=256 << 10, log=log.append)
    door.start()
    try:
        lazy = Raw(door.path)
        lazy.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.send(W.XS_WATCH, z("/flood", "t" * 100))
        wait_for(lambda: len(xs._locals) == 1 and len(xs._locals[0].watches) == 1)
        local = xs.local_connection()
        start = time.monotonic()
        for i in range(20000):  # about 3 MiB of events for a client that reads none of them
            local.write(f"/flood/node-{i}", "x")
            if door.client_count() == 0:
                break
        assert time.monotonic() - start < 30  # never waited for the client
        wait_for(lambda: door.client_count() == 0)
        assert lazy.closed()
        assert any("unread (limit 262144)" in line for line in log), log
        ok = Raw(door.path)  # the door still serves the others
        assert ok.ok(W.XS_READ, z("/flood/node-0")) == b"x"
    finally:
        door.close()


def test_pipelining_without_reading_is_held_back_not_dropped(xs: Xenstored, client: Raw) -> None:
    """A client that sends requests faster than it reads the replies is simply not read from (its
    replies cannot pile up without bound); once it reads, every reply comes."""
    n = 20000
    msgs = b"".join(W.encode(W.XS_READ, i, 0, z("/")) for i in range(n))
    sender = threading.Thread(target=client.s.sendall, args=(msgs,), daemon=True)
    sender.start()
    time.sleep(0.5)
    for i in range(n):
        hdr, payload = client.recv()
        assert hdr.req_id == i and payload == b""
    sender.join(5)


def test_connections_are_bounded(xs: Xenstored, tmp_path: Path) -> None:
    door = XenstoredSocket(xs, tmp_path / "socket", max_clients=2)
    door.start()
    try:
        a, b = Raw(door.path), Raw(door.path)
        assert a.ok(W.XS_READ, z("/")) == b"" and b.ok(W.XS_READ, z("/")) == b""
        c = Raw(door.path)
        assert c.closed()
        b.close()
        wait_for(lambda: door.client_count() == 1)
        d = Raw(door.path)
        assert d.ok(W.XS_READ, z("/")) == b""
    finally:
        door.close()
