"""A guest writing random messages and random ring indices: xenstored answers or drops that connection,
never raises, and another guest keeps working."""

from __future__ import annotations

import random

import pytest
from test_xenstore import RING_GPA, Env, z

from hyperdisco.backends.xenstore import ring as R
from hyperdisco.backends.xenstore import wire as W


def random_message(rng: random.Random) -> bytes:
    kind = rng.random()
    msg_type = rng.choice([rng.randrange(0, 32), rng.randrange(0, 1 << 32)])
    payload = rng.choice([b"", z("name"), z("/local/domain/2/name"), b"data/x\0v", bytes(rng.randrange(256)
                          for _ in range(rng.randrange(0, 64)))])
    if kind < 0.95:  # a well-framed message of any type and payload
        return W.encode(msg_type % 32 if rng.random() < 0.8 else msg_type, rng.getrandbits(32),
                        rng.choice([0, 0, rng.getrandbits(32)]), payload)
    raw = W.encode(msg_type % 32, 1, 0, payload)  # a header that lies about the length
    return raw[:12] + rng.getrandbits(32).to_bytes(4, "little") + raw[16:]


@pytest.mark.parametrize("seed", range(6))
def test_random_traffic_never_breaks_xenstored(seed: int) -> None:
    rng = random.Random(seed)
    env = Env()
    good = env.guest(2)
    good.write("data/ok", b"1")
    bad = env.guest(3)
    answered = 0
    for i in range(600):
        if i % 100 == 99:  # the guest resets its ring (a broken connection is revived by a reconnect)
            for off in (R.REQ_CONS, R.REQ_PROD, R.RSP_CONS, R.RSP_PROD):
                bad.mem.set_u32(RING_GPA + off, 0)
            env.xs.introduce_domain(3, bad.mem, RING_GPA, lambda: None)
        if rng.random() < 0.03:  # scribble over the ring indices
            off = rng.choice([R.REQ_CONS, R.REQ_PROD, R.RSP_CONS, R.RSP_PROD])
            bad.mem.set_u32(RING_GPA + off, rng.getrandbits(32))
        else:
            data = random_message(rng)[:R.RING_SIZE]
            prod, cons = bad.u32(R.REQ_PROD), bad.u32(R.REQ_CONS)
            if len(data) <= R.RING_SIZE - ((prod - cons) & 0xFFFFFFFF):
                bad.put(data)
        env.xs.kick(3)  # must never raise
        if rng.random() < 0.5:  # the guest reads its answers
            answered += (bad.u32(R.RSP_PROD) - bad.u32(R.RSP_CONS)) & 0xFFFFFFFF
            bad.mem.set_u32(RING_GPA + R.RSP_CONS, bad.u32(R.RSP_PROD))
    assert answered > 0  # xenstored really parsed and answered some of it
    assert good.read("data/ok") == b"1"  # the other domain is unaffected
    good.write("data/after", b"2")
    assert env.dom0.read("/local/domain/2/data/after") == "2"
    env.close()
