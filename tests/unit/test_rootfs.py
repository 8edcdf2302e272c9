"""build_rootfs: an ext4 image with busybox, its applets, /sbin/init, the guest scripts and device nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hyperdisco.errors import ImageError
from hyperdisco.images import debian, rootfs
from hyperdisco.images.cache import cache_dir
from hyperdisco.images.initramfs import guest_file

needs_e2fs = pytest.mark.skipif(
    shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")) is None,
    reason="e2fsprogs not installed (apt-get install e2fsprogs)")


def debugfs(image: Path, command: str) -> str:
    proc = subprocess.run(["debugfs", "-R", command, str(image)], capture_output=True, text=True, check=True)
    return proc.stdout


def fake_busybox(tmp_path: Path) -> Path:
    """Any host executable: `--list` prints nothing, so the builder falls back to its applet list."""
    fake = tmp_path / "busybox"
    shutil.copyfile("/bin/true", fake)
    fake.chmod(0o755)
    return fake


def check_image(image: Path, busybox: Path) -> None:
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    listing = debugfs(image, "ls -l /bin")
    for name in ("busybox", "sh", "mount", "poweroff"):
        assert f" {name}" in listing, name
    init = debugfs(image, "stat /sbin/init")  # /sbin -> bin, init -> busybox
    assert "Type: symlink" in init and 'Fast link dest: "busybox"' in init
    sbin = debugfs(image, "stat /sbin")
    assert "Type: symlink" in sbin and 'Fast link dest: "bin"' in sbin  # so /sbin/poweroff exists too
    assert debugfs(image, "cat /etc/inittab").encode() == guest_file("inittab")
    assert debugfs(image, "cat /etc/rc").encode() == guest_file("rc")
    console = debugfs(image, "stat /dev/console")
    assert "character special" in console and "Mode:  0600" in console and "User:     0" in console
    assert "Mode:  01777" in debugfs(image, "stat /tmp")
    for d in ("proc", "sys", "tmp", "root", "etc", "dev"):
        assert "Type: directory" in debugfs(image, f"stat /{d}"), d
    out = image.parent / "busybox.copy"
    subprocess.run(["debugfs", "-R", f"dump /bin/busybox {out}", str(image)], capture_output=True, check=True)
    assert out.read_bytes() == busybox.read_bytes()


@needs_e2fs
def test_build_rootfs_with_fake_busybox(tmp_path: Path) -> None:
    busybox = fake_busybox(tmp_path)
    out = tmp_path / "root.img"
    said: list[str] = []
    assert rootfs.build_rootfs(out, 16, said.append, busybox=busybox) == out
    assert out.stat().st_size == 16 << 20
    assert said
    check_image(out, busybox)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left over


@needs_e2fs
def test_build_rootfs_as_user_owns_files_by_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)  # the builder then chowns every inode with debugfs
    out = tmp_path / "root.img"
    rootfs.build_rootfs(out, 16, busybox=fake_busybox(tmp_path))
    for path in ("/bin/busybox", "/bin/sh", "/etc/rc", "/sbin/init", "/"):
        st = debugfs(out, f"stat {path}")
        assert "User:     0   Group:     0" in st, path


@needs_e2fs
def test_build_rootfs_with_cached_default_busybox(tmp_path: Path) -> None:
    busybox = cache_dir() / debian.BUSYBOX_PACKAGE / "bin" / "busybox"
    if not busybox.is_file():
        pytest.skip("the default guest's busybox is not cached (hyperdisco images fetch)")
    out = tmp_path / "root.img"
    rootfs.build_rootfs(out)  # finds busybox through ensure_default_images()
    check_image(out, busybox)


def test_missing_mkfs_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs.shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(ImageError, match="apt-get install e2fsprogs") as exc:
        rootfs.build_rootfs(tmp_path / "root.img", busybox=tmp_path / "busybox")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "root.img").exists()


@needs_e2fs
def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="size"):
        rootfs.build_rootfs(tmp_path / "r.img", 1, busybox=fake_busybox(tmp_path))
    notelf = tmp_path / "notelf"
    notelf.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(ImageError, match="not a busybox executable"):
        rootfs.build_rootfs(tmp_path / "r.img", busybox=notelf)
    with pytest.raises(ImageError, match="cannot read busybox"):
        rootfs.build_rootfs(tmp_path / "r.img", busybox=tmp_path / "missing")
    # too small for the tree: mkfs fails, nothing is left behind and an existing image is untouched
    out = tmp_path / "keep.img"
    out.write_bytes(b"old")
    big = tmp_path / "bigbox"
    big.write_bytes(b"\x7fELF" + os.urandom(12 << 20))
    with pytest.raises(ImageError, match="mkfs.ext4 failed"):
        rootfs.build_rootfs(out, 8, busybox=big)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
