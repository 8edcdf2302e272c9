"""xen/include/public/version.h: the xen_version hypercall's commands."""

from __future__ import annotations

__all__ = [
    "XENVER_version", "XENVER_extraversion", "XENVER_compile_info", "XENVER_capabilities",
    "XENVER_changeset", "XENVER_platform_parameters", "XENVER_get_features", "XENVER_pagesize",
    "XENVER_guest_handle", "XENVER_commandline", "XENVER_build_id",
]

# --- version.h ----------------------------------------------------------------------------------------
XENVER_version, XENVER_extraversion, XENVER_compile_info, XENVER_capabilities = 0, 1, 2, 3
XENVER_changeset, XENVER_platform_parameters, XENVER_get_features, XENVER_pagesize = 4, 5, 6, 7
XENVER_guest_handle, XENVER_commandline, XENVER_build_id = 8, 9, 10
