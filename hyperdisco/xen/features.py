"""xen/include/public/features.h: the feature bits XENVER_get_features reports."""

from __future__ import annotations

__all__ = [
    "XENFEAT_writable_page_tables", "XENFEAT_writable_descriptor_tables", "XENFEAT_auto_translated_physmap",
    "XENFEAT_supervisor_mode_kernel", "XENFEAT_pae_pgdir_above_4gb", "XENFEAT_hvm_callback_vector",
    "XENFEAT_hvm_safe_pvclock", "XENFEAT_dom0", "XENFEAT_linux_rsdp_unrestricted", "XENFEAT_NR_SUBMAPS",
]

# --- features.h ---------------------------------------------------------------------------------------
XENFEAT_writable_page_tables = 0
XENFEAT_writable_descriptor_tables = 1
XENFEAT_auto_translated_physmap = 2
XENFEAT_supervisor_mode_kernel = 3
XENFEAT_pae_pgdir_above_4gb = 4
XENFEAT_hvm_callback_vector = 8
XENFEAT_hvm_safe_pvclock = 9
XENFEAT_dom0 = 11
XENFEAT_linux_rsdp_unrestricted = 15
XENFEAT_NR_SUBMAPS = 1
