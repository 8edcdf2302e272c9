"""Raw disk images: random I/O against an in-memory model, flush, discard, locking, bad input."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from hyperdisco.backends.disk import DiskImage, open_disk
from hyperdisco.errors import ImageError

MIB = 1 << 20


def random_io(disk: DiskImage, model: bytearray, rng: random.Random, ops: int,
              max_sectors: int = 300) -> None:
    """Random aligned writes and reads, each read checked against ``model`` (updated by the writes)."""
    sectors = disk.size // 512
    for _ in range(ops):
        n = rng.randint(1, min(max_sectors, sectors))
        off = rng.randrange(0, sectors - n + 1) * 512
        if rng.random() < 0.5:
            data = rng.randbytes(n * 512) if rng.random() < 0.7 else bytes([rng.randrange(256)]) * (n * 512)
            disk.write(off, data)
            model[off:off + len(data)] = data
        else:
            assert disk.read(off, n * 512) == model[off:off + n * 512], f"read {off}+{n * 512}"
    assert disk.read(0, disk.size) == model


def test_raw_random_io_matches_model(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    rng = random.Random(1)
    initial = rng.randbytes(4 * MIB)
    path.write_bytes(initial)
    model = bytearray(initial)
    disk = open_disk(str(path))
    assert disk.size == 4 * MIB and not disk.readonly
    random_io(disk, model, rng, 300)
    disk.flush()
    disk.close()
    assert path.read_bytes() == model


def test_raw_partial_last_sector_reads_zeros(tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"\x11" * 1000)
    disk = open_disk(str(path), readonly=True)
    assert disk.size == 1024
    assert disk.read(512, 512) == b"\x11" * 488 + bytes(24)
    disk.close()


def test_raw_discard_punches_or_keeps_size(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xaa" * MIB)
    disk = open_disk(str(path))
    disk.discard(64 * 1024, 256 * 1024)
    data = disk.read(64 * 1024, 256 * 1024)
    # PUNCH_HOLE reads back zeros; a host without it leaves the data (discard is advisory)
    assert data in (bytes(256 * 1024), b"\xaa" * 256 * 1024)
    assert disk.read(0, 64 * 1024) == b"\xaa" * 64 * 1024
    disk.close()
    assert os.path.getsize(path) == MIB


def test_raw_readonly_and_bad_requests(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(MIB))
    disk = open_disk(str(path), readonly=True)
    with pytest.raises(OSError):
        disk.write(0, bytes(512))
    with pytest.raises(ValueError):
        disk.read(1, 512)
    with pytest.raises(ValueError):
        disk.read(MIB - 512, 1024)
    disk.close()


def test_locking(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(MIB))
    writer = open_disk(str(path))
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(path))
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(path), readonly=True)
    writer.close()
    r1 = open_disk(str(path), readonly=True)
    r2 = open_disk(str(path), readonly=True)  # readers share
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(path))
    r1.close()
    r2.close()
    open_disk(str(path)).close()


def test_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    with pytest.raises(ImageError) as exc:
        open_disk(str(missing))
    assert str(missing) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ImageError, match="unknown disk format"):
        open_disk(str(missing), format="vmdk")


def test_non_persistent_raw_leaves_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\x01" * MIB)
    disk = open_disk(str(path), persistent=False)
    disk.write(4096, b"\x02" * 8192)
    assert disk.read(0, 16384) == b"\x01" * 4096 + b"\x02" * 8192 + b"\x01" * 4096
    disk.flush()
    disk.close()
    assert path.read_bytes() == b"\x01" * MIB
    assert sorted(os.listdir(tmp_path)) == ["disk.img"]
