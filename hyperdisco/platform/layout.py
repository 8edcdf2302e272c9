"""Guest-physical layout of a PVH domain and the memory map (e820) it is given."""

from __future__ import annotations

from ..xen.abi import E820_ACPI, E820_RAM, E820_RESERVED

MiB = 1 << 20
SCRATCH = 0x1000  # GDT and trampoline for the PVH entry
START_INFO = 0x6000  # struct hvm_start_info, module list, memory map
CMDLINE = 0x7000  # kernel command line (one page)
ACPI_BASE = 0xF0000  # RSDP and the tables behind it
ACPI_SIZE = 0x10000
MMIO_START = 0xFE000000  # from here to 4 GiB: LAPIC, special pages and other platform MMIO
LAPIC_BASE = 0xFEE00000
# Where a PC has its IO-APIC and HPET. A Xen PVH domU has neither (libxl gives it XEN_X86_EMU_LAPIC as its
# only emulated device; xen/arch/x86/domain.c emulation_flags_ok): both ranges are unbacked memory, read
# as all ones. Named only so the log can say what the guest was looking for.
IOAPIC_BASE = 0xFEC00000
HPET_BASE = 0xFED00000
SPECIAL_BASE = 0xFEFF0000  # special pages (console ring, store ring...), outside RAM
SPECIAL_PAGES = 16
CONSOLE_PAGE = 0  # index into the special pages
STORE_PAGE = 1
MAX_RAM = 3 * 1024 * MiB  # RAM stays below the 32-bit MMIO hole
MIN_RAM = 32 * MiB


def e820(ram_bytes: int) -> list[tuple[int, int, int]]:
    """(address, size, type) entries; RAM below 640 KiB and from 1 MiB, ACPI tables in between."""
    return [
        (0, 0x9F000, E820_RAM),
        (0x9F000, 0x1000, E820_RESERVED),
        (ACPI_BASE, ACPI_SIZE, E820_ACPI),
        (0x100000, ram_bytes - 0x100000, E820_RAM),
        (SPECIAL_BASE, SPECIAL_PAGES * 4096, E820_RESERVED),
    ]


def special_gpa(index: int) -> int:
    return SPECIAL_BASE + index * 4096


def absent_device(gpa: int) -> str | None:
    """The PC device a guest probing `gpa` is looking for, when it is one we leave out on purpose."""
    if IOAPIC_BASE <= gpa < IOAPIC_BASE + 0x1000:
        return "IO-APIC"
    if HPET_BASE <= gpa < HPET_BASE + 0x1000:
        return "HPET"
    return None
