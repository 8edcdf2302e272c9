"""Random hypercalls from a hostile guest: every one gets an answer, none raises out of the dispatcher."""

from __future__ import annotations

import random

import pytest
from unit_support import DomainHarness

from hyperdisco.xen import abi

INTERESTING = [0, 1, 2, 3, 0x7FF0, 0xFFFF, 0x1000, 0x200000, 0x1FFFFFF, 0xFEE00000, 0xFFFFFFFF,
               1 << 32, 1 << 47, (1 << 64) - 1, (1 << 63), 0x300000, 0x400FFF]


def arg(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.choice(INTERESTING)
    if r < 0.7:
        return rng.randrange(0, 64)
    if r < 0.9:
        return rng.randrange(0, 32 << 20)  # inside the 32 MiB guest
    return rng.getrandbits(64)


@pytest.mark.parametrize("seed", range(4))
def test_random_hypercalls_never_raise(dh: DomainHarness, seed: int) -> None:
    rng = random.Random(seed)
    implemented = sorted(dh.dom.hypercalls.table)
    others = sorted(abi.HYPERCALLS) + [43, 64, 255, 1 << 20]
    answers: set[int] = set()
    for _ in range(1500):
        nr = rng.choice(implemented if rng.random() < 0.85 else others)
        args = [arg(rng) for _ in range(5)]
        if rng.random() < 0.5:  # a plausible sub-command, so the handlers' deeper checks run too
            args[0] = rng.randrange(0, 16)
        ret = dh.call(nr, *args)
        bound = 1 << 48
        if nr == 12 and args[0] & abi.MEMOP_CMD_MASK in (0, 1, 6):  # reservation ops: extents done, at
            bound = max(bound, (args[0] >> abi.MEMOP_EXTENT_SHIFT) + 1)  # least the restart extent (cmd >> 6)
        assert -4096 < ret < bound, (nr, args, ret)
        answers.add(min(ret, 1))
    # the handlers' own checks ran, not just the "not implemented" path
    assert {0, -abi.EFAULT, -abi.EINVAL, -abi.ENOSYS} <= answers
    assert not dh.dom.finished or dh.dom.outcome in ("poweroff", "reboot", "crash", "suspend", "watchdog",
                                                      "soft_reset")
