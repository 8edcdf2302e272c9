"""xen/include/public/hvm/hvm_op.h, hvm/params.h and arch-x86/hvm/start_info.h (the PVH boot ABI)."""

from __future__ import annotations

import struct

__all__ = [
    "HVM_START_MAGIC", "HVM_START_INFO", "HVM_MODLIST_ENTRY", "HVM_MEMMAP_ENTRY", "E820_RAM",
    "E820_RESERVED", "E820_ACPI", "HVMOP_set_param", "HVMOP_get_param", "HVMOP_pagetable_dying",
    "HVMOP_get_time", "HVM_PARAM", "HVM_PARAM_CALLBACK_IRQ", "HVM_PARAM_STORE_PFN", "HVM_PARAM_STORE_EVTCHN",
    "HVM_PARAM_CONSOLE_PFN", "HVM_PARAM_CONSOLE_EVTCHN", "HVM_NR_PARAMS", "HVM_PARAM_CALLBACK_TYPE_VECTOR",
]

# --- hvm/start_info.h: PVH boot ------------------------------------------------------------------------
HVM_START_MAGIC = 0x336EC578
# magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr,
# memmap_entries, reserved
HVM_START_INFO = struct.Struct("<IIIIQQQQII")
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr, size, cmdline_paddr, reserved
HVM_MEMMAP_ENTRY = struct.Struct("<QQII")  # addr, size, type, reserved
E820_RAM, E820_RESERVED, E820_ACPI = 1, 2, 3

# --- hvm/hvm_op.h, hvm/params.h -----------------------------------------------------------------------
HVMOP_set_param, HVMOP_get_param, HVMOP_pagetable_dying, HVMOP_get_time = 0, 1, 9, 10
HVM_PARAM = struct.Struct("<H2xIQ")  # domid, index, value
HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN = 0, 1, 2
HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN = 17, 18
HVM_NR_PARAMS = 39
HVM_PARAM_CALLBACK_TYPE_VECTOR = 2  # in bits 63:56 of HVM_PARAM_CALLBACK_IRQ
