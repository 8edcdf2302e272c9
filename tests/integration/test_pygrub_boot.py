"""bootloader = "pygrub" end to end: the default guest's Debian kernel and initramfs placed in an ext4
image's /boot (with a grub.cfg, or without one: the newest /boot/vmlinuz-*), booted from that image through
the daemon, reaching the shell with grub.cfg's arguments plus xl.cfg's extra on its command line."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import Xl, domain_cfg

pytestmark = pytest.mark.slow

MKFS = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
needs_mkfs = pytest.mark.skipif(MKFS is None, reason="mkfs.ext4 (e2fsprogs) not installed")


def boot_image(tmp_path: Path, images: GuestImages, grub_cfg: str | None, name: str = "boot.img") -> Path:
    release = images.kernel_release
    tree = tmp_path / (name + ".tree")
    (tree / "boot" / "grub").mkdir(parents=True)
    shutil.copyfile(images.bzimage, tree / "boot" / f"vmlinuz-{release}")
    shutil.copyfile(images.initrd, tree / "boot" / f"initrd.img-{release}")
    (tree / "boot" / "vmlinuz-0.0.1-old").write_bytes(b"not a kernel")  # older: never chosen
    if grub_cfg is not None:
        (tree / "boot" / "grub" / "grub.cfg").write_text(grub_cfg.replace("@R@", release))
    img = tmp_path / name
    assert MKFS is not None
    subprocess.run([MKFS, "-q", "-F", "-d", str(tree), str(img), "64m"], check=True, capture_output=True)
    return img


GRUB_CFG = """\
set default="1>0"
menuentry 'Broken' { linux /boot/vmlinuz-0.0.1-old }
submenu 'Advanced options' {
	menuentry 'Debian GNU/Linux, with Linux @R@' $menuentry_id_option 'linux-@R@' {
		insmod ext2
		linux	/boot/vmlinuz-@R@ console=hvc0 from_grub_cfg=1 quiet
		initrd	/boot/initrd.img-@R@
	}
}
"""


@needs_mkfs
def test_pygrub_boots_the_kernel_in_the_guests_disk(xl: Xl, tmp_path: Path, images: GuestImages) -> None:
    img = boot_image(tmp_path, images, GRUB_CFG)
    cfg = domain_cfg(tmp_path, "pg1", 'bootloader = "pygrub"',
                     f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]", 'extra = "from_extra=2"')
    xl("create", cfg)
    r = xl("exec", "pg1", "uname -r; cat /proc/cmdline", "--timeout", "120")
    lines = [ln for ln in r.stdout.splitlines() if ln.strip() and not ln.lstrip().startswith("[")]
    assert lines[0] == images.kernel_release, r.stdout
    assert "from_grub_cfg=1" in r.stdout and "from_extra=2" in r.stdout, r.stdout
    xl("destroy", "pg1")


@needs_mkfs
def test_pygrub_newest_kernel_without_grub_cfg_and_bad_images(xl: Xl, tmp_path: Path,
                                                             images: GuestImages) -> None:
    img = boot_image(tmp_path, images, None)
    cfg = domain_cfg(tmp_path, "pg2", 'bootloader = "pygrub"',
                     f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]")
    xl("create", cfg)
    r = xl("exec", "pg2", "uname -r; cat /proc/cmdline", "--timeout", "120")
    assert images.kernel_release in r.stdout and "root=UUID=" in r.stdout, r.stdout
    xl("destroy", "pg2")

    bad_cfg = GRUB_CFG.replace("/boot/vmlinuz-@R@", "/boot/vmlinuz-9.9")
    missing = boot_image(tmp_path, images, bad_cfg, "m.img")
    cfg = domain_cfg(tmp_path, "pg3", 'bootloader = "pygrub"',
                     f"disk = [ 'format=raw, vdev=xvda, access=rw, target={missing}' ]")
    r = xl("create", cfg, check=False)
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if not ln.startswith("Parsing config")]
    assert len(err) == 1 and "kernel /boot/vmlinuz-9.9 is not in the image" in err[0], r.stderr


@needs_mkfs
def test_a_kernel_change_inside_the_guest_boots_at_its_next_reboot(xl: Xl, tmp_path: Path,
                                                                  images: GuestImages) -> None:
    """pygrub runs again when the domain restarts (on_reboot = restart): what the guest changed in its
    /boot takes effect at its next boot, as on Xen."""
    img = boot_image(tmp_path, images, GRUB_CFG)
    cfg = domain_cfg(tmp_path, "pg4", 'bootloader = "pygrub"',
                     f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]")
    xl("create", cfg)
    old_id = xl.rows()["pg4"][1]
    xl("exec", "pg4", "mkdir -p /mnt/b && mount -t ext4 /dev/xvda /mnt/b && "
                      "sed -i 's/from_grub_cfg=1/from_grub_cfg=upgraded/' /mnt/b/boot/grub/grub.cfg && "
                      "umount /mnt/b && sync", "--timeout", "120")
    xl("reboot", "pg4")
    deadline = time.monotonic() + 90
    while True:
        rows = xl.rows()
        if "pg4" in rows and rows["pg4"][1] != old_id:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
    r = xl("exec", "pg4", "cat /proc/cmdline", "--timeout", "120")
    assert "from_grub_cfg=upgraded" in r.stdout, r.stdout
    xl("destroy", "pg4")
