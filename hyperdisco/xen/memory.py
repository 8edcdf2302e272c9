"""xen/include/public/memory.h: the memory_op hypercall's commands and argument layouts."""

from __future__ import annotations

import struct

__all__ = [
    "XENMEM_increase_reservation", "XENMEM_decrease_reservation", "XENMEM_maximum_ram_page",
    "XENMEM_current_reservation", "XENMEM_maximum_reservation", "XENMEM_populate_physmap",
    "XENMEM_add_to_physmap", "XENMEM_memory_map", "XENMEM_maximum_gpfn", "XENMAPSPACE_shared_info",
    "XENMAPSPACE_grant_table", "XENMAPSPACE_gmfn", "ADD_TO_PHYSMAP", "MEMORY_MAP", "E820_ENTRY",
    "MEMORY_RESERVATION",
]

# --- memory.h -----------------------------------------------------------------------------------------
XENMEM_increase_reservation, XENMEM_decrease_reservation, XENMEM_maximum_ram_page = 0, 1, 2
XENMEM_current_reservation, XENMEM_maximum_reservation, XENMEM_populate_physmap = 3, 4, 6
XENMEM_add_to_physmap, XENMEM_memory_map, XENMEM_maximum_gpfn = 7, 9, 14
XENMAPSPACE_shared_info, XENMAPSPACE_grant_table, XENMAPSPACE_gmfn = 0, 1, 2
ADD_TO_PHYSMAP = struct.Struct("<HHIQQ")  # domid, size, space, idx, gpfn
MEMORY_MAP = struct.Struct("<I4xQ")  # nr_entries, buffer (guest handle)
E820_ENTRY = struct.Struct("<QQI")  # packed e820 entry as XENMEM_memory_map returns it
MEMORY_RESERVATION = struct.Struct("<QQIH2x")  # extent_start, nr_extents, extent_order, mem_flags, domid
