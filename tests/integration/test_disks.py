"""Virtual block devices end to end: xl.cfg disks through blkback to the guest's stock xen-blkfront."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import Xl, domain_cfg

pytestmark = pytest.mark.slow

MKFS = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
DEBUGFS = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
needs_mkfs = pytest.mark.skipif(MKFS is None, reason="mkfs.ext4 (e2fsprogs) not installed")


def ext4_image(path: Path, size_mib: int, files: dict[str, str]) -> Path:
    seed = path.with_suffix(".seed")
    seed.mkdir()
    for name, text in files.items():
        (seed / name).write_text(text)
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    assert MKFS is not None
    subprocess.run([MKFS, "-q", "-F", "-d", str(seed), str(path)], check=True)
    return path


def wait_for(xl: Xl, dom: str, test: str, timeout: float = 30.0) -> None:
    """Until the shell test `test` holds in the guest."""
    r = xl("exec", dom, f"i=0; until {test}; do i=$((i+1)); [ $i -gt {int(timeout * 5)} ] && exit 1; "
                        "sleep 0.2; done", "--timeout", str(timeout + 60), check=False)
    assert r.returncode == 0, (test, r.stdout, r.stderr)


def text(r: subprocess.CompletedProcess[str]) -> str:
    """The command's output without the kernel's console messages interleaved."""
    return "\n".join(ln for ln in r.stdout.splitlines() if not re.match(r"\s*\[\s*\d+\.\d+\]", ln))


def host_file(image: Path, name: str) -> str:
    assert DEBUGFS is not None
    return subprocess.run([DEBUGFS, "-R", f"cat {name}", str(image)], capture_output=True, text=True).stdout


@needs_mkfs
def test_data_disk_mount_write_remount(xl: Xl, tmp_path: Path) -> None:
    img = ext4_image(tmp_path / "data.img", 64, {"hello.txt": "hello from the host\n"})
    xl("create", domain_cfg(tmp_path, "dd1", f"disk = [ 'format=raw, vdev=xvdb, access=rw, target={img}' ]"))
    wait_for(xl, "dd1", "[ -b /dev/xvdb ]")
    r = xl("exec", "dd1", "mkdir -p /mnt/d && mount -t ext4 /dev/xvdb /mnt/d && cat /mnt/d/hello.txt && "
                          "echo written-by-guest > /mnt/d/guest.txt && sync && umount /mnt/d && "
                          "mount -t ext4 /dev/xvdb /mnt/d && cat /mnt/d/guest.txt && umount /mnt/d")
    assert text(r).split() == ["hello", "from", "the", "host", "written-by-guest"], r.stdout
    rows = xl("block-list", "dd1").stdout.splitlines()
    assert rows[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
    assert rows[1].split()[:4] == ["51728", "0", xl("domid", "dd1").stdout.strip(), "4"]

    # throughput through the whole path (O_DIRECT: every byte crosses the ring)
    r = xl("exec", "dd1", "dd if=/dev/zero of=/dev/xvdb bs=1M count=16 seek=32 oflag=direct 2>&1 | tail -1; "
                          "dd if=/dev/xvdb of=/dev/null bs=1M count=16 skip=32 iflag=direct 2>&1 | tail -1")
    print(r.stdout)
    # past the end of the disk: an error for the guest, nothing for the daemon
    r = xl("exec", "dd1", "dd if=/dev/zero of=/dev/xvdb bs=512 seek=131072 count=1 2>&1; echo status=$?")
    assert "status=1" in r.stdout
    xl("destroy", "dd1")  # closes the image: the host sees the guest's file
    if DEBUGFS is not None:
        assert host_file(img, "/guest.txt").strip() == "written-by-guest"
    # the lock was released
    xl("create", domain_cfg(tmp_path, "dd2", f"disk = [ 'vdev=xvdb, target={img}' ]"))
    wait_for(xl, "dd2", "[ -b /dev/xvdb ]")
    assert "written-by-guest" in xl("exec", "dd2", "mount /dev/xvdb /mnt && cat /mnt/guest.txt").stdout


def _root_image(path: Path, images: GuestImages) -> Path:
    try:
        from hyperdisco.images.rootfs import build_rootfs
    except ImportError:
        build_rootfs = None
    if build_rootfs is not None:
        build_rootfs(path, 64)
        return path
    # until rootfs.py lands: the initramfs's own files as an ext4 root
    tree = path.with_suffix(".tree")
    tree.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], cwd=tree, input=Path(images.initrd).read_bytes(), check=True)
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    assert MKFS is not None
    subprocess.run([MKFS, "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


@needs_mkfs
def test_root_disk_survives_reboot(xl: Xl, tmp_path: Path, images: GuestImages) -> None:
    if shutil.which("cpio") is None:
        try:
            import hyperdisco.images.rootfs  # noqa: F401
        except ImportError:
            pytest.skip("neither rootfs.py nor cpio to build a root image")
    img = _root_image(tmp_path / "root.img", images)
    xl("create", domain_cfg(tmp_path, "rootd", f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]",
                     'root = "/dev/xvda rw"', 'extra = "console=hvc0"', 'on_reboot = "restart"'))
    r = xl("exec", "rootd", "mount | grep ' on / '; echo survived > /root/mark.txt; sync")
    assert "/dev/xvda on / type ext4" in r.stdout, r.stdout
    first = xl("domid", "rootd").stdout.strip()
    xl("reboot", "rootd")
    deadline = time.monotonic() + 120
    while True:
        rows = xl.rows()
        if "rootd" in rows and rows["rootd"][1] != first:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
    r = xl("exec", "rootd", "mount | grep ' on / '; cat /root/mark.txt")
    assert "/dev/xvda on / type ext4" in r.stdout and "survived" in r.stdout, r.stdout


def test_root_that_is_not_there_falls_back_to_the_initramfs(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "noroot", 'extra = "console=hvc0 root=/dev/xvdz"'))
    r = xl("exec", "noroot", "echo alive", "--timeout", "120")
    assert "alive" in r.stdout


@needs_mkfs
def test_hotplug_attach_detach(xl: Xl, tmp_path: Path) -> None:
    img = ext4_image(tmp_path / "hot.img", 32, {"f.txt": "hot\n"})
    xl("create", domain_cfg(tmp_path, "hot"))
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.truncate(8 << 20)
    xl("create", domain_cfg(tmp_path, "bystander", f"disk = [ 'vdev=xvda, target={other}' ]"))
    assert text(xl("exec", "hot", "ls /sys/block | grep -c xvd", check=False)).strip() == "0"
    for _ in range(2):  # attach, detach, and again
        xl("block-attach", "hot", f"format=raw, vdev=xvdb, access=rw, target={img}")
        wait_for(xl, "hot", "[ -e /sys/block/xvdb ] && [ -b /dev/xvdb ]")
        assert "hot" in xl("exec", "hot", "mount -o ro /dev/xvdb /mnt && cat /mnt/f.txt; umount /mnt").stdout
        rows = xl("block-list", "hot").stdout.splitlines()
        assert len(rows) == 2 and rows[1].split()[3] == "4"
        xl("block-detach", "hot", "xvdb")
        wait_for(xl, "hot", "[ ! -e /sys/block/xvdb ]")
        assert len(xl("block-list", "hot").stdout.splitlines()) == 1
        dom = xl("domid", "hot").stdout.strip()
        r = xl("xenstore", "ls", f"/local/domain/{dom}/device", check=False)
        assert "51728" not in r.stdout
    # errors are one line and change nothing
    r = xl("block-attach", "hot", f"vdev=xvdc, target={other}", check=False)  # the bystander writes it
    assert r.returncode != 0 and "in use" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = xl("block-attach", "hot", f"vdev=xvdc, target={tmp_path / 'missing.img'}", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = xl("block-detach", "hot", "xvdq", check=False)
    assert r.returncode != 0 and "no disk" in r.stderr
    wait_for(xl, "bystander", "[ -b /dev/xvda ]")


@needs_mkfs
def test_bad_disk_config_is_one_line(xl: Xl, tmp_path: Path) -> None:
    img = ext4_image(tmp_path / "one.img", 16, {})
    two = f"disk = [ 'vdev=xvda, target={img}', 'vdev=xvdb, target={img}' ]"
    r = xl("create", domain_cfg(tmp_path, "twice", two), check=False)
    errs = [ln for ln in r.stderr.splitlines() if not ln.startswith("Parsing config")]
    assert r.returncode != 0 and len(errs) == 1 and "in use" in errs[0], r.stderr
    r = xl("create", domain_cfg(tmp_path, "gone", f"disk = [ 'vdev=xvda, target={tmp_path / 'nope.img'}' ]"),
           check=False)
    errs = [ln for ln in r.stderr.splitlines() if not ln.startswith("Parsing config")]
    assert r.returncode != 0 and len(errs) == 1 and "does not exist" in errs[0], r.stderr
    assert not re.search(r"\b(twice|gone)\b", xl("list").stdout)
    # nothing leaked a lock
    xl("create", domain_cfg(tmp_path, "fine", f"disk = [ 'vdev=xvda, target={img}' ]"))
    wait_for(xl, "fine", "[ -b /dev/xvda ]")
