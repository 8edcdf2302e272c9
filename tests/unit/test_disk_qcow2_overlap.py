"""Issue 12 item 9: qcow2 metadata overlaps. Crafted images (qemu-img create, then bytes patched with
struct, offsets from QEMU's docs/interop/qcow2.txt) whose L1/L2 entries point at metadata, outside the
file or at one cluster twice are refused; guest data never lands on metadata; a corruption found while
serving I/O fails that disk alone, in one line."""

from __future__ import annotations

import errno
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hyperdisco.backends.disk import open_disk
from hyperdisco.backends.disk.base import CorruptImage
from hyperdisco.errors import ImageError

MIB = 1 << 20
CS = 65536
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
COPIED = 1 << 63
INCOMPAT_CORRUPT = 1 << 1

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="qemu-img/qemu-io not installed (apt-get install qemu-utils)")


class Layout:
    """Where qemu-img put things (header fields at the offsets qcow2.txt gives)."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        self.path = path
        (self.l1_size,) = struct.unpack_from(">I", data, 36)
        self.l1_off, self.rt_off = struct.unpack_from(">QQ", data, 40)
        self.nb_snapshots, self.snap_off = struct.unpack_from(">IQ", data, 60)
        (self.incompat,) = struct.unpack_from(">Q", data, 72)
        self.l1 = list(struct.unpack_from(f">{self.l1_size}Q", data, self.l1_off))
        (rt0,) = struct.unpack_from(">Q", data, self.rt_off)
        self.refblock = rt0 & ~0x1FF
        self.l2_off = self.l1[0] & OFFSET_MASK

    def l2_entry(self, index: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.l2_off + 8 * index)
            return int(struct.unpack(">Q", f.read(8))[0])

    def poke(self, offset: int, fmt: str, *values: int) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(struct.pack(fmt, *values))

    def set_l2(self, index: int, host: int) -> None:
        self.poke(self.l2_off + 8 * index, ">Q", host | COPIED)


def make(tmp_path: Path, name: str = "d.qcow2", size: str = "64M", clusters: int = 2) -> Layout:
    """An image whose first ``clusters`` guest clusters are written (0x11, 0x12, ...)."""
    path = tmp_path / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    for i in range(clusters):
        subprocess.run(["qemu-io", "-c", f"write -P {0x11 + i} {i * CS} {CS}", str(path)], check=True,
                       capture_output=True)
    return Layout(path)


def one_line(exc: BaseException, *words: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and msg.startswith("hyperdisco: "), msg
    for w in words:
        assert w in msg, msg


def refused_rw(layout: Layout, *words: str) -> None:
    with pytest.raises(ImageError) as exc:
        open_disk(str(layout.path), "qcow2")
    one_line(exc.value, str(layout.path), "corrupt qcow2 image", *words)


@pytest.mark.parametrize(("target", "kind"), [
    ("l1", "active L1 table"), ("rt", "refcount table"), ("rb", "refcount block"), ("l2", "active L2 table"),
])
def test_l2_entry_pointing_at_metadata(tmp_path: Path, target: str, kind: str) -> None:
    lay = make(tmp_path)
    host = {"l1": lay.l1_off, "rt": lay.rt_off, "rb": lay.refblock, "l2": lay.l2_off}[target]
    lay.set_l2(1, host)
    refused_rw(lay, f"onto the {kind}")
    before = lay.path.read_bytes()
    # read-only: the image opens, the cluster that maps onto metadata fails, and so does the disk after it
    disk = open_disk(str(lay.path), "qcow2", readonly=True)
    with pytest.raises(OSError) as exc:
        disk.read(CS, 512)
    assert isinstance(exc.value, CorruptImage) and exc.value.errno == errno.EIO
    one_line(exc.value, "corrupt qcow2 image", f"maps onto the {kind}", "disk is stopped")
    with pytest.raises(CorruptImage):
        disk.read(0, 512)
    disk.close()
    assert lay.path.read_bytes() == before  # a read-only image is never marked


def test_l2_entry_beyond_the_file_or_unaligned(tmp_path: Path) -> None:
    lay = make(tmp_path)
    lay.set_l2(1, 1 << 40)
    refused_rw(lay, "beyond the file")
    lay.set_l2(1, lay.l2_entry(0) & OFFSET_MASK | 0x200)  # cluster-unaligned (64 KiB clusters)
    refused_rw(lay, "unaligned")


def test_data_cluster_mapped_twice(tmp_path: Path) -> None:
    lay = make(tmp_path)
    lay.set_l2(5, lay.l2_entry(0) & OFFSET_MASK)  # guest clusters 0 and 5 share one host cluster
    refused_rw(lay, "mapped twice")
    disk = open_disk(str(lay.path), "qcow2", readonly=True)  # reading aliases harms nothing
    assert disk.read(5 * CS, 512) == b"\x11" * 512
    disk.close()


def test_mapped_cluster_with_refcount_zero(tmp_path: Path) -> None:
    lay = make(tmp_path)
    data = lay.l2_entry(1) & OFFSET_MASK
    lay.poke(lay.refblock + 2 * (data // CS), ">H", 0)  # 16-bit refcounts (the default)
    refused_rw(lay, f"cluster {data:#x} is in use but its refcount is 0")


def test_l1_entries_pointing_at_metadata_or_sharing_an_l2_table(tmp_path: Path) -> None:
    lay = make(tmp_path, size="1G")  # two L1 entries
    assert lay.l1_size == 2
    lay.poke(lay.l1_off + 8, ">Q", lay.l1[0])
    for readonly in (False, True):
        with pytest.raises(ImageError) as exc:
            open_disk(str(lay.path), "qcow2", readonly=readonly)
        one_line(exc.value, "L1 entry 1", "overlaps the active L2 table")
    lay.poke(lay.l1_off + 8, ">Q", lay.rt_off | COPIED)
    with pytest.raises(ImageError) as exc:
        open_disk(str(lay.path), "qcow2", readonly=True)
    one_line(exc.value, "L1 entry 1", "overlaps the refcount table")
    lay.poke(lay.l1_off + 8, ">Q", 0)
    lay.poke(lay.rt_off, ">Q", lay.l1_off)  # the refcount block is the L1 table
    with pytest.raises(ImageError) as exc:
        open_disk(str(lay.path), "qcow2", readonly=True)
    one_line(exc.value, "refcount block 0", "overlaps the active L1 table")


def test_header_tables_overlapping(tmp_path: Path) -> None:
    lay = make(tmp_path, clusters=0)
    lay.poke(40, ">Q", lay.rt_off)  # l1_table_offset = refcount_table_offset
    with pytest.raises(ImageError) as exc:
        open_disk(str(lay.path), "qcow2", readonly=True)
    one_line(exc.value, "refcount table", "overlaps the active L1 table")


def test_snapshot_tables(tmp_path: Path) -> None:
    lay = make(tmp_path)
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(lay.path)], check=True)
    lay = Layout(lay.path)
    assert lay.nb_snapshots == 1
    disk = open_disk(str(lay.path), "qcow2", readonly=True)  # a good snapshot table is fine
    assert disk.read(CS, 512) == b"\x12" * 512
    disk.close()
    lay.set_l2(1, lay.snap_off)
    disk = open_disk(str(lay.path), "qcow2", readonly=True)
    with pytest.raises(CorruptImage) as exc:
        disk.read(CS, 512)
    one_line(exc.value, "onto the snapshot table")
    disk.close()
    lay.set_l2(1, 0)
    lay.poke(lay.snap_off, ">Q", lay.rt_off)  # the snapshot's L1 table is the refcount table
    with pytest.raises(ImageError) as exc:
        open_disk(str(lay.path), "qcow2", readonly=True)
    one_line(exc.value, "inactive L1 table", "overlaps the refcount table")


def test_guest_write_never_lands_on_metadata(tmp_path: Path) -> None:
    """The pre-write overlap check: an L2 entry changed behind our back (the image is locked, but another
    tool ignoring locks could) must not let a guest write overwrite the L1 table."""
    lay = make(tmp_path)
    other = make(tmp_path, "other.qcow2")
    disk = open_disk(str(lay.path), "qcow2")  # every L2 table checked here
    bystander = open_disk(str(other.path), "qcow2")
    l1_before = lay.path.read_bytes()[lay.l1_off:lay.l1_off + CS]
    lay.set_l2(1, lay.l1_off)
    with pytest.raises(OSError) as exc:
        disk.write(CS, b"\xee" * CS)
    assert isinstance(exc.value, CorruptImage) and exc.value.errno == errno.EIO
    one_line(exc.value, "would overwrite the active L1 table")
    assert lay.path.read_bytes()[lay.l1_off:lay.l1_off + CS] == l1_before
    with pytest.raises(CorruptImage):  # the disk is stopped...
        disk.write(0, b"\x01" * 512)
    with pytest.raises(CorruptImage):
        disk.flush()
    disk.close()
    bystander.write(0, b"\x02" * 512)  # ...and only that disk
    assert bystander.read(0, 1024) == b"\x02" * 512 + b"\x11" * 512
    bystander.close()
    assert Layout(lay.path).incompat & INCOMPAT_CORRUPT  # marked corrupt, as QEMU does
    with pytest.raises(ImageError, match="marked corrupt"):
        open_disk(str(lay.path), "qcow2")


def test_good_images_still_pass(tmp_path: Path) -> None:
    """Growth of the refcount table and new L2 tables keep the metadata map right: qemu-img check is
    clean after many allocations, and the image reopens for writing."""
    path = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", str(path), "8M"],
                   check=True)
    disk = open_disk(str(path), "qcow2")
    for i in range(0, 8 * MIB, 4096):
        disk.write(i, bytes([i // 4096 % 250 + 1]) * 512)
    disk.close()
    proc = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    disk = open_disk(str(path), "qcow2")
    assert disk.read(8 * MIB - 4096, 512) == bytes([2047 % 250 + 1]) * 512
    disk.close()
