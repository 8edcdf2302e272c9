"""xen/include/public/elfnote.h: the Xen ELF notes a kernel image carries."""

from __future__ import annotations

__all__ = ["XEN_ELFNOTE_PHYS32_ENTRY"]

# --- elfnote.h ----------------------------------------------------------------------------------------
XEN_ELFNOTE_PHYS32_ENTRY = 18
