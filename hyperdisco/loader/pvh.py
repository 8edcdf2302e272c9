"""Place a kernel, its initramfs, command line, ACPI tables and hvm_start_info in guest memory.

The PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h, docs/misc/pvh.pandoc): the vCPU starts
in 32-bit protected mode with paging off at XEN_ELFNOTE_PHYS32_ENTRY, EBX holding the guest-physical
address of struct hvm_start_info (version 1 carries the memory map).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..platform import layout, vmgenid
from ..platform.acpi import build_tables
from ..xen import abi
from .elf import KernelImage
from .shared_image import shared_kernel_image

if TYPE_CHECKING:
    from ..core.memory import GuestMemory


def load_pvh(mem: GuestMemory, kernel: KernelImage, initrd: bytes | None, cmdline: str, nr_cpus: int) -> int:
    """Write everything the PVH entry expects; returns the start_info address for EBX."""
    ram = mem.ram_bytes
    for seg in kernel.segments:
        if seg.paddr < 0x100000 or seg.paddr + seg.memsz > ram:
            raise ConfigError(f"hyperdisco: kernel segment at {seg.paddr:#x} does not fit in {ram >> 20} MiB")
    # one copy of the loaded kernel for every domain, copy-on-write (loader/shared_image.py)
    mem.map_shared_image(shared_kernel_image(kernel))
    cl = cmdline.encode() + b"\0"
    if len(cl) > 4096:
        raise ConfigError("hyperdisco: kernel command line longer than 4095 bytes")
    mem.write(layout.CMDLINE, cl)
    modlist = layout.START_INFO + abi.HVM_START_INFO.size
    memmap = modlist + abi.HVM_MODLIST_ENTRY.size
    nr_modules = 0
    if initrd:
        # the initramfs goes as high as possible in RAM, clear of the kernel image; in a small guest whose
        # kernel reaches the top of RAM, into the free space between 1 MiB and the kernel's load address
        top = min(ram, 0x100000000) - 0x100000
        at = (top - len(initrd)) & ~0xFFF
        low = min(seg.paddr for seg in kernel.segments)
        if at < (kernel.end + 0xFFF & ~0xFFF) + layout.MiB:
            at = (low - len(initrd)) & ~0xFFF
            if at < 0x100000:
                raise ConfigError(f"hyperdisco: initramfs of {len(initrd) >> 20} MiB does not fit in "
                                  f"{ram >> 20} MiB of guest memory")
        mem.write(at, initrd)
        mem.pack(abi.HVM_MODLIST_ENTRY, modlist, at, len(initrd), 0, 0)
        nr_modules = 1
    entries = layout.e820(ram)
    mem.write(memmap, b"".join(abi.HVM_MEMMAP_ENTRY.pack(a, s, t, 0) for a, s, t in entries))
    for addr, blob in build_tables(layout.ACPI_BASE, nr_cpus, vmgenid.new_generation_id()).items():
        mem.write(addr, blob)
    mem.pack(abi.HVM_START_INFO, layout.START_INFO, abi.HVM_START_MAGIC, 1, 0, nr_modules,
             modlist if nr_modules else 0, layout.CMDLINE, layout.ACPI_BASE, memmap, len(entries), 0)
    return layout.START_INFO
