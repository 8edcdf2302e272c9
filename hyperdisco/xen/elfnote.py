"""xen/include/public/elfnote.h: the Xen ELF notes a kernel image carries (owner name "Xen")."""

from __future__ import annotations

__all__ = [
    "XEN_ELFNOTE_INFO", "XEN_ELFNOTE_ENTRY", "XEN_ELFNOTE_HYPERCALL_PAGE", "XEN_ELFNOTE_VIRT_BASE",
    "XEN_ELFNOTE_PADDR_OFFSET", "XEN_ELFNOTE_XEN_VERSION", "XEN_ELFNOTE_GUEST_OS",
    "XEN_ELFNOTE_GUEST_VERSION", "XEN_ELFNOTE_LOADER", "XEN_ELFNOTE_PAE_MODE", "XEN_ELFNOTE_FEATURES",
    "XEN_ELFNOTE_BSD_SYMTAB", "XEN_ELFNOTE_HV_START_LOW", "XEN_ELFNOTE_L1_MFN_VALID",
    "XEN_ELFNOTE_SUSPEND_CANCEL", "XEN_ELFNOTE_INIT_P2M", "XEN_ELFNOTE_MOD_START_PFN",
    "XEN_ELFNOTE_SUPPORTED_FEATURES", "XEN_ELFNOTE_PHYS32_ENTRY",
]

# --- elfnote.h ----------------------------------------------------------------------------------------
XEN_ELFNOTE_INFO = 0  # no descriptor: never used by a loader
XEN_ELFNOTE_ENTRY = 1  # numeric: PV virtual entry point (ignored for PVH)
XEN_ELFNOTE_HYPERCALL_PAGE = 2  # numeric: PV hypercall page virtual address (PVH asks by MSR instead)
XEN_ELFNOTE_VIRT_BASE = 3  # numeric: PV virtual base (forced to 0 for PVH)
XEN_ELFNOTE_PADDR_OFFSET = 4  # numeric: PV paddr offset (forced to 0 for PVH)
XEN_ELFNOTE_XEN_VERSION = 5  # string: "xen-3.0"
XEN_ELFNOTE_GUEST_OS = 6  # string: "linux", "Plan9"...
XEN_ELFNOTE_GUEST_VERSION = 7  # string
XEN_ELFNOTE_LOADER = 8  # string: "generic"
XEN_ELFNOTE_PAE_MODE = 9  # string: "yes", "bimodal"...
XEN_ELFNOTE_FEATURES = 10  # string: feature names separated by '|', '!' prefix = required
XEN_ELFNOTE_BSD_SYMTAB = 11  # string: "yes"
XEN_ELFNOTE_HV_START_LOW = 12  # numeric
XEN_ELFNOTE_L1_MFN_VALID = 13  # numeric (mask, value) pairs
XEN_ELFNOTE_SUSPEND_CANCEL = 14  # numeric
XEN_ELFNOTE_INIT_P2M = 15  # numeric
XEN_ELFNOTE_MOD_START_PFN = 16  # numeric
XEN_ELFNOTE_SUPPORTED_FEATURES = 17  # array of 32-bit feature bitmaps, one per submap
XEN_ELFNOTE_PHYS32_ENTRY = 18  # numeric: 32-bit physical PVH entry point
