"""Property-based fuzzing of what a guest or an image file hands the backends: the xenstore wire protocol
on a guest's ring (backends/xenstore), blkif requests and ring indices (backends/blkback), the console ring
(backends/console.py), and qcow2 and cow image headers (backends/disk). The xl.cfg parser is fuzzed in
test_parser_fuzz.py.

The property for each: whatever the input, a clean answer - an error status for the guest, a dropped
connection, an ImageError at open or an OSError at I/O for a file - or a valid result; never another
exception, never an "internal error" logged, and the neighbour (another guest, the image's next user)
unaffected.

Fast by default (the unit layer); HYPERDISCO_FUZZ_EXAMPLES=N runs N examples per target. With -s, the
inputs tried per target are printed at the end of the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_blkback_ring import RING_GPA as BLK_RING_GPA
from test_blkback_ring import FakeDisk, Rig
from test_console import RING as CONSOLE_RING
from test_console import Env as ConsoleEnv
from test_xenstore import RING_GPA as XS_RING_GPA
from test_xenstore import Env as XsEnv
from unit_support import DomainHarness

from hyperdisco.backends.blkback import abi as blk
from hyperdisco.backends.disk import open_disk
from hyperdisco.backends.xenstore import ring as R
from hyperdisco.backends.xenstore import wire as W
from hyperdisco.errors import HyperdiscoError
from hyperdisco.xen.io.console import IDX, IDX_OFF, OUT_SIZE

EXAMPLES = int(os.environ.get("HYPERDISCO_FUZZ_EXAMPLES", "0"))
TRIED: Counter[str] = Counter()


def fuzz(default: int) -> Callable[[Any], Any]:
    return settings(max_examples=EXAMPLES or default, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print("\nfuzz inputs tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


# -- xenstore: messages and ring indices from a hostile guest ----------------------------------------------
PATHS = ["data/x", "/local/domain/2/name", "/local/domain/3", "/", "", "a" * 3100, "data/../x",
         "@introduceDomain", "/local/domain/2/data/ok", "control/shutdown", "data/\xff"]
payloads = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.sampled_from(PATHS), st.text(max_size=40)), max_size=4).map(
        lambda parts: b"".join(p.encode("utf-8", "surrogatepass") + b"\0" for p in parts)),
)
messages = st.tuples(st.one_of(st.integers(0, 31), st.integers(0, 2 ** 32 - 1)), st.integers(0, 2 ** 32 - 1),
                     st.sampled_from([0, 0, 1, 7, 2 ** 32 - 1]), payloads, st.booleans(),
                     st.integers(0, 2 ** 32 - 1))


@fuzz(120)
@given(msgs=st.lists(messages, min_size=1, max_size=12),
       scribble=st.lists(st.tuples(st.sampled_from([R.REQ_CONS, R.REQ_PROD, R.RSP_CONS, R.RSP_PROD]),
                                   st.integers(0, 2 ** 32 - 1)), max_size=2))
def test_xenstore_wire_from_a_hostile_guest(msgs: list[tuple[int, int, int, bytes, bool, int]],
                                            scribble: list[tuple[int, int]]) -> None:
    env = XsEnv()
    try:
        good = env.guest(2)
        good.write("data/ok", b"1")
        bad = env.guest(3)
        for msg_type, req_id, tx_id, payload, lie, length in msgs:
            TRIED["xenstore wire messages"] += 1
            raw = W.encode(msg_type, req_id, tx_id, payload[:W.PAYLOAD_MAX])
            if lie:  # a header whose length is not the payload's
                raw = raw[:12] + length.to_bytes(4, "little") + raw[16:]
            raw = raw[:R.RING_SIZE]
            prod, cons = bad.u32(R.REQ_PROD), bad.u32(R.REQ_CONS)
            if len(raw) <= R.RING_SIZE - ((prod - cons) & 0xFFFFFFFF):
                bad.put(raw)
            env.xs.kick(3)  # never raises
            bad.mem.set_u32(XS_RING_GPA + R.RSP_CONS, bad.u32(R.RSP_PROD))  # the guest reads its answers
        for off, value in scribble:
            bad.mem.set_u32(XS_RING_GPA + off, value)
            env.xs.kick(3)
        assert not [m for m in env.logs if "internal error" in m], env.logs
        assert good.read("data/ok") == b"1"  # the other guest: untouched and served
        good.write("data/after", b"2")
        assert env.dom0.read("/local/domain/2/data/after") == "2"
    finally:
        env.close()


@fuzz(300)
@given(payload=st.binary(max_size=300), count=st.integers(0, 5))
def test_xenstore_wire_helpers(payload: bytes, count: int) -> None:
    TRIED["xenstore payload parsers"] += 1
    for fn in (W.one_string, lambda p: W.strings(p, count), W.all_strings, W.path_and_value):
        try:
            fn(payload)
        except W.XsError:
            pass
    if len(payload) >= W.HEADER_SIZE:
        W.Header.unpack(payload[:W.HEADER_SIZE])


# -- blkif: requests and ring indices from a hostile frontend ----------------------------------------------
OPS = [blk.OP_READ, blk.OP_WRITE, blk.OP_FLUSH_DISKCACHE, blk.OP_WRITE_BARRIER, blk.OP_DISCARD,
       blk.OP_INDIRECT]
requests = st.one_of(
    st.binary(min_size=blk.REQUEST_SIZE, max_size=blk.REQUEST_SIZE),
    st.builds(lambda op, nseg, h, rid, sector, tail: blk.REQUEST_HEAD.pack(op, nseg, h, rid, sector) + tail,
              st.one_of(st.sampled_from(OPS), st.integers(0, 255)), st.integers(0, 255),
              st.integers(0, 0xFFFF), st.integers(0, 2 ** 64 - 1),
              st.one_of(st.integers(0, 300), st.integers(0, 2 ** 64 - 1)),
              st.one_of(st.binary(min_size=88, max_size=88),
                        st.lists(st.tuples(st.sampled_from([10, 11, 12, 200, 201, 0, 9999, 2 ** 32 - 1]),
                                           st.integers(0, 9), st.integers(0, 9)), max_size=11).map(
                            lambda segs: b"".join(blk.SEGMENT.pack(*s) for s in segs).ljust(88, b"\0")))),
)


@fuzz(60)
@given(reqs=st.lists(requests, min_size=1, max_size=8),
       prod_lie=st.one_of(st.none(), st.none(), st.integers(0, 2 ** 32 - 1)))
def test_blkif_requests_from_a_hostile_frontend(dh: DomainHarness, reqs: list[bytes],
                                                prod_lie: int | None) -> None:
    disk = FakeDisk()
    rig = Rig(dh, disk)
    try:
        indices = [rig.put(raw[:blk.REQUEST_SIZE]) for raw in reqs]
        TRIED["blkif requests"] += len(reqs)
        if prod_lie is not None:
            rig.mem.set_u32(BLK_RING_GPA + blk.REQ_PROD, prod_lie)
        try:
            while rig.ring.process(64):
                pass
        except Exception as exc:  # only the ring's own error, for indices that cannot be right
            assert type(exc).__name__ == "RingError", repr(exc)
            assert prod_lie is not None
        if prod_lie is None:  # an honest producer: every request got an answer of the protocol's
            for i, raw in zip(indices, reqs, strict=True):
                rid, _op, status = rig.response(i)
                assert status in (blk.RSP_OKAY, blk.RSP_ERROR, blk.RSP_EOPNOTSUPP)
                assert rid == blk.REQUEST_HEAD.unpack_from(raw.ljust(blk.REQUEST_SIZE, b"\0"))[3]
        assert not [m for m in rig.logs if "internal" in m], rig.logs
        assert len(disk.data) == 256 * 512  # writes stayed inside the disk
    finally:
        rig.ring.close()
        rig.stack.close()


# -- the console ring: indices and contents from the guest ---------------------------------------------------
@fuzz(300)
@given(idx=st.tuples(*[st.integers(0, 2 ** 32 - 1)] * 4), data=st.binary(max_size=64),
       typed=st.binary(max_size=3000))
def test_console_ring_from_a_hostile_guest(idx: tuple[int, int, int, int], data: bytes, typed: bytes) -> None:
    env = ConsoleEnv()
    try:
        TRIED["console ring states"] += 1
        env.mem.write(CONSOLE_RING, data)
        env.mem.pack(IDX, CONSOLE_RING + IDX_OFF, *idx)
        env.con.kick()
        assert sum(len(b) for b in env.out) <= OUT_SIZE  # one ring's worth at most, however it lies
        assert env.con.input(typed) in (True, False)
        env.con.kick()
        in_cons, in_prod, out_cons, out_prod = env.mem.unpack(IDX, CONSOLE_RING + IDX_OFF)
        assert in_cons == idx[0]  # the backend never moves the guest's consumer indices
    finally:
        env.mem.close()


# -- qcow2 and cow headers: files a user (or a guest that wrote a disk) hands hyperdisco ---------------------
@pytest.fixture(scope="module")
def seed_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("seeds")
    out: dict[str, bytes] = {}
    if shutil.which("qemu-img"):
        for name, opts in (("qcow2v3", []), ("qcow2v2", ["-o", "compat=0.10"]),
                           ("qcow2-backed", ["-o", "backing_file=base.raw,backing_fmt=raw"])):
            (d / "base.raw").write_bytes(bytes(1 << 20))
            p = d / f"{name}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *opts, str(p), "1M"], check=True,
                           cwd=d)
            out[name] = p.read_bytes()
    base = d / "cowbase.raw"
    base.write_bytes(bytes(1 << 20))
    img = open_disk(str(d / "seed.cow"), "cow", base=str(base))
    img.write(4096, b"x" * 4096)
    img.close()
    out["cow"] = (d / "seed.cow").read_bytes()
    return out


def mutated(seed: bytes, edits: list[tuple[int, bytes]], cut: int | None) -> bytes:
    data = bytearray(seed)
    for at, chunk in edits:
        at %= max(1, min(len(data), 4096))  # the headers live in the first cluster
        data[at:at + len(chunk)] = chunk
    return bytes(data[:cut] if cut is not None else data)


edits = st.lists(st.tuples(st.integers(0, 4095), st.one_of(
    st.binary(min_size=1, max_size=8),
    st.sampled_from([b"\xff" * 8, b"\0" * 8, (1 << 62).to_bytes(8, "big"), (2 ** 31).to_bytes(4, "big"),
                     (0x200).to_bytes(8, "big"), (21).to_bytes(4, "big"), (3).to_bytes(4, "big")]))),
    min_size=1, max_size=6)


@fuzz(150)
@given(which=st.sampled_from(["qcow2v3", "qcow2v2", "qcow2-backed", "cow"]), changes=edits,
       cut=st.one_of(st.none(), st.integers(0, 70000)), readonly=st.booleans(),
       reads=st.lists(st.integers(0, (1 << 20) // 512 - 1), max_size=3))
def test_image_headers(tmp_path: Path, seed_images: dict[str, bytes], which: str,
                       changes: list[tuple[int, bytes]], cut: int | None, readonly: bool,
                       reads: list[int]) -> None:
    assume(which in seed_images)
    TRIED[f"{'cow' if which == 'cow' else 'qcow2'} headers"] += 1
    d = tmp_path / f"h{zlib.crc32(repr((which, changes, cut, readonly)).encode())}"
    d.mkdir(exist_ok=True)
    (d / "base.raw").write_bytes(bytes(1 << 20))
    (d / "cowbase.raw").write_bytes(bytes(1 << 20))
    path = d / "image"
    path.write_bytes(mutated(seed_images[which], changes, cut))
    fmt = "cow" if which == "cow" else "qcow2"
    try:
        img = open_disk(str(path), fmt, readonly=readonly)
    except HyperdiscoError as exc:
        msg = str(exc)
        assert msg.startswith("hyperdisco: ") and "\n" not in msg and len(msg) < 2000, msg
        return
    try:
        assert img.size >= 0
        for sector in reads:
            try:
                img.read(sector * 512 % max(512, img.size), 512)
                if not readonly:
                    img.write(sector * 512 % max(512, img.size), b"z" * 512)
            except OSError as exc:  # a corrupt table found at I/O: that request fails, cleanly
                assert str(exc)
    finally:
        img.close()
