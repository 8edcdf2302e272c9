"""qcow2: our reader/writer against qemu-img/qemu-io both ways, crash consistency, bad input."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_disk_raw import random_io

from hyperdisco.backends.disk import Qcow2Image, open_disk
from hyperdisco.errors import ImageError

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]

needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="qemu-img/qemu-io not installed (apt-get install qemu-utils)")


def qemu_img(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=check, timeout=120)


def create(path: Path, size: str, *opts: str) -> None:
    qemu_img("create", "-q", "-f", "qcow2", *opts, str(path), size)


def assert_clean(path: Path, leaks_ok: bool = False) -> None:
    """qemu-img check: no errors (exit 0); after a simulated crash leaked clusters (exit 3) are fine."""
    proc = qemu_img("check", str(path), check=False)
    allowed = (0, 3) if leaks_ok else (0,)
    assert proc.returncode in allowed, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout and "corrupt" not in proc.stdout.lower(), proc.stdout


def assert_same(path: Path, model: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "model.raw"
    raw.write_bytes(model)
    proc = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(path), str(raw), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_qemu
@pytest.mark.parametrize(("opts", "size", "ops"), [
    (("-o", "compat=1.1"), 64 * MIB, 300),
    (("-o", "compat=0.10"), 64 * MIB, 300),
    (("-o", "cluster_size=4096,refcount_bits=64"), 16 * MIB, 300),
    (("-o", "cluster_size=2M,refcount_bits=8"), 64 * MIB, 100),
    (("-o", "cluster_size=512,refcount_bits=1"), 8 * MIB, 200),
    (("-o", "cluster_size=1024,refcount_bits=4"), 8 * MIB, 200),
])
def test_random_io_then_qemu_check_and_compare(tmp_path: Path, opts: tuple[str, ...], size: int,
                                               ops: int) -> None:
    img = tmp_path / "disk.qcow2"
    create(img, str(size), *opts)
    model = bytearray(size)
    disk = open_disk(str(img), "qcow2")
    assert disk.size == size
    random_io(disk, model, random.Random(size + ops), ops)
    disk.close()
    assert_clean(img)
    assert_same(img, bytes(model), tmp_path)
    disk = open_disk(str(img), "qcow2", readonly=True)  # and we read our own writes back after reopening
    assert disk.read(0, size) == model
    disk.close()


@needs_qemu
@pytest.mark.parametrize("refcount_bits", [16, 64])
def test_refcount_table_grows(tmp_path: Path, refcount_bits: int) -> None:
    """512-byte clusters: the initial refcount table covers a few MiB, so writes must grow it."""
    img = tmp_path / "small.qcow2"
    size = 48 * MIB
    create(img, str(size), "-o", f"cluster_size=512,refcount_bits={refcount_bits}")
    before = qemu_img("info", "--output=json", str(img)).stdout
    disk = open_disk(str(img), "qcow2")
    assert isinstance(disk, Qcow2Image)
    rt_clusters = disk._rt_clusters
    rng = random.Random(5)
    model = bytearray(size)
    for k in range(0, size, 256 * 1024):  # every other 128 KiB: mixes L2, refcount block, data allocation
        data = rng.randbytes(128 * 1024)
        disk.write(k, data)
        model[k:k + len(data)] = data
    random_io(disk, model, rng, 100)
    assert disk._rt_clusters > rt_clusters, before
    disk.close()
    assert_clean(img)
    assert_same(img, bytes(model), tmp_path)


@needs_qemu
def test_qemu_io_data_read_by_us(tmp_path: Path) -> None:
    for compat in ("1.1", "0.10"):
        img = tmp_path / f"q{compat}.qcow2"
        create(img, "8M", "-o", f"compat={compat}")
        cmds = ["-c", "write -P 0xab 0 1M", "-c", "write -P 0x11 3M 100k"]
        if compat == "1.1":
            cmds += ["-c", "write -z 512k 128k"]  # a v3 zero cluster over allocated data
        subprocess.run(["qemu-io", *cmds, str(img)], check=True, capture_output=True, timeout=60)
        disk = open_disk(str(img), "qcow2", readonly=True)
        expect = bytearray(8 * MIB)
        expect[0:MIB] = b"\xab" * MIB
        expect[3 * MIB:3 * MIB + 100 * 1024] = b"\x11" * (100 * 1024)
        if compat == "1.1":
            expect[512 * 1024:640 * 1024] = bytes(128 * 1024)
        assert disk.read(0, 8 * MIB) == expect
        disk.close()
        # and writing into a zero cluster keeps it consistent for qemu
        disk = open_disk(str(img), "qcow2")
        disk.write(512 * 1024 + 4096, b"\x77" * 4096)
        expect[512 * 1024 + 4096:512 * 1024 + 8192] = b"\x77" * 4096
        disk.close()
        assert_clean(img)
        assert_same(img, bytes(expect), tmp_path)


@needs_qemu
def test_backing_files_raw_and_qcow2(tmp_path: Path) -> None:
    rng = random.Random(11)
    base_data = rng.randbytes(8 * MIB)
    base = tmp_path / "base.raw"
    base.write_bytes(base_data)
    mid = tmp_path / "mid.qcow2"
    create(mid, "8M", "-b", "base.raw", "-F", "raw")  # relative: resolved against the image's directory
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 64k", str(mid)], check=True, capture_output=True)
    top = tmp_path / "top.qcow2"
    create(top, "8M", "-b", str(mid), "-F", "qcow2")
    model = bytearray(base_data)
    model[MIB:MIB + 65536] = b"\x5a" * 65536
    disk = open_disk(str(top), "qcow2")
    assert disk.read(0, 8 * MIB) == model
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(base))  # the chain holds shared locks on its bases
    disk.write(MIB + 512, b"\x01" * 512)  # partial cluster: the rest comes from the backing chain
    model[MIB + 512:MIB + 1024] = b"\x01" * 512
    random_io(disk, model, rng, 200)
    disk.close()
    assert base.read_bytes() == base_data
    assert_clean(top)
    assert_clean(mid)
    assert_same(top, bytes(model), tmp_path)


@needs_qemu
def test_two_overlays_on_one_qcow2_base(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    create(base, "4M")
    subprocess.run(["qemu-io", "-c", "write -P 0x42 0 4M", str(base)], check=True, capture_output=True)
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    for img in (a, b):
        create(img, "4M", "-b", "base.qcow2", "-F", "qcow2")
    da, db = open_disk(str(a), "qcow2"), open_disk(str(b), "qcow2")
    da.write(0, b"\xaa" * 512)
    db.write(512, b"\xbb" * 512)
    assert da.read(0, 1536) == b"\xaa" * 512 + b"\x42" * 1024
    assert db.read(0, 1536) == b"\x42" * 512 + b"\xbb" * 512 + b"\x42" * 512
    da.close()
    db.close()
    assert_clean(a)
    assert_clean(b)


@needs_qemu
def test_compressed_clusters_and_snapshots(tmp_path: Path) -> None:
    src = tmp_path / "src.qcow2"
    create(src, "1M")
    subprocess.run(["qemu-io", "-c", "write -P 0x61 0 1M", str(src)], check=True, capture_output=True)
    comp = tmp_path / "comp.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", str(src), str(comp))
    disk = open_disk(str(comp), "qcow2", readonly=True)
    with pytest.raises(OSError, match="compressed"):
        disk.read(0, 512)
    disk.close()
    qemu_img("snapshot", "-c", "s1", str(src))
    with pytest.raises(ImageError, match="snapshots"):
        open_disk(str(src), "qcow2")
    disk = open_disk(str(src), "qcow2", readonly=True)
    assert disk.read(0, MIB) == b"\x61" * MIB
    disk.close()


def _header_case(tmp_path: Path, good: bytes, name: str, offset: int, value: bytes) -> Path:
    bad = bytearray(good)
    bad[offset:offset + len(value)] = value
    path = tmp_path / f"{name}.qcow2"
    path.write_bytes(bytes(bad))
    return path


@needs_qemu
def test_bad_images_are_one_line_errors(tmp_path: Path) -> None:
    img = tmp_path / "good.qcow2"
    create(img, "16M")
    good = img.read_bytes()
    q = struct.Struct(">Q")
    i = struct.Struct(">I")
    cases = [
        ("magic", 0, b"QFI\x00", "bad magic"),
        ("version", 4, i.pack(4), "version 4"),
        ("cbits-low", 20, i.pack(8), "cluster_bits 8"),
        ("cbits-high", 20, i.pack(22), "cluster_bits 22"),
        ("size", 24, q.pack(1 << 50), "too small"),
        ("crypt", 32, i.pack(1), "encrypted"),
        ("l1-size", 36, i.pack(1 << 30), "L1 table"),
        ("l1-offset", 40, q.pack(1 << 40), "L1 table offset"),
        ("rt-offset", 48, q.pack(1 << 40), "refcount table offset"),
        ("rt-clusters", 56, i.pack(1 << 20), "refcount table size"),
        ("dirty", 72, q.pack(1), "dirty"),
        ("datafile", 72, q.pack(4), "external data file"),
        ("extl2", 72, q.pack(16), "extended L2"),
        ("unknown", 72, q.pack(1 << 40), "bit 40"),
        ("backing", 8, q.pack(65500) + i.pack(100), "backing file name"),
        ("backing-nul", 8, q.pack(65000) + i.pack(100), "backing file name"),
        ("truncated", 0, b"", "bad magic"),
    ]
    for name, offset, value, match in cases:
        path = _header_case(tmp_path, good, name, offset, value)
        if name == "truncated":
            path.write_bytes(good[:40])
        with pytest.raises(ImageError, match=match) as exc:
            open_disk(str(path), "qcow2")
        msg = str(exc.value)
        assert "\n" not in msg and str(path) in msg, (name, msg)
    over = tmp_path / "over.qcow2"
    create(over, "16M", "-b", "gone.raw", "-F", "raw", "-u")
    with pytest.raises(ImageError, match="backing file .*gone.raw does not exist"):
        open_disk(str(over), "qcow2")
    with pytest.raises(ImageError, match="missing.qcow2"):
        open_disk(str(tmp_path / "missing.qcow2"), "qcow2")


@needs_qemu
def test_qcow2_locking(tmp_path: Path) -> None:
    img = tmp_path / "l.qcow2"
    create(img, "1M")
    disk = open_disk(str(img), "qcow2")
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(img), "qcow2", readonly=True)
    disk.close()


def test_non_persistent_qcow2_keeps_image(tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    img = tmp_path / "np.qcow2"
    create(img, "1M")
    before = img.read_bytes()
    disk = open_disk(str(img), "qcow2", persistent=False)
    disk.write(0, b"\x99" * 4096)
    assert disk.read(0, 4096) == b"\x99" * 4096
    disk.close()
    assert img.read_bytes() == before


CHILD = textwrap.dedent("""
    import os, random, sys
    sys.path.insert(0, sys.argv[1])
    from hyperdisco.backends.disk import open_disk
    disk = open_disk(sys.argv[2], "qcow2")
    slot, seed = int(sys.argv[3]), int(sys.argv[4])
    out = os.fdopen(int(sys.argv[5]), "w", buffering=1)
    order = list(range(disk.size // slot))
    random.Random(seed).shuffle(order)
    done = []
    for n, k in enumerate(order):
        disk.write(k * slot, bytes([k % 251 + 1]) * slot)
        done.append(k)
        if n % 5 == 4:
            disk.flush()
            out.write(" ".join(map(str, done)) + "\\n")
            done = []
    disk.flush()
    out.write(" ".join(map(str, done)) + "\\nend\\n")
    """)


@needs_qemu
@pytest.mark.parametrize(("opts", "slot", "seed"), [
    ("cluster_size=65536", 96 * 1024, 1),
    ("cluster_size=512", 3 * 1024, 2),
    ("cluster_size=4096,compat=0.10", 20 * 1024, 3),
])
def test_crash_consistency_sigkill(tmp_path: Path, opts: str, slot: int, seed: int) -> None:
    """A writer killed with SIGKILL: qemu-img check finds at most leaks, every flushed write reads back."""
    img = tmp_path / "crash.qcow2"
    size = 24 * MIB
    create(img, str(size), "-o", opts)
    rng = random.Random(seed)
    rfd, wfd = os.pipe()
    argv = [sys.executable, "-c", CHILD, str(REPO), str(img), str(slot), str(seed), str(wfd)]
    child = subprocess.Popen(argv, pass_fds=(wfd,))
    os.close(wfd)
    flushed: list[int] = []
    reader = os.fdopen(rfd, "r")
    stop_after = rng.randint(5, 40)
    for _ in range(stop_after):
        line = reader.readline()
        if not line or line.strip() == "end":
            break
        flushed.extend(int(x) for x in line.split())
    child.send_signal(signal.SIGKILL)
    child.wait()
    reader.close()
    assert flushed, "the child never flushed"
    assert_clean(img, leaks_ok=True)
    disk = open_disk(str(img), "qcow2", readonly=True)
    for k in range(size // slot):
        got = disk.read(k * slot, slot)
        want = bytes([k % 251 + 1]) * slot
        if k in flushed:
            assert got == want, f"flushed slot {k} lost"
        else:  # unflushed: old or new data per sector, never anything else
            for s in range(0, slot, 512):
                assert got[s:s + 512] in (want[:512], bytes(512)), f"slot {k} sector {s}"
    disk.close()


@needs_qemu
def test_cow_overlay_on_qcow2_base_and_short_backing(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    create(base, "2M")
    subprocess.run(["qemu-io", "-c", "write -P 0x24 0 2M", str(base)], check=True, capture_output=True)
    cow = open_disk(str(tmp_path / "o.cow"), "cow", base=str(base), base_format="qcow2")  # never probed
    cow.write(65536, b"\x01" * 512)
    assert cow.read(65536 - 512, 1536) == b"\x24" * 512 + b"\x01" * 512 + b"\x24" * 512
    cow.close()
    # a backing file shorter than the image: past its end the image reads zeros
    top = tmp_path / "big.qcow2"
    create(top, "4M", "-b", "base.qcow2", "-F", "qcow2")
    disk = open_disk(str(top), "qcow2")
    assert disk.read(2 * MIB - 512, 1024) == b"\x24" * 512 + bytes(512)
    disk.write(2 * MIB - 1024, b"\x07" * 2048)
    disk.close()
    expect = b"\x24" * (2 * MIB - 1024) + b"\x07" * 2048 + bytes(2 * MIB - 1024)
    assert_clean(top)
    assert_same(top, expect, tmp_path)
