"""The FileOpener seam: every host file of a disk's chain is opened through one opener, recorded
descriptors can be handed on (as to another process) and served there, and nothing else is."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from hyperdisco.backends.disk import HandedOpener, HostOpener, RecordingOpener, open_disk
from hyperdisco.errors import ImageError

MIB = 1 << 20

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img not installed (apt-get install qemu-utils)")


def sent(rec: RecordingOpener) -> HandedOpener:
    """A HandedOpener over copies of the recorded descriptors, as SCM_RIGHTS delivers them to another
    process (new descriptors for the same open file descriptions)."""
    return HandedOpener([(r.kind, r.path, r.readonly, os.dup(r.fd)) for r in rec.records])


def _locked(path: Path, exclusive: bool) -> bool:
    """Whether someone else holds a lock on ``path`` that conflicts with the one asked for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@needs_qemu_img
def test_qcow2_chain_recorded_then_handed(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base_data = random.Random(1).randbytes(2 * MIB)
    base.write_bytes(base_data)
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(top)],
                   check=True)
    rec = RecordingOpener(HostOpener())
    disk = open_disk(str(top), "qcow2", opener=rec)
    disk.write(MIB, b"\x5a" * 4096)
    expect = disk.read(0, disk.size)
    assert expect == base_data[:MIB] + b"\x5a" * 4096 + base_data[MIB + 4096:]
    disk.close()
    opened = {(r.kind, r.path, r.readonly) for r in rec.records}
    assert ("open", str(top), False) in opened
    assert ("open", str(tmp_path / "base.raw"), True) in opened
    # the image is closed, but the recorded descriptors still hold its locks (nobody unlocked them)
    assert _locked(top, exclusive=False) and _locked(base, exclusive=True)
    assert not _locked(base, exclusive=False)

    handed = sent(rec)
    again = open_disk(str(top), "qcow2", opener=handed)
    assert again.read(0, again.size) == expect
    again.write(0, b"\x01" * 512)
    again.close()
    handed.close()
    rec.close()
    assert not _locked(top, exclusive=True)  # the last descriptor closed: the lock is gone
    check = open_disk(str(top), "qcow2", readonly=True)
    assert check.read(0, 1024) == b"\x01" * 512 + base_data[512:1024]
    check.close()


def test_cow_overlay_and_temporary_recorded_then_handed(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    data = random.Random(2).randbytes(MIB)
    base.write_bytes(data)
    overlay = tmp_path / "o.cow"
    fds_before = len(os.listdir("/proc/self/fd"))
    rec = RecordingOpener()
    disk = open_disk(str(overlay), "cow", base=str(base), opener=rec)  # creates the overlay
    disk.write(65536, b"\xcc" * 512)
    disk.close()
    scratch = open_disk(str(base), "raw", persistent=False, opener=rec)  # a temporary overlay
    scratch.close()
    kinds = [r.kind for r in rec.records]
    assert kinds.count("temporary") == 1
    assert not any(".tmp" in r.path for r in rec.records)  # the overlay's scratch creation name is not kept

    handed = sent(rec)
    again = open_disk(str(overlay), "cow", base=str(base), opener=handed)
    assert again.read(65536 - 512, 1536) == data[65024:65536] + b"\xcc" * 512 + data[66048:66560]
    again.close()
    temp = open_disk(str(base), "raw", persistent=False, opener=handed)
    temp.write(0, b"\x77" * 512)
    assert temp.read(0, 1024) == b"\x77" * 512 + data[512:1024]
    temp.close()
    with pytest.raises(ImageError, match="temporary overlay not handed"):  # each temporary serves once
        open_disk(str(base), "raw", persistent=False, opener=handed)
    handed.close()
    rec.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before  # every descriptor closed exactly once
    assert base.read_bytes() == data


def test_handed_opener_refuses_anything_else(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(MIB))
    other = tmp_path / "other.img"
    other.write_bytes(bytes(MIB))
    rec = RecordingOpener()
    open_disk(str(img), readonly=True, opener=rec).close()
    handed = sent(rec)
    for call in (lambda: open_disk(str(other), opener=handed),
                 lambda: open_disk(str(img), opener=handed),  # handed read-only, asked read-write
                 lambda: open_disk(str(tmp_path / "new.cow"), "cow", base=str(img), opener=handed)):
        with pytest.raises(ImageError, match="not handed to this domain") as exc:
            call()
        assert "\n" not in str(exc.value)
    open_disk(str(img), readonly=True, opener=handed).close()
    assert not (tmp_path / "new.cow").exists()
    handed.close()
    rec.close()


def test_close_never_unlocks_a_shared_description(tmp_path: Path) -> None:
    """Another holder of the same open file description (a dup, as sent over SCM_RIGHTS) keeps the lock
    after the image is closed."""
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(MIB))
    rec = RecordingOpener()
    disk = open_disk(str(img), opener=rec)
    disk.write(0, b"\x01" * 512)
    disk.close()
    with pytest.raises(ImageError, match="in use by another domain"):
        open_disk(str(img))
    rec.close()
    open_disk(str(img)).close()
