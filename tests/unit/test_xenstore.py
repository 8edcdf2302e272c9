"""xenstored: guests speaking the wire protocol through real ring pages, and dom0's local connection."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from hyperdisco.backends.xenstore import Quota, Xenstored, XsError
from hyperdisco.backends.xenstore import ring as R
from hyperdisco.backends.xenstore import wire as W
from hyperdisco.core.memory import PAGE, GuestMemory

RING_GPA = 5 * PAGE


class Guest:
    """What a guest's xenbus driver does with its ring page."""

    def __init__(self, xs: Xenstored, domid: int, start_index: int = 0) -> None:
        self.xs = xs
        self.domid = domid
        self.mem = GuestMemory(ram_bytes=1 << 20)
        self.notified = 0
        self.next_req = 1
        for off in (R.REQ_CONS, R.REQ_PROD, R.RSP_CONS, R.RSP_PROD):
            self.mem.set_u32(RING_GPA + off, start_index)
        self.pending = bytearray()  # response bytes read but not yet parsed
        xs.introduce_domain(domid, self.mem, RING_GPA, self._notify)

    def _notify(self) -> None:
        self.notified += 1

    def u32(self, off: int) -> int:
        return self.mem.u32(RING_GPA + off)

    def put(self, data: bytes) -> None:
        """Copy into req[] at req_prod (wrapping), then advance req_prod; at most the free space."""
        prod, cons = self.u32(R.REQ_PROD), self.u32(R.REQ_CONS)
        assert len(data) <= R.RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
        for i, b in enumerate(data):
            self.mem.set_u8(RING_GPA + R.REQ + (prod + i) % R.RING_SIZE, b)
        self.mem.set_u32(RING_GPA + R.REQ_PROD, (prod + len(data)) & 0xFFFFFFFF)

    def take(self) -> bytes:
        """Everything in rsp[] from rsp_cons to rsp_prod; advance rsp_cons."""
        prod, cons = self.u32(R.RSP_PROD), self.u32(R.RSP_CONS)
        n = (prod - cons) & 0xFFFFFFFF
        assert n <= R.RING_SIZE
        data = bytes(self.mem.u8(RING_GPA + R.RSP + (cons + i) % R.RING_SIZE) for i in range(n))
        self.mem.set_u32(RING_GPA + R.RSP_CONS, prod)
        return data

    def send(self, msg_type: int, payload: bytes, tx_id: int = 0, req_id: int | None = None) -> int:
        rid = self.next_req if req_id is None else req_id
        self.next_req += 1
        msg = W.encode(msg_type, rid, tx_id, payload)
        while True:  # in pieces if it is longer than the free space, signalling after each
            free = R.RING_SIZE - ((self.u32(R.REQ_PROD) - self.u32(R.REQ_CONS)) & 0xFFFFFFFF)
            self.put(msg[:free])
            msg = msg[free:]
            self.xs.kick(self.domid)
            if not msg:
                return rid

    def messages(self) -> list[tuple[int, int, int, bytes]]:
        """Parse every complete message in the response ring: (type, req_id, tx_id, payload)."""
        self.pending += self.take()
        out = []
        while len(self.pending) >= 16:
            t, rid, tx, n = struct.unpack_from("<IIII", self.pending)
            if len(self.pending) < 16 + n:
                break
            out.append((t, rid, tx, bytes(self.pending[16:16 + n])))
            del self.pending[:16 + n]
        return out

    def call(self, msg_type: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        """Send one request and return its reply (watch events that arrive are kept in self.events)."""
        rid = self.send(msg_type, payload, tx_id)
        reply = None
        for _ in range(16):  # a long reply arrives in pieces: signal after consuming, as xenbus does
            for t, r, _tx, p in self.messages():
                if t == W.XS_WATCH_EVENT:
                    self.events.append(_split(p))
                elif r == rid:
                    reply = (t, p)
            if reply is not None:
                return reply
            self.xs.kick(self.domid)
        raise AssertionError("no reply")

    events: list[list[str]]

    def ok(self, msg_type: int, payload: bytes, tx_id: int = 0) -> bytes:
        t, p = self.call(msg_type, payload, tx_id)
        assert t == msg_type, p
        return p

    def err(self, msg_type: int, payload: bytes, tx_id: int = 0) -> str:
        t, p = self.call(msg_type, payload, tx_id)
        assert t == W.XS_ERROR, p
        return p.rstrip(b"\0").decode()

    def read(self, path: str) -> bytes:
        return self.ok(W.XS_READ, z(path))

    def write(self, path: str, value: bytes) -> None:
        assert self.ok(W.XS_WRITE, z(path) + value) == b"OK\0"

    def collect_events(self) -> list[list[str]]:
        for t, _r, _tx, p in self.messages():
            assert t == W.XS_WATCH_EVENT
            self.events.append(_split(p))
        ev, self.events = self.events, []
        return ev


def z(s: str) -> bytes:
    return s.encode() + b"\0"


def _split(p: bytes) -> list[str]:
    assert p.endswith(b"\0")
    return p[:-1].decode().split("\0")


class Env:
    def __init__(self, quota: Quota | None = None) -> None:
        self.logs: list[str] = []
        self.xs = Xenstored(self.logs.append, quota)
        self.guests: list[Guest] = []
        self.dom0_events: list[tuple[str, str]] = []
        self.dom0 = self.xs.local_connection(lambda p, t: self.dom0_events.append((p, t)))

    def guest(self, domid: int, start_index: int = 0) -> Guest:
        g = Guest(self.xs, domid, start_index)
        g.events = []
        self.guests.append(g)
        return g

    def close(self) -> None:
        for g in self.guests:
            g.mem.close()


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.close()


def test_wire_numbers() -> None:
    # xs_wire.h enum xsd_sockmsg_type and struct xsd_sockmsg
    assert (W.XS_CONTROL, W.XS_DIRECTORY, W.XS_READ, W.XS_GET_PERMS) == (0, 1, 2, 3)
    assert (W.XS_WATCH, W.XS_UNWATCH) == (4, 5)
    assert (W.XS_TRANSACTION_START, W.XS_TRANSACTION_END, W.XS_INTRODUCE, W.XS_RELEASE) == (6, 7, 8, 9)
    assert (W.XS_GET_DOMAIN_PATH, W.XS_WRITE, W.XS_MKDIR, W.XS_RM, W.XS_SET_PERMS) == (10, 11, 12, 13, 14)
    assert (W.XS_WATCH_EVENT, W.XS_ERROR, W.XS_IS_DOMAIN_INTRODUCED, W.XS_RESUME) == (15, 16, 17, 18)
    assert (W.XS_SET_TARGET, W.XS_RESET_WATCHES, W.XS_DIRECTORY_PART) == (19, 21, 22)
    assert W.HEADER_SIZE == 16 and W.PAYLOAD_MAX == 4096
    assert (R.REQ_CONS, R.RSP_PROD, R.SERVER_FEATURES) == (2048, 2060, 2064)
    assert (R.CONNECTION, R.ERROR) == (2068, 2072)


# ---- basic operations ------------------------------------------------------------------------------

def test_guest_read_write_mkdir_rm_directory(env: Env) -> None:
    g = env.guest(1)
    assert g.ok(W.XS_GET_DOMAIN_PATH, z("1")) == b"/local/domain/1\0"
    g.write("data/x", b"hello")  # relative: /local/domain/1/data/x, parent created
    assert g.read("/local/domain/1/data/x") == b"hello"
    assert g.read("data") == b""
    g.write("data/bin", b"\x00\xff\x01")  # values are binary
    assert g.read("data/bin") == b"\x00\xff\x01"
    assert g.ok(W.XS_MKDIR, z("data/dir/sub")) == b"OK\0"
    assert g.ok(W.XS_MKDIR, z("data/x")) == b"OK\0"  # exists: value untouched
    assert g.read("data/x") == b"hello"
    assert g.ok(W.XS_DIRECTORY, z("data")) == b"x\0bin\0dir\0"
    assert g.ok(W.XS_RM, z("data/dir")) == b"OK\0"
    assert g.err(W.XS_READ, z("data/dir/sub")) == "ENOENT"
    assert g.ok(W.XS_RM, z("data/nothing")) == b"OK\0"  # missing node, parent exists: fine
    assert g.err(W.XS_RM, z("data/no/thing")) == "ENOENT"  # parent missing too
    assert g.ok(W.XS_DIRECTORY, z("data")) == b"x\0bin\0"
    assert g.ok(W.XS_IS_DOMAIN_INTRODUCED, z("1")) == b"T\0"
    assert g.ok(W.XS_IS_DOMAIN_INTRODUCED, z("7")) == b"F\0"
    assert env.dom0.read("/local/domain/1/data/x") == "hello"


def test_reply_echoes_req_id_and_tx_id(env: Env) -> None:
    g = env.guest(1)
    g.send(W.XS_READ, z("nothing"), req_id=0xDEADBEEF)
    [(t, rid, tx, p)] = g.messages()
    assert (t, rid, tx, p) == (W.XS_ERROR, 0xDEADBEEF, 0, b"ENOENT\0")


def test_directory_part(env: Env) -> None:
    for i in range(400):
        env.dom0.write(f"/big/child-{i:04d}", "")
    full = "".join(f"child-{i:04d}\0" for i in range(400)).encode()
    assert len(full) > W.PAYLOAD_MAX
    t, p = env.dom0.request(W.XS_DIRECTORY, z("/big"))
    assert (t, p) == (W.XS_ERROR, b"E2BIG\0")
    got = b""
    gens = set()
    while True:
        t, p = env.dom0.request(W.XS_DIRECTORY_PART, z("/big") + z(str(len(got))))
        assert t == W.XS_DIRECTORY_PART and len(p) <= W.PAYLOAD_MAX
        gen, _, rest = p.partition(b"\0")
        gens.add(gen)
        if rest.endswith(b"\0\0") or rest == b"\0":
            got += rest[:-1]
            break
        got += rest
    assert got == full and len(gens) == 1


# ---- permissions -----------------------------------------------------------------------------------

def test_permissions_between_domains(env: Env) -> None:
    g1, g2 = env.guest(1), env.guest(2)
    g1.write("secret", b"s")
    assert g1.ok(W.XS_GET_PERMS, z("secret")) == b"n1\0"  # inherited n<dom>, owner = creator
    assert g2.err(W.XS_READ, z("/local/domain/1/secret")) == "EACCES"
    assert g2.err(W.XS_WRITE, z("/local/domain/1/secret") + b"x") == "EACCES"
    assert g2.err(W.XS_WRITE, z("/local/domain/1/new") + b"x") == "EACCES"
    assert g2.err(W.XS_RM, z("/local/domain/1/secret")) == "EACCES"
    assert g2.err(W.XS_DIRECTORY, z("/local/domain/1")) == "EACCES"
    # a missing node under an unreadable parent is EACCES, not ENOENT: no probing for names
    assert g2.err(W.XS_READ, z("/local/domain/1/missing")) == "EACCES"
    assert g2.err(W.XS_WRITE, z("/evil") + b"x") == "EACCES"  # / is n0
    # grant dom2 read access: owner first, then per-domain entries
    assert g1.ok(W.XS_SET_PERMS, z("secret") + z("n1") + z("r2")) == b"OK\0"
    assert g1.ok(W.XS_GET_PERMS, z("secret")) == b"n1\0r2\0"
    assert g2.read("/local/domain/1/secret") == b"s"
    assert g2.err(W.XS_WRITE, z("/local/domain/1/secret") + b"x") == "EACCES"
    assert g2.err(W.XS_SET_PERMS, z("/local/domain/1/secret") + z("b2")) == "EACCES"
    # default permission for everyone not listed
    g1.ok(W.XS_SET_PERMS, z("secret") + z("b1"))
    g2.write("/local/domain/1/secret", b"changed")
    # the node stays owned by dom1; dom2 creating below it owns what it creates
    g2.write("/local/domain/1/secret/mine", b"m")
    assert env.dom0.get_perms("/local/domain/1/secret/mine") == ["b2"]
    # an unprivileged domain cannot give its node away
    assert g1.err(W.XS_SET_PERMS, z("secret") + z("n2")) == "EACCES"
    assert g1.err(W.XS_SET_PERMS, z("secret") + z("x1")) == "EINVAL"
    assert g1.err(W.XS_SET_PERMS, z("secret")) == "EINVAL"
    assert any("dom2" in line and "EACCES" in line for line in env.logs)


def test_dom0_privilege(env: Env) -> None:
    g1 = env.guest(1)
    g1.write("private", b"p")
    d = env.dom0
    assert d.read("/local/domain/1/private") == "p"
    d.write("/local/domain/1/private", "by dom0")
    d.write("/local/domain/1/device/vif/0/state", "1")  # dom0 creates: parent's perms, owner kept
    assert d.get_perms("/local/domain/1/device/vif/0/state") == ["n1"]
    assert g1.read("device/vif/0/state") == b"1"
    d.write("/local/domain/0/backend/x", "b")
    assert g1.err(W.XS_READ, z("/local/domain/0/backend/x")) == "EACCES"
    d.set_perms("/local/domain/0/backend/x", ["n0", "r1"])
    assert g1.read("/local/domain/0/backend/x") == b"b"
    d.set_perms("/local/domain/1/private", ["b0"])  # dom0 may change the owner
    assert g1.read("private") == b"by dom0"  # "b" for everyone not listed
    assert d.get_perms("/local/domain/1/private") == ["b0"]
    assert d.read("/missing") is None
    assert sorted(d.directory("/local/domain")) == ["0", "1"]
    assert d.read("relative") is None  # dom0's relative paths: /local/domain/0
    d.write("relative", "r")
    assert d.read("/local/domain/0/relative") == "r"
    with pytest.raises(XsError) as ei:
        d.write("bad//path", "x")
    assert ei.value.name == "EINVAL"


def test_guest_privileged_requests_refused(env: Env) -> None:
    g = env.guest(1)
    env.guest(2)
    assert g.err(W.XS_INTRODUCE, z("3") + z("100") + z("5")) == "EACCES"
    assert g.err(W.XS_RELEASE, z("2")) == "EACCES"
    assert g.err(W.XS_SET_TARGET, z("1") + z("2")) == "EACCES"
    assert g.err(W.XS_RESUME, z("2")) == "EACCES"
    assert g.err(W.XS_CONTROL, z("print") + z("hi")) == "EACCES"
    assert env.xs.is_introduced(2)
    assert sum("dom1" in line and "EACCES" in line for line in env.logs) == 5


def test_set_target(env: Env) -> None:
    g1, g2 = env.guest(1), env.guest(2)
    g2.write("x", b"2")
    assert g1.err(W.XS_READ, z("/local/domain/2/x")) == "EACCES"
    assert env.dom0.request(W.XS_SET_TARGET, z("1") + z("2")) == (W.XS_SET_TARGET, b"OK\0")
    assert g1.read("/local/domain/2/x") == b"2"
    g1.write("/local/domain/2/x", b"by 1")


# ---- watches ---------------------------------------------------------------------------------------

def test_watch_initial_and_change_events(env: Env) -> None:
    g = env.guest(1)
    assert g.ok(W.XS_WATCH, z("device") + z("tok")) == b"OK\0"
    assert g.collect_events() == [["device", "tok"]]  # fired once straight away, path as given
    g.write("device/vbd/0", b"x")
    assert g.collect_events() == [["device/vbd/0", "tok"]]  # relative watch: relative event path
    g.write("other", b"y")
    assert g.collect_events() == []
    env.dom0.write("/local/domain/1/device/vbd/0/state", "4")  # another connection's change
    assert g.collect_events() == [["device/vbd/0/state", "tok"]]
    assert g.notified
    # recursive removal of a parent: the event path is the watch's own path
    g.ok(W.XS_WATCH, z("/local/domain/1/device/vbd/0/state") + z("abs"))
    assert g.collect_events() == [["/local/domain/1/device/vbd/0/state", "abs"]]
    g.ok(W.XS_RM, z("device"))
    assert sorted(g.collect_events()) == [["/local/domain/1/device/vbd/0/state", "abs"], ["device", "tok"]]
    assert g.err(W.XS_WATCH, z("device") + z("tok")) == "EEXIST"
    assert g.ok(W.XS_UNWATCH, z("device") + z("tok")) == b"OK\0"
    assert g.err(W.XS_UNWATCH, z("device") + z("tok")) == "ENOENT"
    g.write("device/again", b"z")
    assert g.collect_events() == []


def test_watch_respects_permissions(env: Env) -> None:
    g1, g2 = env.guest(1), env.guest(2)
    g2.ok(W.XS_WATCH, z("/local/domain/1") + z("spy"))
    assert g2.collect_events() == [["/local/domain/1", "spy"]]
    g1.write("secret", b"s")
    assert g2.collect_events() == []
    g1.ok(W.XS_SET_PERMS, z("secret") + z("n1") + z("r2"))
    assert g2.collect_events() == [["/local/domain/1/secret", "spy"]]


def test_local_watch_callback_and_special_watches(env: Env) -> None:
    d = env.dom0
    d.watch("@introduceDomain", "in")
    d.watch("@releaseDomain", "out")
    d.watch("/local/domain", "dom")
    assert env.dom0_events == [("@introduceDomain", "in"), ("@releaseDomain", "out"),
                               ("/local/domain", "dom")]
    env.dom0_events.clear()
    g = env.guest(3)
    assert ("@introduceDomain", "in") in env.dom0_events
    assert ("/local/domain/3", "dom") in env.dom0_events  # its home directory was created
    env.dom0_events.clear()
    g.write("name", b"guest")
    assert env.dom0_events == [("/local/domain/3/name", "dom")]
    env.dom0_events.clear()
    # a guest may set a special watch (initial event) but, as in xenstored, only sees the events if
    # dom0 grants it access to the special node
    g.ok(W.XS_WATCH, z("@releaseDomain") + z("r"))
    assert g.collect_events() == [["@releaseDomain", "r"]]
    env.guest(4)
    env.xs.release_domain(4)
    assert env.dom0_events.count(("@releaseDomain", "out")) == 1
    assert g.collect_events() == []
    d.set_perms("@releaseDomain", ["n0", "r3"])
    assert d.get_perms("@releaseDomain") == ["n0", "r3"]
    env.guest(4)
    env.xs.release_domain(4)
    assert g.collect_events() == [["@releaseDomain", "r"]]
    assert not env.xs.is_introduced(4)
    assert d.request(W.XS_IS_DOMAIN_INTRODUCED, z("4")) == (W.XS_IS_DOMAIN_INTRODUCED, b"F\0")
    # RELEASE through the wire from dom0
    env.guest(5)
    env.dom0_events.clear()
    assert d.request(W.XS_RELEASE, z("5")) == (W.XS_RELEASE, b"OK\0")
    assert ("@releaseDomain", "out") in env.dom0_events
    assert d.request(W.XS_RELEASE, z("5"))[1] == b"ENOENT\0"


def test_local_callback_may_reenter(env: Env) -> None:
    seen: list[str | None] = []
    conn = env.xs.local_connection(lambda p, t: seen.append(conn.read(p)))
    env.dom0.write("/w", "1")
    conn.watch("/w", "t")
    env.dom0.write("/w", "2")
    assert seen == ["1", "2"]
    conn.close()
    env.dom0.write("/w", "3")
    assert seen == ["1", "2"]


def test_reset_watches(env: Env) -> None:
    g = env.guest(1)
    g.ok(W.XS_WATCH, z("a") + z("1"))
    g.ok(W.XS_WATCH, z("b") + z("2"))
    tx = int(g.ok(W.XS_TRANSACTION_START, b"\0")[:-1])
    g.collect_events()
    assert g.ok(W.XS_RESET_WATCHES, b"") == b"OK\0"
    g.write("a", b"x")
    assert g.collect_events() == []
    assert g.err(W.XS_READ, z("a"), tx_id=tx) == "ENOENT"  # the transaction went too


def test_release_drops_watches(env: Env) -> None:
    g = env.guest(1)
    g.ok(W.XS_WATCH, z("/local/domain") + z("t"))
    g.collect_events()
    env.xs.release_domain(1)
    before = g.u32(R.RSP_PROD)
    env.dom0.write("/local/domain/9", "")
    assert g.u32(R.RSP_PROD) == before
    env.xs.kick(1)  # no longer connected: ignored


# ---- transactions ----------------------------------------------------------------------------------

def test_transaction_isolation_and_commit(env: Env) -> None:
    g = env.guest(1)
    g.ok(W.XS_WATCH, z("t") + z("w"))
    g.collect_events()
    tx = int(g.ok(W.XS_TRANSACTION_START, b"\0")[:-1])
    assert tx != 0
    assert g.ok(W.XS_WRITE, z("t/a") + b"1", tx_id=tx) == b"OK\0"
    assert g.ok(W.XS_READ, z("t/a"), tx_id=tx) == b"1"
    assert g.err(W.XS_READ, z("t/a")) == "ENOENT"  # not visible outside yet
    assert g.collect_events() == []  # no events before the commit
    assert g.ok(W.XS_TRANSACTION_END, b"T\0", tx_id=tx) == b"OK\0"
    assert g.read("t/a") == b"1"
    assert g.collect_events() == [["t/a", "w"]]
    assert g.err(W.XS_READ, z("t/a"), tx_id=tx) == "ENOENT"  # ended


def test_transaction_abort(env: Env) -> None:
    d = env.dom0
    tx = d.transaction_start()
    d.write("/x", "1", tx)
    assert d.transaction_end(tx, commit=False)
    assert d.read("/x") is None


def test_transaction_conflict_eagain(env: Env) -> None:
    g1 = env.guest(1)
    d = env.dom0
    d.write("/local/domain/1/shared", "0")
    tx = int(g1.ok(W.XS_TRANSACTION_START, b"\0")[:-1])
    assert g1.ok(W.XS_READ, z("shared"), tx_id=tx) == b"0"
    g1.ok(W.XS_WRITE, z("result") + b"r", tx_id=tx)
    d.write("/local/domain/1/shared", "changed")  # intervening write to a node the tx read
    assert g1.err(W.XS_TRANSACTION_END, b"T\0", tx_id=tx) == "EAGAIN"
    assert g1.err(W.XS_READ, z("result")) == "ENOENT"
    # unrelated intervening writes do not conflict (creating a node changes its parent's list of
    # children, so the transaction below only touches nodes that exist)
    d.write("/local/domain/1/out", "")
    tx = d.transaction_start()
    assert d.read("/local/domain/1/shared", tx) == "changed"
    d.write("/local/domain/1/out", "o", tx)
    g1.write("unrelated", b"u")
    assert d.transaction_end(tx)
    assert d.read("/local/domain/1/out") == "o"
    # two transactions creating the same node: the second commit fails
    t1, t2 = d.transaction_start(), d.transaction_start()
    d.write("/race", "1", t1)
    d.write("/race", "2", t2)
    assert d.transaction_end(t1)
    assert not d.transaction_end(t2)
    assert d.read("/race") == "1"


def test_transaction_rm_and_bad_ids(env: Env) -> None:
    g = env.guest(1)
    g.write("d/e", b"1")
    tx = int(g.ok(W.XS_TRANSACTION_START, b"\0")[:-1])
    g.ok(W.XS_RM, z("d"), tx_id=tx)
    assert g.read("d/e") == b"1"
    assert g.err(W.XS_READ, z("d/e"), tx_id=tx) == "ENOENT"
    assert g.err(W.XS_TRANSACTION_END, b"X\0", tx_id=tx) == "EINVAL"  # tx survives a bad argument
    assert g.ok(W.XS_TRANSACTION_END, b"T\0", tx_id=tx) == b"OK\0"
    assert g.err(W.XS_READ, z("d")) == "ENOENT"
    assert g.err(W.XS_READ, z("x"), tx_id=12345) == "ENOENT"
    assert g.err(W.XS_TRANSACTION_END, b"T\0") == "ENOENT"
    assert g.err(W.XS_TRANSACTION_START, b"\0", tx_id=12345) == "EBUSY"
    assert any("no transaction 12345" in line for line in env.logs)


# ---- quotas ----------------------------------------------------------------------------------------

def test_quota_nodes_and_size() -> None:
    e = Env(Quota(max_nodes_per_domain=10, max_node_size=64))
    try:
        g1, g2 = e.guest(1), e.guest(2)  # each owns its home node already
        for i in range(9):
            g1.write(f"n{i}", b"v")
        assert g1.err(W.XS_WRITE, z("n9") + b"v") == "ENOSPC"
        assert g1.err(W.XS_MKDIR, z("a/b")) == "ENOSPC"
        g1.write("n0", b"rewrite is fine")
        g1.ok(W.XS_RM, z("n8"))
        g1.write("n9", b"v")  # room again after a removal
        assert g1.err(W.XS_WRITE, z("n0") + b"x" * 65) == "ENOSPC"
        g1.write("n0", b"x" * 64)
        # the other domain is unaffected, and dom0 has no quota
        g2.write("mine", b"ok")
        e.dom0.write("/local/domain/1/by-dom0", "y" * 1000)
        assert any("dom1" in line and "ENOSPC" in line for line in e.logs)
        # quotas also hold at commit for nodes created in a transaction
        tx = int(g2.ok(W.XS_TRANSACTION_START, b"\0")[:-1])
        for i in range(8):
            g2.ok(W.XS_WRITE, z(f"t{i}") + b"v", tx_id=tx)
        assert g2.err(W.XS_WRITE, z("t8") + b"v", tx_id=tx) == "ENOSPC"
        g2.ok(W.XS_TRANSACTION_END, b"T\0", tx_id=tx)
        assert g2.err(W.XS_WRITE, z("t8") + b"v") == "ENOSPC"
    finally:
        e.close()


def test_quota_watches_and_transactions() -> None:
    e = Env(Quota(max_watches=3, max_transactions=2))
    try:
        g1, g2 = e.guest(1), e.guest(2)
        for i in range(3):
            g1.ok(W.XS_WATCH, z(f"w{i}") + z("t"))
        assert g1.err(W.XS_WATCH, z("w3") + z("t")) == "E2BIG"
        g1.ok(W.XS_UNWATCH, z("w0") + z("t"))
        g1.ok(W.XS_WATCH, z("w3") + z("t"))
        t1 = int(g1.ok(W.XS_TRANSACTION_START, b"\0")[:-1])
        t2 = int(g1.ok(W.XS_TRANSACTION_START, b"\0")[:-1])
        assert t1 != t2
        assert g1.err(W.XS_TRANSACTION_START, b"\0") == "ENOSPC"
        g1.ok(W.XS_TRANSACTION_END, b"F\0", tx_id=t1)
        g1.ok(W.XS_TRANSACTION_START, b"\0")
        # the other domain still works, dom0 is unlimited
        g2.ok(W.XS_WATCH, z("x") + z("t"))
        g2.ok(W.XS_TRANSACTION_START, b"\0")
        g2.write("still", b"fine")
        for i in range(5):
            e.dom0.watch(f"/d{i}", "t")
            e.dom0.transaction_start()
    finally:
        e.close()


def test_outstanding_requests_wait_for_the_guest() -> None:
    e = Env(Quota(max_outstanding=2))
    try:
        g = e.guest(1)
        g.write("v", b"x" * 500)
        # five READs of a 500-byte value: replies need far more room than the 1024-byte ring
        reqs = b"".join(W.encode(W.XS_READ, 100 + i, 0, z("v")) for i in range(5))
        g.put(reqs)
        e.xs.kick(1)
        got = []
        for _ in range(20):
            got += g.messages()
            e.xs.kick(1)  # the guest signals after consuming
        assert [(t, r, p) for t, r, _x, p in got] == [(W.XS_READ, 100 + i, b"x" * 500) for i in range(5)]
    finally:
        e.close()


# ---- malformed input -------------------------------------------------------------------------------

def test_malformed_requests_get_errors(env: Env) -> None:
    g, other = env.guest(1), env.guest(2)
    assert g.err(99, b"") == "EINVAL"  # unknown type
    assert g.err(W.XS_RESTRICT, z("1")) == "EINVAL"
    assert g.err(W.XS_WATCH_EVENT, z("a") + z("b")) == "EINVAL"
    assert g.err(W.XS_READ, b"no-nul") == "EINVAL"  # path without its NUL
    assert g.err(W.XS_READ, b"two\0strings\0") == "EINVAL"
    assert g.err(W.XS_WRITE, b"no-nul-at-all") == "EINVAL"
    assert g.err(W.XS_READ, b"") == "EINVAL"
    assert g.err(W.XS_READ, z("/bad//path")) == "EINVAL"
    assert g.err(W.XS_READ, z("/trailing/")) == "EINVAL"
    assert g.err(W.XS_READ, z("/sp ace")) == "EINVAL"
    assert g.err(W.XS_READ, z("a" * 2100)) == "EINVAL"  # over quota_max_path_len
    assert g.err(W.XS_WATCH, z("only-path")) == "EINVAL"
    assert g.err(W.XS_GET_DOMAIN_PATH, z("x1")) == "EINVAL"
    assert g.err(W.XS_GET_DOMAIN_PATH, z("99999")) == "EINVAL"
    assert g.err(W.XS_RM, z("/")) in ("EINVAL", "EACCES")
    assert env.dom0.request(W.XS_RM, z("/"))[1] == b"EINVAL\0"
    g.write("still", b"works")
    other.write("fine", b"too")
    assert sum("dom1" in line for line in env.logs) >= 12


def test_too_long_message_breaks_connection(env: Env) -> None:
    g, other = env.guest(1), env.guest(2)
    g.put(struct.pack("<IIII", W.XS_READ, 1, 0, 4097))
    env.xs.kick(1)
    assert g.u32(R.ERROR) == R.ERROR_PROTO
    assert g.messages() == []
    g.put(W.encode(W.XS_READ, 2, 0, z("x")))
    env.xs.kick(1)
    assert g.messages() == []  # no longer served
    other.write("fine", b"yes")
    assert any("dom1" in line and "broken" in line for line in env.logs)
    # the ring reconnection feature revives it
    assert g.u32(R.SERVER_FEATURES) & (R.FEATURE_RECONNECTION | R.FEATURE_ERROR) == 3
    g.mem.set_u32(RING_GPA + R.CONNECTION, R.RECONNECT)
    env.xs.kick(1)
    assert g.u32(R.CONNECTION) == R.CONNECTED and g.u32(R.ERROR) == 0
    assert [g.u32(o) for o in (R.REQ_CONS, R.REQ_PROD, R.RSP_CONS, R.RSP_PROD)] == [0, 0, 0, 0]
    g.pending.clear()
    g.write("back", b"again")


@pytest.mark.parametrize("which", ["req", "rsp"])
def test_bogus_ring_indices_break_connection(env: Env, which: str) -> None:
    g, other = env.guest(1), env.guest(2)
    if which == "req":
        g.mem.set_u32(RING_GPA + R.REQ_PROD, g.u32(R.REQ_CONS) + 5000)  # producer far ahead
    else:
        g.mem.set_u32(RING_GPA + R.RSP_CONS, g.u32(R.RSP_PROD) + 7)  # consumed more than produced
        g.put(W.encode(W.XS_READ, 1, 0, z("x")))
    env.xs.kick(1)  # no exception
    assert g.u32(R.ERROR) == R.ERROR_RINGIDX
    other.write("fine", b"yes")
    env.dom0.write("/local/domain/1/after", "no crash when firing into a broken connection")


def test_ring_page_outside_guest_memory(env: Env) -> None:
    g = env.guest(1)
    env.xs.kick(1)
    g.mem.close()  # the mapping disappears under xenstored's feet: GuestFault on every access
    g.mem.regions.clear()
    env.xs.kick(1)
    assert any("dom1" in line and "broken" in line for line in env.logs)
    env.guests.remove(g)


def test_partial_and_split_requests(env: Env) -> None:
    g = env.guest(1)
    msg = W.encode(W.XS_WRITE, 7, 0, z("p") + b"value")
    g.put(msg[:5])
    env.xs.kick(1)
    assert g.messages() == []
    g.put(msg[5:20])
    env.xs.kick(1)
    g.put(msg[20:] + W.encode(W.XS_READ, 8, 0, z("p")))
    env.xs.kick(1)
    assert [(t, r, p) for t, r, _x, p in g.messages()] == [(W.XS_WRITE, 7, b"OK\0"), (W.XS_READ, 8, b"value")]


# ---- ring wraparound -------------------------------------------------------------------------------

@pytest.mark.parametrize("start", [0, 1000, 0xFFFFFF00])
def test_ring_wraparound(env: Env, start: int) -> None:
    """Requests and replies cross the end of the 1024-byte rings (and the u32 index wraps)."""
    g = env.guest(1, start_index=start)
    value = bytes(range(256)) * 3  # 768 bytes
    for i in range(12):
        g.write(f"k{i}", value[i:] + value[:i])
        assert g.read(f"k{i}") == value[i:] + value[:i]
    assert (g.u32(R.REQ_PROD) - start) & 0xFFFFFFFF > 4 * R.RING_SIZE
    assert (g.u32(R.RSP_PROD) - start) & 0xFFFFFFFF > 4 * R.RING_SIZE


def test_max_size_request_spans_several_ring_fills() -> None:
    """A 4096-byte payload is larger than the ring: the guest writes it in pieces as room appears,
    and reads the reply in pieces too."""
    e = Env(Quota(max_node_size=5000))
    try:
        g = e.guest(1)
        path = z("big")
        value = bytes(i % 251 for i in range(W.PAYLOAD_MAX - len(path)))
        msg = W.encode(W.XS_WRITE, 1, 0, path + value)
        pos = 0
        while pos < len(msg):
            free = R.RING_SIZE - ((g.u32(R.REQ_PROD) - g.u32(R.REQ_CONS)) & 0xFFFFFFFF)
            g.put(msg[pos:pos + free])
            pos += free
            e.xs.kick(1)
        assert [(t, p) for t, _r, _x, p in g.messages()] == [(W.XS_WRITE, b"OK\0")]
        assert g.read("big") == value
    finally:
        e.close()


def test_kick_unknown_domain_is_harmless(env: Env) -> None:
    env.xs.kick(42)
    env.xs.release_domain(42)
    with pytest.raises(ValueError):
        env.guest(0)


def test_concurrent_guest_and_dom0(env: Env) -> None:
    """A guest's kicks and dom0's requests from different threads, with watches crossing between them."""
    import threading

    g = env.guest(1)
    g.ok(W.XS_WATCH, z("shared") + z("g"))
    env.dom0.watch("/local/domain/1", "d")
    errors: list[BaseException] = []

    def guest_side() -> None:
        try:
            for i in range(200):
                g.write(f"mine/{i % 7}", str(i).encode())
                assert g.read(f"mine/{i % 7}") == str(i).encode()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=guest_side)
    t.start()
    for i in range(200):
        env.dom0.write("/local/domain/1/shared", str(i))
    t.join(timeout=30)
    assert not t.is_alive() and not errors
    events = g.collect_events()
    assert all(ev[1] == "g" and ev[0] == "shared" for ev in events)
    assert env.dom0.read("/local/domain/1/shared") == "199"
    assert not any("internal error" in line for line in env.logs)
