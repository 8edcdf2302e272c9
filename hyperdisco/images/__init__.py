"""Guest images: kernel extraction (bzImage -> PVH ELF), initramfs (cpio) and the cached Debian default."""

from hyperdisco.images.bzimage import kernel_elf_from_bytes, load_kernel_elf, pvh_entry
from hyperdisco.images.cache import cache_dir
from hyperdisco.images.cpio import CpioWriter, check_cpio, cpio_members
from hyperdisco.images.default import GuestImages, ensure_default_images

__all__ = [
    "CpioWriter",
    "GuestImages",
    "cache_dir",
    "check_cpio",
    "cpio_members",
    "ensure_default_images",
    "kernel_elf_from_bytes",
    "load_kernel_elf",
    "pvh_entry",
]
