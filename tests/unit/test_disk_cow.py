"""hyperdisco's cow overlay: model-checked random I/O, isolation, persistence, crash safety, bad input."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest
from test_disk_raw import random_io

from hyperdisco.backends.disk import CowImage, open_disk
from hyperdisco.errors import ImageError

MIB = 1 << 20


def make_base(tmp_path: Path, size: int = 4 * MIB, seed: int = 7) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    base = tmp_path / "base.img"
    base.write_bytes(data)
    return base, data


def test_cow_random_io_and_reopen(tmp_path: Path) -> None:
    base, data = make_base(tmp_path)
    overlay = tmp_path / "overlay.cow"
    model = bytearray(data)
    disk = open_disk(str(overlay), "cow", base=str(base))
    assert disk.size == len(data)
    random_io(disk, model, random.Random(2), 400)
    disk.close()
    assert base.read_bytes() == data  # the base never changes
    disk = open_disk(str(overlay), "cow")  # the base comes from the header
    assert disk.read(0, disk.size) == model
    random_io(disk, model, random.Random(3), 100)
    disk.flush()
    disk.close()
    ro = open_disk(str(overlay), "cow", readonly=True)
    assert ro.read(0, ro.size) == model
    with pytest.raises(OSError):
        ro.write(0, bytes(512))
    ro.close()


def test_cow_partial_cluster_write_copies_base(tmp_path: Path) -> None:
    base, data = make_base(tmp_path, MIB)
    disk = open_disk(str(tmp_path / "o.cow"), "cow", base=str(base))
    disk.write(65536 + 1024, b"\xee" * 512)
    assert disk.read(65536, 65536) == data[65536:66560] + b"\xee" * 512 + data[67072:131072]
    disk.close()


def test_two_overlays_are_isolated(tmp_path: Path) -> None:
    base, data = make_base(tmp_path)
    a = open_disk(str(tmp_path / "a.cow"), "cow", base=str(base))
    b = open_disk(str(tmp_path / "b.cow"), "cow", base=str(base))
    a.write(0, b"\xaa" * 4096)
    b.write(4096, b"\xbb" * 4096)
    assert a.read(0, 8192) == b"\xaa" * 4096 + data[4096:8192]
    assert b.read(0, 8192) == data[:4096] + b"\xbb" * 4096
    # the base is shared read-only: nobody can open it for writing meanwhile
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(base))
    a.close()
    b.close()
    assert base.read_bytes() == data


def test_non_persistent_overlay_is_gone_after_close(tmp_path: Path) -> None:
    base, data = make_base(tmp_path)
    disk = open_disk(str(tmp_path / "scratch.cow"), "cow", persistent=False, base=str(base))
    disk.write(0, b"\x55" * 65536)
    disk.flush()
    assert disk.read(0, 65536) == b"\x55" * 65536
    disk.close()
    assert sorted(os.listdir(tmp_path)) == ["base.img"]
    assert base.read_bytes() == data


def test_cow_over_base_with_unaligned_size(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    base.write_bytes(b"\x33" * (100 * 1024))  # not a multiple of the 64 KiB cluster
    disk = open_disk(str(tmp_path / "o.cow"), "cow", base=str(base))
    disk.write(96 * 1024, b"\x44" * 2048)
    assert disk.read(64 * 1024, 36 * 1024) == b"\x33" * 32768 + b"\x44" * 2048 + b"\x33" * 2048
    disk.close()


def test_unflushed_allocations_never_corrupt(tmp_path: Path) -> None:
    """A crash before flush: the table on disk only points at clusters whose data was written."""
    base, data = make_base(tmp_path)
    overlay = tmp_path / "o.cow"
    disk = open_disk(str(overlay), "cow", base=str(base))
    assert isinstance(disk, CowImage)
    disk.write(0, b"\x01" * 65536)
    disk.flush()
    disk.write(65536, b"\x02" * 65536)  # allocated but not flushed: simulate a crash by dropping the fd
    os.close(disk._fd)
    disk._fd = -1
    disk.base.close()
    disk = open_disk(str(overlay), "cow")
    assert disk.read(0, 65536) == b"\x01" * 65536
    assert disk.read(65536, 65536) == data[65536:131072]  # the leaked cluster is simply unused
    disk.write(65536, b"\x03" * 512)
    disk.close()
    disk = open_disk(str(overlay), "cow")
    assert disk.read(65536, 1024) == b"\x03" * 512 + data[66048:66560]
    disk.close()


def test_cow_locking(tmp_path: Path) -> None:
    base, _ = make_base(tmp_path)
    overlay = tmp_path / "o.cow"
    disk = open_disk(str(overlay), "cow", base=str(base))
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(overlay), "cow")
    disk.close()


def test_cow_bad_input(tmp_path: Path) -> None:
    base, _ = make_base(tmp_path)
    with pytest.raises(ImageError, match="needs a base"):
        open_disk(str(tmp_path / "new.cow"), "cow")
    with pytest.raises(ImageError, match="missing.img"):
        open_disk(str(tmp_path / "new.cow"), "cow", base=str(tmp_path / "missing.img"))
    overlay = tmp_path / "o.cow"
    open_disk(str(overlay), "cow", base=str(base)).close()
    with pytest.raises(ImageError, match="belongs to base"):
        open_disk(str(overlay), "cow", base=str(overlay))
    good = overlay.read_bytes()

    def corrupt(offset: int, value: bytes, match: str) -> None:
        bad = bytearray(good)
        bad[offset:offset + len(value)] = value
        overlay.write_bytes(bytes(bad))
        with pytest.raises(ImageError, match=match) as exc:
            open_disk(str(overlay), "cow")
        assert "\n" not in str(exc.value) and str(overlay) in str(exc.value)

    corrupt(0, b"XXXXXXXX", "bad magic")
    corrupt(8, struct.pack("<I", 9), "version 9")
    corrupt(16, struct.pack("<Q", 1 << 40), "checksum")
    overlay.write_bytes(good)
    os.rename(base, tmp_path / "moved.img")
    with pytest.raises(ImageError, match="base image .*base.img does not exist"):
        open_disk(str(overlay), "cow")


def test_cow_table_entries_mapping_one_cluster_twice(tmp_path: Path) -> None:
    base, _ = make_base(tmp_path)
    overlay = tmp_path / "o.cow"
    disk = open_disk(str(overlay), "cow", base=str(base))
    disk.write(0, b"\x01" * 65536)
    disk.close()
    raw = bytearray(overlay.read_bytes())
    raw[4096 + 8:4096 + 16] = raw[4096:4104]  # guest cluster 1 -> guest cluster 0's data
    overlay.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match="which another cluster maps to as well") as exc:
        open_disk(str(overlay), "cow")
    assert "\n" not in str(exc.value)
