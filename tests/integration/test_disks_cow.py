"""Copy-on-write disks end to end (issue 4): one read-only base under several domains, each with its own
overlay, booted from it as root=/dev/xvda through blkback; persistent overlays keep the domain's writes
across destroy+create, the base never changes.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hyperdisco.backends.disk import open_disk
from hyperdisco.backends.disk.cow import CowImage

from .conftest import Xl, domain_cfg

pytestmark = pytest.mark.slow

MKFS = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
DEBUGFS = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
needs_e2fsprogs = pytest.mark.skipif(MKFS is None or DEBUGFS is None, reason="e2fsprogs not installed")


def root_cfg(tmp_path: Path, name: str, disk: str) -> str:
    return domain_cfg(tmp_path, name, f"disk = [ '{disk}' ]", 'root = "/dev/xvda rw"',
                      'extra = "console=hvc0"')


def text(r: subprocess.CompletedProcess[str]) -> str:
    """The command's output without the kernel's console messages interleaved."""
    return "\n".join(ln for ln in r.stdout.splitlines() if not re.match(r"\s*\[\s*\d+\.\d+\]", ln))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def base_image(path: Path) -> Path:
    from hyperdisco.images.rootfs import build_rootfs

    build_rootfs(path, 64)
    return path


def flatten(image: Path, fmt: str, out: Path) -> Path:
    """What the guest sees on ``image``, as a raw file (read through hyperdisco's own image code)."""
    disk = open_disk(str(image), fmt, readonly=True)
    try:
        with open(out, "wb") as f:
            for off in range(0, disk.size, 1 << 20):
                f.write(disk.read(off, min(1 << 20, disk.size - off)))
    finally:
        disk.close()
    return out


def host_cat(raw_ext4: Path, name: str) -> str | None:
    """The file's text inside an ext4 image, None when it is not there."""
    assert DEBUGFS is not None
    r = subprocess.run([DEBUGFS, "-R", f"stat {name}", str(raw_ext4)], capture_output=True, text=True)
    if "File not found" in r.stderr or "Inode:" not in r.stdout:
        return None
    return subprocess.run([DEBUGFS, "-R", f"cat {name}", str(raw_ext4)], capture_output=True,
                          text=True).stdout


def boot_and_check_root(xl: Xl, name: str) -> None:
    r = xl("exec", name, "mount | grep ' on / '")
    assert "/dev/xvda on / type ext4" in r.stdout, r.stdout


@needs_e2fsprogs
def test_two_domains_share_a_base_with_separate_overlays(xl: Xl, tmp_path: Path) -> None:
    base = base_image(tmp_path / "base.img")
    before = sha256(base)
    overlays = {}
    for dom in ("cowa", "cowb"):
        # a persistent overlay made on the host (the test below has xl.cfg create one)
        overlays[dom] = tmp_path / f"{dom}.cow"
        CowImage.create(str(overlays[dom]), str(base), "raw", base.stat().st_size)
        xl("create", root_cfg(tmp_path, dom, f"format=cow, vdev=xvda, access=rw, target={overlays[dom]}"))
    for dom in ("cowa", "cowb"):
        boot_and_check_root(xl, dom)
        xl("exec", dom, f"echo only-in-{dom} > /root/{dom}.txt && sync")
    for dom, other in (("cowa", "cowb"), ("cowb", "cowa")):
        r = xl("exec", dom, f"cat /root/{dom}.txt; ls /root; [ -e /root/{other}.txt ] && echo LEAKED; true")
        out = text(r)
        assert f"only-in-{dom}" in out and "LEAKED" not in out and f"{other}.txt" not in out, r.stdout
    xl("destroy", "cowa")
    xl("destroy", "cowb")
    assert sha256(base) == before  # two writers, and the base is untouched

    # on the host, each overlay holds its domain's file and not the other's
    for dom, other in (("cowa", "cowb"), ("cowb", "cowa")):
        flat = flatten(overlays[dom], "cow", tmp_path / f"{dom}.flat")
        assert (host_cat(flat, f"/root/{dom}.txt") or "").strip() == f"only-in-{dom}"
        assert host_cat(flat, f"/root/{other}.txt") is None
    assert host_cat(base, "/root/cowa.txt") is None and host_cat(base, "/root/cowb.txt") is None

    # persistent: destroy + create keeps the file
    xl("create", root_cfg(tmp_path, "cowa2", f"format=cow, vdev=xvda, access=rw, target={overlays['cowa']}"))
    boot_and_check_root(xl, "cowa2")
    r = xl("exec", "cowa2", "cat /root/cowa.txt; [ -e /root/cowb.txt ] && echo LEAKED; true")
    assert "only-in-cowa" in r.stdout and "LEAKED" not in r.stdout, r.stdout
    # the overlay is in use: a second domain on it is refused, the base stays shareable
    again = f"format=cow, vdev=xvda, access=rw, target={overlays['cowa']}"
    r = xl("create", root_cfg(tmp_path, "cowa3", again), check=False)
    assert r.returncode != 0 and "in use" in r.stderr, r.stderr
    xl("destroy", "cowa2")
    assert sha256(base) == before


@needs_e2fsprogs
def test_new_overlay_from_xl_cfg(xl: Xl, tmp_path: Path) -> None:
    base = base_image(tmp_path / "base.img")
    before = sha256(base)
    overlay = tmp_path / "new.cow"
    spec = f"format=cow, vdev=xvda, access=rw, base={base}, target={overlay}"
    r = xl("create", root_cfg(tmp_path, "newcow", spec), check=False)
    assert r.returncode == 0, r.stderr
    boot_and_check_root(xl, "newcow")
    xl("exec", "newcow", "echo kept > /root/kept.txt && sync")
    xl("destroy", "newcow")
    assert overlay.exists() and sha256(base) == before
    xl("create", root_cfg(tmp_path, "newcow2", spec))  # reopens the overlay (the base matches its header)
    assert "kept" in xl("exec", "newcow2", "cat /root/kept.txt").stdout


@needs_e2fsprogs
def test_non_persistent_overlay_is_discarded_at_destroy(xl: Xl, tmp_path: Path) -> None:
    base = base_image(tmp_path / "base.img")
    before = sha256(base)
    scratch = tmp_path / "scratch.cow"
    spec = f"format=cow, vdev=xvda, access=rw, persistent=no, base={base}, target={scratch}"
    r = xl("create", root_cfg(tmp_path, "np1", spec), check=False)
    assert r.returncode == 0, r.stderr
    boot_and_check_root(xl, "np1")
    xl("exec", "np1", "echo scratch > /root/gone.txt && sync && cat /root/gone.txt")
    xl("destroy", "np1")
    assert sha256(base) == before
    assert not scratch.exists()  # the overlay was an anonymous temporary file
    xl("create", root_cfg(tmp_path, "np2", spec))
    boot_and_check_root(xl, "np2")
    r = xl("exec", "np2", "[ -e /root/gone.txt ] && echo STILL-THERE; echo checked")
    assert "checked" in r.stdout and "STILL-THERE" not in r.stdout, r.stdout
    # a raw disk marked non-persistent: writable in the guest, the file never changes
    data = tmp_path / "data.raw"
    data.write_bytes(bytes(8 << 20))
    raw_before = sha256(data)
    xl("block-attach", "np2", f"format=raw, vdev=xvdb, access=rw, persistent=no, target={data}")
    xl("exec", "np2", "i=0; until [ -b /dev/xvdb ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.2; "
                      "done; echo junk | dd of=/dev/xvdb conv=fsync 2>/dev/null")
    xl("destroy", "np2")
    assert sha256(data) == raw_before
