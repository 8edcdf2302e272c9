"""The real default images: fetches Debian's cloud kernel with apt (slow, needs apt and network once)."""

from __future__ import annotations

import shutil

import pytest

from hyperdisco.images import check_cpio, cpio_members, ensure_default_images, load_kernel_elf, pvh_entry


@pytest.mark.slow
def test_ensure_default_images() -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not available")
    images = ensure_default_images()
    elf = load_kernel_elf(images.kernel)
    assert pvh_entry(elf) is not None
    assert load_kernel_elf(images.bzimage) == elf
    assert images.system_map.is_file()
    cpio = images.initrd.read_bytes()
    check_cpio(cpio)
    members = set(cpio_members(cpio))
    release = images.kernel_release
    assert {"bin/busybox", "init", "etc/inittab", "etc/rc", "dev/console"} <= members
    if shutil.which("gcc") or shutil.which("cc"):  # guest_tools.py: compiled when there is a compiler
        assert "bin/hd-reseed" in members
    assert f"lib/modules/{release}/kernel/drivers/block/xen-blkfront.ko" in members
    assert f"lib/modules/{release}/modules.dep" in members
    # Second call is served from the cache.
    assert ensure_default_images() == images
