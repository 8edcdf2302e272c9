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
]

# --- grant_table.h ------------------------------------------------------------------------------------
GNTTABOP_map_grant_ref, GNTTABOP_unmap_grant_ref, GNTTABOP_setup_table = 0, 1, 2
GNTTABOP_copy, GNTTABOP_query_size, GNTTABOP_set_version, GNTTABOP_get_version = 5, 6, 8, 10
GNTTAB_QUERY_SIZE = struct.Struct("<H2xIIh2x")  # dom, nr_frames (OUT), max_nr_frames (OUT), status
GNTTAB_SETUP_TABLE = struct.Struct("<H2xIh6xQ")  # dom, nr_frames, status (OUT), frame_list (handle)
GNTST_okay, GNTST_general_error, GNTST_bad_domain = 0, -1, -2

# --- grant_table.h: struct grant_entry_v1 {uint16_t flags; domid_t domid; uint32_t frame;} and its flags --
GRANT_ENTRY_V1 = struct.Struct("<HHI")  # flags, domid, frame
ENTRIES_PER_FRAME = PAGE // GRANT_ENTRY_V1.size  # v1 entries in one grant frame
GTF_type_mask = 3
GTF_permit_access = 1
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
