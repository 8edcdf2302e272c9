"""xen.h's multicall entry, sched.h's watchdog and physdev.h's commands: the hypercalls a PVH guest may
make besides the per-subsystem ones."""

from __future__ import annotations

import struct

__all__ = [
    "MULTICALL_ENTRY", "MULTICALL_ENTRY_COMPAT", "PHYSDEVOP_irq_status_query",
    "PHYSDEVOP_eoi", "PHYSDEVOP_map_pirq", "PHYSDEVOP_unmap_pirq", "PHYSDEVOP_get_free_pirq",
    "SCHED_WATCHDOG", "NR_DOMAIN_WATCHDOG_TIMERS",
]

# --- xen.h: struct multicall_entry {xen_ulong_t op, result; xen_ulong_t args[6];} (64 bytes; i386: 32) ----
MULTICALL_ENTRY = struct.Struct("<QQ6Q")
MULTICALL_ENTRY_COMPAT = struct.Struct("<II6I")

# --- physdev.h ------------------------------------------------------------------------------------------
PHYSDEVOP_irq_status_query, PHYSDEVOP_eoi, PHYSDEVOP_map_pirq, PHYSDEVOP_unmap_pirq = 5, 12, 13, 14
PHYSDEVOP_get_free_pirq = 23

# --- sched.h: struct sched_watchdog {uint32_t id; uint32_t timeout;} ------------------------------------
SCHED_WATCHDOG = struct.Struct("<II")
NR_DOMAIN_WATCHDOG_TIMERS = 2  # xen/include/xen/sched.h
