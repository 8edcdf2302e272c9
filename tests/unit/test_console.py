"""The PV console ring (xencons_interface) with indices the guest controls."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from hyperdisco.backends.console import ConsoleBackend
from hyperdisco.core.memory import PAGE, GuestMemory
from hyperdisco.xen.io.console import IDX, IDX_OFF, IN_SIZE, OUT_SIZE

RING = 2 * PAGE


class Env:
    def __init__(self) -> None:
        self.mem = GuestMemory(4 * PAGE)
        self.out: list[bytes] = []
        self.signals: list[int] = []
        self.con = ConsoleBackend(self.mem, RING, self.out.append, lambda: self.signals.append(7))

    def idx(self) -> tuple[int, ...]:
        return self.mem.unpack(IDX, RING + IDX_OFF)

    def set_idx(self, in_cons: int, in_prod: int, out_cons: int, out_prod: int) -> None:
        self.mem.pack(IDX, RING + IDX_OFF, in_cons, in_prod, out_cons, out_prod)

    def guest_write(self, data: bytes) -> None:
        """What the guest's hvc driver does: copy into out[] at out_prod, then advance it."""
        in_cons, in_prod, out_cons, out_prod = self.idx()
        for i, b in enumerate(data):
            self.mem.set_u8(RING + IN_SIZE + (out_prod + i) % OUT_SIZE, b)
        self.set_idx(in_cons, in_prod, out_cons, (out_prod + len(data)) & 0xFFFFFFFF)

    def guest_read(self) -> bytes:
        in_cons, in_prod, out_cons, out_prod = self.idx()
        n = (in_prod - in_cons) & 0xFFFFFFFF
        data = bytes(self.mem.u8(RING + (in_cons + i) % IN_SIZE) for i in range(n))
        self.set_idx(in_prod, in_prod, out_cons, out_prod)
        return data


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.mem.close()


def test_layout() -> None:
    assert (IN_SIZE, OUT_SIZE, IDX_OFF) == (1024, 2048, 3072)


def test_output_drained(env: Env) -> None:
    env.guest_write(b"hello, world\n")
    env.con.kick()
    assert b"".join(env.out) == b"hello, world\n"
    assert env.idx() == (0, 0, 13, 13)
    assert env.con.bytes_out == 13
    assert env.signals == [7]


def test_kick_with_nothing_to_do_is_silent(env: Env) -> None:
    env.con.kick()
    assert env.out == [] and env.signals == []


def test_output_wraparound(env: Env) -> None:
    env.set_idx(0, 0, OUT_SIZE - 5, OUT_SIZE - 5)
    env.guest_write(b"0123456789")
    env.con.kick()
    assert b"".join(env.out) == b"0123456789"
    assert env.idx()[2] == OUT_SIZE + 5
    # the first five bytes went to the end of out[], the rest to its start
    assert env.mem.read(RING + IN_SIZE + OUT_SIZE - 5, 5) == b"01234"
    assert env.mem.read(RING + IN_SIZE, 5) == b"56789"


def test_output_index_wraps_at_32_bits(env: Env) -> None:
    start = 0xFFFFFFFF - 3
    env.set_idx(0, 0, start, start)
    env.guest_write(b"abcdefgh")
    assert env.idx()[3] == 4
    env.con.kick()
    assert b"".join(env.out) == b"abcdefgh"
    assert env.idx()[2] == 4


def test_full_ring_of_output(env: Env) -> None:
    data = bytes(range(256)) * (OUT_SIZE // 256)
    env.set_idx(0, 0, 100, 100)
    env.guest_write(data)
    env.con.kick()
    assert b"".join(env.out) == data


@pytest.mark.parametrize(("out_cons", "out_prod"), [
    (0, 0x7FFFFFFF), (5, 4), (0, 0xFFFFFFFF), (0, OUT_SIZE + 1), (1000, 1000 + 3 * OUT_SIZE + 17),
])
def test_bogus_producer_is_clamped_to_one_ring(env: Env, out_cons: int, out_prod: int) -> None:
    env.mem.write(RING + IN_SIZE, b"x" * OUT_SIZE)
    env.set_idx(0, 0, out_cons, out_prod)
    env.con.kick()
    out = b"".join(env.out)
    assert len(out) == OUT_SIZE
    assert env.idx()[2] == (out_cons + OUT_SIZE) & 0xFFFFFFFF
    assert env.idx()[3] == out_prod  # the producer index is the guest's: untouched


def test_output_never_reads_outside_the_ring(env: Env) -> None:
    env.mem.write(RING + IN_SIZE + OUT_SIZE, b"\xee" * 16)  # the index words themselves, and beyond
    env.mem.write(RING - 16, b"\xdd" * 16)
    env.mem.write(RING + IN_SIZE, b"o" * OUT_SIZE)
    for cons in (0, 1, OUT_SIZE - 1, 0xFFFFFFFF):
        env.out.clear()
        env.set_idx(0, 0, cons, (cons - 1) & 0xFFFFFFFF)
        env.con.kick()
        assert b"".join(env.out) == b"o" * OUT_SIZE


def test_input_delivered_and_signalled(env: Env) -> None:
    env.con.input(b"ls\n")
    assert env.idx()[:2] == (0, 3)
    assert env.guest_read() == b"ls\n"
    assert env.con.bytes_in == 3
    assert env.signals == [7]


def test_input_respects_ring_space_and_wraps(env: Env) -> None:
    data = bytes(i & 0xFF for i in range(3000))
    env.set_idx(IN_SIZE - 10, IN_SIZE - 10, 0, 0)
    env.con.input(data)
    assert env.idx()[:2] == (IN_SIZE - 10, 2 * IN_SIZE - 10)  # exactly one ring's worth
    assert env.con.bytes_in == IN_SIZE
    got = env.guest_read()
    assert got == data[:IN_SIZE]
    assert env.mem.read(RING + IN_SIZE - 10, 10) == data[:10]
    assert env.mem.read(RING, 10) == data[10:20]
    # the rest waits until the guest kicks after consuming
    env.con.kick()
    got += env.guest_read()
    env.con.kick()
    got += env.guest_read()
    assert got == data
    env.con.kick()
    assert env.guest_read() == b""


def test_input_with_partly_full_ring(env: Env) -> None:
    env.set_idx(0, 1000, 0, 0)
    env.con.input(b"abcdefghijklmnopqrstuvwxyz")
    assert env.idx()[:2] == (0, IN_SIZE)
    assert env.con.bytes_in == 24


def test_input_index_wraps_at_32_bits(env: Env) -> None:
    env.set_idx(0xFFFFFFFE, 0xFFFFFFFE, 0, 0)
    env.con.input(b"wxyz")
    assert env.idx()[:2] == (0xFFFFFFFE, 2)
    assert env.guest_read() == b"wxyz"


@pytest.mark.parametrize(("in_cons", "in_prod"), [(0, IN_SIZE + 1), (0, 0x80000000), (10, 9)])
def test_bogus_input_indices_stall_safely(env: Env, in_cons: int, in_prod: int) -> None:
    env.set_idx(in_cons, in_prod, 0, 0)
    before = env.mem.read(0, 4 * PAGE)
    env.con.input(b"data")
    assert env.mem.read(0, 4 * PAGE) == before
    assert env.con.bytes_in == 0 and env.signals == []


def test_input_from_many_threads_is_not_lost_or_torn(env: Env) -> None:
    chunks = [bytes([65 + i]) * 50 for i in range(8)]
    threads = [threading.Thread(target=env.con.input, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = env.guest_read()
    env.con.kick()
    got += env.guest_read()
    assert sorted(got) == sorted(b"".join(chunks))
    for c in chunks:  # each write arrives contiguously
        assert c in got


def test_long_input_is_delivered_whole_as_the_guest_reads(env: Env) -> None:
    """More input than the ring holds waits in the backend and follows as the guest consumes."""
    data = bytes(range(256)) * 20  # 5 KiB: five rings' worth
    assert env.con.input(data)
    got = bytearray()
    for _ in range(20):
        got += env.guest_read()
        env.con.kick()  # hvc_xen notifies after it consumed input
    assert bytes(got) == data
    assert env.con.pending_input() == 0


def test_unread_input_is_bounded(env: Env) -> None:
    assert env.con.input(b"x" * ConsoleBackend.MAX_PENDING_INPUT)
    assert not env.con.input(b"y" * (IN_SIZE + 1))  # the ring took IN_SIZE of it, no more
