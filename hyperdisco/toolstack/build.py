"""Turn user input (paths, sizes, command lines) into a validated DomainConfig."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.domain import DomainConfig
from ..errors import ConfigError, ImageError
from ..images import check_cpio, ensure_default_images, kernel_elf_from_bytes, load_kernel_elf
from ..images.hostfile import MAX_KERNEL_BYTES, MAX_RAMDISK_BYTES, read_regular_file
from ..loader.elf import KernelImage, parse_kernel
from ..platform import layout

if TYPE_CHECKING:
    from .xlcfg import DiskSpec

DEFAULT_CMDLINE = "console=hvc0 earlyprintk=xen"
DEFAULT_MEMORY_MIB = 256
MAX_MEMORY_MIB = layout.MAX_RAM >> 20
MAX_VCPUS = 16  # a domain's vCPUs (each one host thread and one engine instance)
MIN_MEMORY_MIB = layout.MIN_RAM >> 20


def _file_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageError(f"hyperdisco: {path}: {exc.strerror or exc}") from None
    return str(path), st.st_mtime_ns, st.st_size


# Images are read and checked once and shared by every domain made from them (the kernel ELF alone is
# ~50 MB: a private copy per domain cost as much host memory as the guest's own RAM use).
@functools.lru_cache(maxsize=8)
def _kernel(path: str, _mtime: int, _size: int) -> KernelImage:
    # load_kernel_elf reads a regular file of at most 256 MiB, never blocking (images/hostfile.py)
    return parse_kernel(load_kernel_elf(Path(path)), path)


@functools.lru_cache(maxsize=8)
def _initrd(path: str, _mtime: int, _size: int) -> bytes:
    # a regular file of at most 1 GiB, read without blocking (a FIFO or /dev/zero is refused in one line)
    data = read_regular_file(path, MAX_RAMDISK_BYTES, "ramdisk")
    check_cpio(data, path)
    return data


def check_memory(mib: int) -> int:
    if not MIN_MEMORY_MIB <= mib <= MAX_MEMORY_MIB:
        raise ConfigError(f"hyperdisco: memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB "
                          f"(got {mib})")
    return mib


def check_vcpus(vcpus: int, maxvcpus: int = 0) -> None:
    """vcpus online at boot, maxvcpus the most the guest can have (0: as many as vcpus)."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise ConfigError(f"hyperdisco: vcpus must be between 1 and {MAX_VCPUS} (got {vcpus})")
    if maxvcpus and not vcpus <= maxvcpus <= MAX_VCPUS:
        raise ConfigError(f"hyperdisco: maxvcpus must be between vcpus ({vcpus}) and {MAX_VCPUS} "
                          f"(got {maxvcpus})")


def domain_config(name: str, kernel: str | None, initrd: str | None, cmdline: str | None, memory_mib: int,
                  vcpus: int = 1, progress: Callable[[str], None] | None = None, *,
                  bootloader: str | None = None, bootloader_args: Sequence[str] = (),
                  disks: Sequence[DiskSpec] = (), maxvcpus: int = 0) -> DomainConfig:
    """The domain's config. With ``bootloader`` ("pygrub"), the kernel and initrd come from the guest's
    boot disk among ``disks`` (``kernel``/``initrd`` then name files inside it, as pygrub's --kernel and
    --ramdisk) and ``cmdline`` is added to the boot entry's arguments, as xl does."""
    check_memory(memory_mib)
    check_vcpus(vcpus, maxvcpus)
    if bootloader is not None:
        image, initrd_data, full_cmdline = _bootloader_boot(bootloader, bootloader_args, disks, kernel,
                                                            initrd, cmdline)
        return DomainConfig(name=name, kernel=image, initrd=initrd_data, cmdline=guest_cmdline(full_cmdline),
                            memory_mib=memory_mib, vcpus=vcpus, maxvcpus=maxvcpus)
    if kernel is None:
        images = ensure_default_images(progress)
        kernel_path: Path = images.kernel
        initrd_path: Path | None = images.initrd if initrd is None else Path(initrd)
    else:
        kernel_path = Path(kernel)
        initrd_path = Path(initrd) if initrd else None
    image = _kernel(*_file_key(kernel_path))
    initrd_data = _initrd(*_file_key(initrd_path)) if initrd_path is not None else None
    return DomainConfig(name=name, kernel=image, initrd=initrd_data, cmdline=guest_cmdline(cmdline),
                        memory_mib=memory_mib, vcpus=vcpus, maxvcpus=maxvcpus)


def guest_cmdline(cmdline: str | None) -> str:
    """The user's command line, with the PV console made the kernel's console unless they chose one
    (a PVH guest has no other: without it the kernel's messages and /dev/console go nowhere)."""
    if cmdline is None:
        return DEFAULT_CMDLINE
    words = cmdline.split()
    return cmdline if any(w.startswith("console=") for w in words) else " ".join(["console=hvc0", *words])


_ROOT_XVD = re.compile(r"root=/dev/(xvd[a-z]+?)([0-9]*)")


def boot_disk(disks: Sequence[DiskSpec], wanted: str | None,
              cmdline: str | None) -> tuple[DiskSpec, int | None]:
    """The disk pygrub reads, and the partition when one is named: ``--disk=VDEV`` of bootloader_args,
    else the disk (and partition) of ``root=/dev/xvdXN`` on the command line, else the first disk."""
    if not disks:
        raise ConfigError("hyperdisco: bootloader: the domain has no disk to boot from")
    partition: int | None = None
    if wanted is None and cmdline:
        for word in cmdline.split():
            m = _ROOT_XVD.fullmatch(word)
            if m is not None:
                wanted, partition = m.group(1), int(m.group(2)) if m.group(2) else None
    if wanted is None:
        return disks[0], None
    for disk in disks:
        if disk.vdev == wanted:
            return disk, partition
    raise ConfigError(f"hyperdisco: bootloader: no disk {wanted[:40]!r} to boot from")


def _bootloader_boot(bootloader: str, args: Sequence[str], disks: Sequence[DiskSpec], kernel: str | None,
                     initrd: str | None, cmdline: str | None) -> tuple[KernelImage, bytes | None, str | None]:
    """pygrub: the kernel, initramfs and command line of the boot disk's default entry."""
    from dataclasses import replace

    from ..images.pygrub import boot_files, parse_bootloader_args

    if bootloader.rsplit("/", 1)[-1] != "pygrub":
        raise ConfigError(f"hyperdisco: bootloader {bootloader[:60]!r} is not supported (only pygrub)")
    opts = parse_bootloader_args(list(args))
    if kernel is not None:
        opts = replace(opts, kernel=kernel)
    if initrd is not None:
        opts = replace(opts, ramdisk=initrd)
    disk, partition = boot_disk(disks, opts.disk, cmdline)
    if disk.format != "raw":
        raise ConfigError(f"hyperdisco: bootloader: disk {disk.vdev} is {disk.format}; pygrub reads raw "
                          "disks only")
    with boot_files(disk.target, opts, partition) as boot:
        data = read_regular_file(boot.kernel, MAX_KERNEL_BYTES, "kernel")
        image = parse_kernel(kernel_elf_from_bytes(data, boot.kernel_name), boot.kernel_name)
        initrd_data: bytes | None = None
        if boot.initrd is not None:
            initrd_data = read_regular_file(boot.initrd, MAX_RAMDISK_BYTES, "ramdisk")
            check_cpio(initrd_data, boot.initrd_name or "initrd")
    extra = " ".join(a for a in (boot.args, opts.args, cmdline) if a)
    return image, initrd_data, extra or None
