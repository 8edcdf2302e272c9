"""xen/include/public/features.h: the feature bits XENVER_get_features reports."""

from __future__ import annotations

__all__ = [
    "XENFEAT_writable_page_tables", "XENFEAT_auto_translated_physmap", "XENFEAT_supervisor_mode_kernel",
    "XENFEAT_hvm_callback_vector", "XENFEAT_hvm_safe_pvclock", "XENFEAT_linux_rsdp_unrestricted",
]

# --- features.h ---------------------------------------------------------------------------------------
XENFEAT_writable_page_tables = 0
XENFEAT_auto_translated_physmap = 2
XENFEAT_supervisor_mode_kernel = 3
XENFEAT_hvm_callback_vector = 8
XENFEAT_hvm_safe_pvclock = 9
XENFEAT_linux_rsdp_unrestricted = 15
