"""Transparent page sharing of boot images (Disco's idea: many VMs, one copy of what they all read).

Every domain booted from the same kernel gets the same loaded image: instead of copying the kernel's
segments into each domain's RAM, the hypervisor keeps one copy in a memfd and maps it copy-on-write
(MAP_PRIVATE | MAP_FIXED) over the kernel's range of each domain's RAM. Pages the guest only reads (its
text and read-only data, most of the image) stay one host page for all domains; a page the guest writes
is copied by the host kernel for that domain alone. The engine never notices: the guest-physical to host
mapping it was given stays at the same addresses.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ..xen.abi import PAGE
from .elf import KernelImage


@dataclass(frozen=True)
class SharedImage:
    """A loaded kernel image, page-aligned, in one memfd: `size` bytes to map at guest-physical `gpa`."""

    fd: int
    gpa: int
    size: int


_images: dict[int, tuple[KernelImage, SharedImage]] = {}
_lock = threading.Lock()


def shared_kernel_image(kernel: KernelImage) -> SharedImage:
    """The one shared image of `kernel` in this process (made on first use)."""
    with _lock:
        hit = _images.get(id(kernel))
        if hit is not None and hit[0] is kernel:
            return hit[1]
        lo = min(s.paddr for s in kernel.segments) & ~(PAGE - 1)
        hi = (kernel.end + PAGE - 1) & ~(PAGE - 1)
        fd = os.memfd_create("hyperdisco-kernel-image", os.MFD_CLOEXEC)
        os.ftruncate(fd, hi - lo)  # bss and gaps read as zeros
        for seg in kernel.segments:
            os.pwrite(fd, seg.data, seg.paddr - lo)
        img = SharedImage(fd, lo, hi - lo)
        _images[id(kernel)] = (kernel, img)  # the KernelImage is kept alive with it: ids stay unique
        return img


def adopt_shared_image(kernel: KernelImage, img: SharedImage) -> None:
    """Use `img` (made by another process, handed over as a descriptor) as the one shared image of
    `kernel` here: a domain process maps domain 0's copy instead of making its own."""
    with _lock:
        _images[id(kernel)] = (kernel, img)
