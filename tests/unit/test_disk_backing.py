"""Issue 12 item 1: a disk's backing files cannot reach host files. Backing formats are recorded or given,
never probed from (possibly guest-written) data; backing names resolve only inside the allowed
directories; a raw image is never reinterpreted as another format."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hyperdisco.backends.disk import CowImage, HostOpener, open_disk
from hyperdisco.backends.disk.base import BACKING_DIRS_ENV
from hyperdisco.errors import ImageError

MIB = 1 << 20
EXT_BACKING_FORMAT = 0xE2792ACA  # QEMU docs/interop/qcow2.txt, "Header extensions"

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img not installed (apt-get install qemu-utils)")


def qcow2(path: Path, size: str = "1M", backing: str | None = None, backing_fmt: str | None = "raw") -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-u", "-b", backing] + (["-F", backing_fmt] if backing_fmt else [])
    subprocess.run([*args, str(path), size], check=True, capture_output=True)
    return path


def drop_backing_format(path: Path) -> None:
    """Turn the backing-format header extension into an unknown (ignored) one: as an image made by an
    old qemu-img without -F, or by hand."""
    data = bytearray(path.read_bytes()[:65536])
    (header_len,) = struct.unpack_from(">I", data, 100)
    off = header_len
    while True:
        kind, length = struct.unpack_from(">II", data, off)
        assert kind != 0, "no backing format extension"
        if kind == EXT_BACKING_FORMAT:
            with open(path, "r+b") as f:
                f.seek(off)
                f.write(struct.pack(">I", 0x7A7A7A7A))
            return
        off += 8 + (length + 7) // 8 * 8


def refused(match: str, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ImageError, match=match) as exc:
        open_disk(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and "root:" not in msg, msg
    return msg


@pytest.mark.parametrize("name", ["/etc/shadow", "../../../../etc/shadow", "../" * 40 + "etc/shadow",
                                  "sub/../../outside.raw"])
def test_qcow2_backing_file_outside_the_image_tree_is_refused(tmp_path: Path, name: str) -> None:
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    (tmp_path / "outside.raw").write_bytes(bytes(MIB))
    img = qcow2(d / "evil.qcow2", backing=name)
    for readonly in (False, True):
        msg = refused("outside the directories allowed for backing files", str(img), "qcow2",
                      readonly=readonly)
        assert str(img) in msg
    # with its format not recorded it is refused as well (and never probed)
    drop_backing_format(img)
    refused("outside the directories allowed|not recorded", str(img), "qcow2", readonly=True)


def test_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link.raw").symlink_to("/etc/hostname")
    img = qcow2(tmp_path / "top.qcow2", backing="link.raw")
    refused("backing file .*link.raw is outside", str(img), "qcow2")


def test_backing_format_must_be_recorded(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x11" * MIB)
    img = qcow2(tmp_path / "top.qcow2", backing="base.raw")
    disk = open_disk(str(img), "qcow2", readonly=True)
    assert disk.read(0, 512) == b"\x11" * 512
    disk.close()
    drop_backing_format(img)
    msg = refused("format of backing file base.raw is not recorded", str(img), "qcow2")
    assert "qemu-img rebase -u -b base.raw -F raw|qcow2" in msg


def test_backing_files_inside_the_tree_and_allowed_dirs(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    vms = tmp_path / "vms"
    (vms / "bases").mkdir(parents=True)
    shared.mkdir()
    (vms / "bases" / "b.raw").write_bytes(b"\x22" * MIB)
    (shared / "golden.raw").write_bytes(b"\x33" * MIB)
    inside = qcow2(vms / "in.qcow2", backing="bases/b.raw")
    absolute_inside = qcow2(vms / "abs.qcow2", backing=str(vms / "bases" / "b.raw"))
    for img in (inside, absolute_inside):
        disk = open_disk(str(img), "qcow2", readonly=True)
        assert disk.read(0, 512) == b"\x22" * 512
        disk.close()
    sibling = qcow2(vms / "sib.qcow2", backing="../shared/golden.raw")
    refused("outside", str(sibling), "qcow2", readonly=True)
    # the administrator allows another directory: as an opener parameter...
    disk = open_disk(str(sibling), "qcow2", readonly=True, opener=HostOpener(backing_dirs=[str(shared)]))
    assert disk.read(0, 512) == b"\x33" * 512
    disk.close()
    # ...or in the environment
    monkeypatch.setenv(BACKING_DIRS_ENV, os.pathsep.join(["/nonexistent", str(shared)]))
    disk = open_disk(str(sibling), "qcow2", readonly=True)
    assert disk.read(0, 512) == b"\x33" * 512
    disk.close()
    # an allowed directory is a tree, not a prefix of names
    (tmp_path / "shared-not").mkdir()
    (tmp_path / "shared-not" / "x.raw").write_bytes(bytes(MIB))
    refused("outside", str(qcow2(vms / "px.qcow2", backing="../shared-not/x.raw")), "qcow2", readonly=True)


def test_a_raw_image_with_a_qcow2_header_stays_raw(tmp_path: Path) -> None:
    """A guest writes a qcow2 header (backing file /etc/shadow) into its raw disk: opened as raw (or as a
    cow overlay's base) it is that guest's bytes, never a qcow2 image."""
    evil = qcow2(tmp_path / "scratch.qcow2", backing="/etc/shadow")
    header = evil.read_bytes()
    disk_path = tmp_path / "guest.raw"
    disk_path.write_bytes(bytes(4 * MIB))
    disk = open_disk(str(disk_path), "raw")
    disk.write(0, header[:65536])  # what the guest did, through its disk
    disk.close()
    for persistent in (True, False):
        disk = open_disk(str(disk_path), "raw", persistent=persistent)
        assert disk.size == 4 * MIB
        assert disk.read(0, 65536) == header[:65536]
        disk.close()
    # block-attach ... format=cow, base=<that disk>: the base is raw unless the administrator says otherwise
    for kwargs in ({}, {"base_format": "raw"}):
        cow = open_disk(str(tmp_path / f"o{len(kwargs)}.cow"), "cow", base=str(disk_path), **kwargs)
        assert cow.size == 4 * MIB
        assert cow.read(0, 65536) == header[:65536]
        cow.close()
        cow = open_disk(str(tmp_path / f"o{len(kwargs)}.cow"), "cow")  # reopened: the header says raw
        assert cow.read(0, 512) == header[:512]
        cow.close()
    scratch = open_disk(str(tmp_path / "np.cow"), "cow", persistent=False, base=str(disk_path))
    assert scratch.read(0, 512) == header[:512]
    scratch.close()
    # told it is a qcow2, the backing file policy still applies
    refused("outside", str(tmp_path / "q.cow"), "cow", base=str(disk_path), base_format="qcow2")


def test_cow_base_format_is_recorded_and_checked(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qcow2(base, "2M")
    b = open_disk(str(base), "qcow2")
    b.write(0, b"\x44" * 65536)
    b.close()
    overlay = tmp_path / "o.cow"
    disk = open_disk(str(overlay), "cow", base=str(base), base_format="qcow2")
    assert disk.read(0, 512) == b"\x44" * 512  # read through qcow2, as the user said
    disk.close()
    disk = open_disk(str(overlay), "cow")  # the header recorded qcow2
    assert disk.size == 2 * MIB and disk.read(0, 512) == b"\x44" * 512
    disk.close()
    refused("overlay records base format qcow2, not raw", str(overlay), "cow", base_format="raw")
    refused("unknown base format", str(tmp_path / "x.cow"), "cow", base=str(base), base_format="vmdk")


def test_cow_overlay_without_recorded_format_reads_its_base_as_raw(tmp_path: Path) -> None:
    made = qcow2(tmp_path / "made.qcow2", "1M")
    base = tmp_path / "base.img"  # raw, holding a qcow2 image's bytes
    base.write_bytes(made.read_bytes().ljust(MIB, b"\0"))
    overlay = tmp_path / "old.cow"
    CowImage.create(str(overlay), str(base), "", base.stat().st_size)  # as an overlay recording no format
    disk = open_disk(str(overlay), "cow", readonly=True)
    assert disk.read(0, 512) == base.read_bytes()[:512]  # the qcow2 file's own bytes
    disk.close()


def test_cow_header_base_outside_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bases, vms = tmp_path / "bases", tmp_path / "vms"
    bases.mkdir()
    vms.mkdir()
    base = bases / "golden.raw"
    data = random.Random(5).randbytes(MIB)
    base.write_bytes(data)
    overlay = vms / "web.cow"
    disk = open_disk(str(overlay), "cow", base=str(base))  # named by the administrator: fine
    disk.write(0, b"\x01" * 512)
    disk.close()
    refused("backing file .*golden.raw is outside", str(overlay), "cow")  # named by the header only
    disk = open_disk(str(overlay), "cow", base=str(base))  # named again by the administrator
    assert disk.read(0, 1024) == b"\x01" * 512 + data[512:1024]
    disk.close()
    refused("belongs to base", str(overlay), "cow", base=str(vms / "other.raw"))
    monkeypatch.setenv(BACKING_DIRS_ENV, str(bases))
    open_disk(str(overlay), "cow").close()
