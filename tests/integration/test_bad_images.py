"""Bad images with a real kernel: errors before the guest starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import hyperdisco

pytestmark = pytest.mark.slow


def test_initramfs_that_is_not_a_cpio(images: GuestImages, tmp_path: Path) -> None:
    bad = tmp_path / "initrd.img"
    bad.write_bytes(b"\x00" * 4096)
    r = hyperdisco("run", "--kernel", str(images.kernel), "--initrd", str(bad), "--exec", "true")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"hyperdisco: {bad}: not a cpio initramfs"]


def test_bzimage_is_accepted_as_kernel(images: GuestImages) -> None:
    r = hyperdisco("run", "--kernel", str(images.bzimage), "--initrd", str(images.initrd),
                   "--exec", "echo ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
