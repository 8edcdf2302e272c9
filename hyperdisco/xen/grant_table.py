"""xen/include/public/grant_table.h: the grant_table_op hypercall's commands, status codes and argument
layouts, and the version-1 grant entry a guest fills to share a page."""

from __future__ import annotations

import struct

from .xen import PAGE

__all__ = [
    "GNTTABOP_map_grant_ref", "GNTTABOP_unmap_grant_ref", "GNTTABOP_setup_table", "GNTTABOP_copy",
    "GNTTABOP_query_size", "GNTTABOP_set_version", "GNTTABOP_get_version", "GNTTAB_QUERY_SIZE",
    "GNTTAB_SETUP_TABLE", "GNTST_okay", "GNTST_general_error", "GNTST_bad_domain", "GRANT_ENTRY_V1",
    "ENTRIES_PER_FRAME", "GTF_type_mask", "GTF_permit_access", "GTF_readonly", "GTF_reading", "GTF_writing",
    "GNTTAB_MAP_GRANT_REF", "GNTTAB_UNMAP_GRANT_REF", "GNTMAP_device_map", "GNTMAP_host_map",
    "GNTMAP_readonly", "GNTMAP_application_map", "GNTMAP_contains_pte", "GNTST_bad_gntref",
    "GNTST_bad_handle", "GNTST_bad_virt_addr", "GNTST_no_device_space", "GNTST_permission_denied",
    "GNTST_bad_page", "GNTST_eagain", "GNTST_bad_copy_arg", "GNTTABOP_get_status_frames",
    "GNTTABOP_swap_grant_ref", "GNTTAB_SETUP_TABLE_COMPAT", "GNTTAB_SET_VERSION", "GNTTAB_GET_VERSION",
    "GNTTAB_COPY", "GNTTAB_COPY_COMPAT", "GNTCOPY_source_gref", "GNTCOPY_dest_gref", "GNTTAB_SWAP_GRANT_REF",
    "INVALID_GFN",
]

# --- grant_table.h ------------------------------------------------------------------------------------
GNTTABOP_map_grant_ref, GNTTABOP_unmap_grant_ref, GNTTABOP_setup_table = 0, 1, 2
GNTTABOP_copy, GNTTABOP_query_size, GNTTABOP_set_version, GNTTABOP_get_version = 5, 6, 8, 10
GNTTAB_QUERY_SIZE = struct.Struct("<H2xIIh2x")  # dom, nr_frames (OUT), max_nr_frames (OUT), status
GNTTAB_SETUP_TABLE = struct.Struct("<H2xIh6xQ")  # dom, nr_frames, status (OUT), frame_list (handle)
GNTST_okay, GNTST_general_error, GNTST_bad_domain = 0, -1, -2
GNTST_bad_gntref, GNTST_bad_handle, GNTST_bad_virt_addr = -3, -4, -5
GNTST_no_device_space, GNTST_permission_denied, GNTST_bad_page = -7, -8, -9
GNTST_eagain = -12  # "operation not done; try again"
GNTST_bad_copy_arg = -10  # "copy arguments cross page boundary"
GNTTABOP_get_status_frames, GNTTABOP_swap_grant_ref = 9, 11
# the i386 layout of struct gnttab_setup_table: the frame_list handle is 4 bytes, frames are compat_pfn_t
GNTTAB_SETUP_TABLE_COMPAT = struct.Struct("<H2xIh2xI")
GNTTAB_SET_VERSION = struct.Struct("<I")  # version (IN/OUT)
GNTTAB_GET_VERSION = struct.Struct("<H2xI")  # dom, version (OUT)
# struct gnttab_copy {struct gnttab_copy_ptr {union {grant_ref_t ref; xen_pfn_t gmfn;} u; domid_t domid;
#   uint16_t offset;} source, dest; uint16_t len; uint16_t flags; int16_t status (OUT);}: 40 bytes, and
#   24 in the i386 layout (xen_pfn_t is 4 bytes there)
GNTTAB_COPY = struct.Struct("<QHH4xQHH4xHHh2x")
GNTTAB_COPY_COMPAT = struct.Struct("<IHHIHHHHh2x")
GNTCOPY_source_gref, GNTCOPY_dest_gref = 1 << 0, 1 << 1
GNTTAB_SWAP_GRANT_REF = struct.Struct("<IIh2x")  # ref_a, ref_b, status (OUT)
INVALID_GFN = (1 << 64) - 1  # xen/include/xen/mm.h: ~0UL, what setup_table reports for an unplaced frame
# struct gnttab_map_grant_ref {uint64_t host_addr; uint32_t flags; grant_ref_t ref; domid_t dom;
#   int16_t status (OUT); grant_handle_t handle (OUT); uint64_t dev_bus_addr (OUT);}
GNTTAB_MAP_GRANT_REF = struct.Struct("<QIIHhIQ")
# struct gnttab_unmap_grant_ref {uint64_t host_addr; uint64_t dev_bus_addr; grant_handle_t handle;
#   int16_t status (OUT);} (padded to 24 bytes)
GNTTAB_UNMAP_GRANT_REF = struct.Struct("<QQIh2x")
# GNTMAP_* flags of map_grant_ref
GNTMAP_device_map, GNTMAP_host_map, GNTMAP_readonly = 1 << 0, 1 << 1, 1 << 2
GNTMAP_application_map, GNTMAP_contains_pte = 1 << 3, 1 << 4

# --- grant_table.h: struct grant_entry_v1 {uint16_t flags; domid_t domid; uint32_t frame;} and its flags --
GRANT_ENTRY_V1 = struct.Struct("<HHI")  # flags, domid, frame
ENTRIES_PER_FRAME = PAGE // GRANT_ENTRY_V1.size  # v1 entries in one grant frame
GTF_type_mask = 3
GTF_permit_access = 1
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
