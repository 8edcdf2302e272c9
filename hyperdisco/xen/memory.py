"""xen/include/public/memory.h: the memory_op hypercall's commands and argument layouts."""

from __future__ import annotations

import struct

__all__ = [
    "XENMEM_increase_reservation", "XENMEM_decrease_reservation", "XENMEM_maximum_ram_page",
    "XENMEM_current_reservation", "XENMEM_maximum_reservation", "XENMEM_populate_physmap",
    "XENMEM_add_to_physmap", "XENMEM_memory_map", "XENMEM_maximum_gpfn", "XENMAPSPACE_shared_info",
    "XENMAPSPACE_grant_table", "XENMAPSPACE_gmfn", "ADD_TO_PHYSMAP", "MEMORY_MAP", "E820_ENTRY",
    "MEMORY_RESERVATION", "MEMOP_EXTENT_SHIFT", "MEMOP_CMD_MASK", "XENMEMF_populate_on_demand",
    "XENMEMF_exact_node_request", "XENMEMF_vnode", "DOMU_MAX_ORDER",
]

# --- memory.h -----------------------------------------------------------------------------------------
XENMEM_increase_reservation, XENMEM_decrease_reservation, XENMEM_maximum_ram_page = 0, 1, 2
XENMEM_current_reservation, XENMEM_maximum_reservation, XENMEM_populate_physmap = 3, 4, 6
XENMEM_add_to_physmap, XENMEM_memory_map, XENMEM_maximum_gpfn = 7, 9, 14
XENMAPSPACE_shared_info, XENMAPSPACE_grant_table, XENMAPSPACE_gmfn = 0, 1, 2
ADD_TO_PHYSMAP = struct.Struct("<HHIQQ")  # domid, size, space, idx, gpfn
MEMORY_MAP = struct.Struct("<I4xQ")  # nr_entries, buffer (guest handle)
E820_ENTRY = struct.Struct("<QQI")  # packed e820 entry as XENMEM_memory_map returns it
# struct xen_memory_reservation: extent_start (a guest handle of xen_pfn_t), nr_extents (xen_ulong_t),
# extent_order and mem_flags (unsigned int each, interface version >= 0x00030209), domid (domid_t); 32 bytes
MEMORY_RESERVATION = struct.Struct("<QQIIH6x")
# memory.h: the low 6 bits of the memory_op command are the sub-op; the bits above carry the extent a
# continuation restarts at (xen/common/memory.c do_memory_op: start_extent = cmd >> MEMOP_EXTENT_SHIFT)
MEMOP_EXTENT_SHIFT, MEMOP_CMD_MASK = 6, 0x3F
# mem_flags: XENMEMF_get_address_bits(x) is x & 0xff; the NUMA node is bits 8-15
XENMEMF_populate_on_demand, XENMEMF_exact_node_request, XENMEMF_vnode = 1 << 16, 1 << 17, 1 << 18
# the largest extent_order a guest may use (memory.c max_order(): CONFIG_DOMU_MAX_ORDER, 9 on x86)
DOMU_MAX_ORDER = 9
