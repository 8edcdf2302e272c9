"""Turn user input (paths, sizes, command lines) into a validated DomainConfig."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from ..core.domain import DomainConfig
from ..errors import ConfigError, ImageError
from ..images import check_cpio, ensure_default_images, load_kernel_elf
from ..images.hostfile import MAX_RAMDISK_BYTES, read_regular_file
from ..loader.elf import KernelImage, parse_kernel
from ..platform import layout

DEFAULT_CMDLINE = "console=hvc0 earlyprintk=xen"
DEFAULT_MEMORY_MIB = 256
MAX_MEMORY_MIB = layout.MAX_RAM >> 20
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


def domain_config(name: str, kernel: str | None, initrd: str | None, cmdline: str | None, memory_mib: int,
                  vcpus: int = 1, progress: Callable[[str], None] | None = None) -> DomainConfig:
    check_memory(memory_mib)
    if vcpus != 1:
        raise ConfigError("hyperdisco: only 1 vCPU per domain is supported so far")
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
                        memory_mib=memory_mib, vcpus=vcpus)


def guest_cmdline(cmdline: str | None) -> str:
    """The user's command line, with the PV console made the kernel's console unless they chose one
    (a PVH guest has no other: without it the kernel's messages and /dev/console go nowhere)."""
    if cmdline is None:
        return DEFAULT_CMDLINE
    words = cmdline.split()
    return cmdline if any(w.startswith("console=") for w in words) else " ".join(["console=hvc0", *words])
