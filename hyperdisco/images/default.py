"""The default guest: Debian's cloud kernel plus an initramfs built here, cached under cache_dir()."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hyperdisco.errors import ImageError
from hyperdisco.images import debian
from hyperdisco.images.bzimage import load_kernel_elf
from hyperdisco.images.cache import atomic_write, cache_dir
from hyperdisco.images.initramfs import build_initramfs, guest_version

STAMP_NAME = "default-images.json"


@dataclass(frozen=True)
class GuestImages:
    kernel: Path  # extracted ELF vmlinux (with PVH note)
    bzimage: Path  # the original vmlinuz (for QEMU comparison benchmarks)
    initrd: Path  # newc cpio built by the project
    system_map: Path
    kernel_release: str  # e.g. 6.1.0-56-cloud-amd64


def _images(root: Path, release: str) -> GuestImages:
    unpacked = root / f"linux-image-{release}"
    return GuestImages(
        kernel=root / f"vmlinux-{release}.elf",
        bzimage=unpacked / "boot" / f"vmlinuz-{release}",
        initrd=root / f"initrd-{release}.cpio",
        system_map=unpacked / "boot" / f"System.map-{release}",
        kernel_release=release,
    )


def _complete(images: GuestImages) -> bool:
    return all(p.is_file() for p in (images.kernel, images.bzimage, images.initrd, images.system_map))


def _read_stamp(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(data, dict)
        else {}
    )


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise concurrent builders (e.g. parallel test runs) on one cache directory."""
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_default_images(progress: Callable[[str], None] | None = None, force: bool = False) -> GuestImages:
    """Fetch (once) Debian's cloud kernel and busybox-static and build the default guest images.

    Everything is cached under cache_dir(); when the cache is complete and the guest scripts have not
    changed this only returns paths. ``force`` refetches and rebuilds everything.
    """
    say: Callable[[str], None] = progress or (lambda _msg: None)
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(
            f"hyperdisco: {root}: cannot create cache directory ({exc.strerror or exc})"
        ) from None
    version = guest_version()

    with _locked(root):
        stamp = _read_stamp(root)
        release = stamp.get("release", "")
        if not force and release and stamp.get("initramfs") == version and _complete(_images(root, release)):
            return _images(root, release)

        images = _images(root, release) if release else None
        need_apt = force or images is None or not (images.bzimage.is_file() and images.system_map.is_file())
        busybox = root / debian.BUSYBOX_PACKAGE / "bin" / "busybox"
        need_apt = need_apt or not busybox.is_file()
        if need_apt:
            debian.require_apt()
        if force or images is None:
            say(f"resolving {debian.KERNEL_METAPACKAGE} (apt-cache depends)")
            package = debian.resolve_kernel_package(say)
            release = package.removeprefix("linux-image-")
            images = _images(root, release)
        package = f"linux-image-{release}"

        if force or not (images.bzimage.is_file() and images.system_map.is_file()):
            deb = debian.download(package, root / "debs", say, force)
            debian.unpack(deb, root / package, say)
            if not images.bzimage.is_file():
                raise ImageError(f"hyperdisco: {deb}: package has no boot/vmlinuz-{release}")
        if force or not busybox.is_file():
            deb = debian.download(debian.BUSYBOX_PACKAGE, root / "debs", say, force)
            debian.unpack(deb, root / debian.BUSYBOX_PACKAGE, say)
            if not busybox.is_file():
                raise ImageError(f"hyperdisco: {deb}: package has no bin/busybox")

        same_release = stamp.get("release") == release
        if force or not same_release or not images.kernel.is_file():
            say("extracting kernel ELF")
            atomic_write(images.kernel, load_kernel_elf(images.bzimage))
        if force or not same_release or stamp.get("initramfs") != version or not images.initrd.is_file():
            say("building initramfs")
            atomic_write(images.initrd, build_initramfs(busybox, root / package, release, say))

        atomic_write(
            root / STAMP_NAME, (json.dumps({"release": release, "initramfs": version}) + "\n").encode()
        )
        return images
