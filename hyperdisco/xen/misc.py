"""xen.h's multicall entry and vm_assist types, and physdev.h's commands: the hypercalls a PVH guest may
make besides the per-subsystem ones."""

from __future__ import annotations

import struct

__all__ = [
    "MULTICALL_ENTRY", "MULTICALL_ENTRY_COMPAT", "VMASST_CMD_enable", "VMASST_CMD_disable",
    "VMASST_TYPE_runstate_update_flag", "HVM_VM_ASSIST_MASK", "PHYSDEVOP_irq_status_query",
    "PHYSDEVOP_eoi", "PHYSDEVOP_map_pirq", "PHYSDEVOP_unmap_pirq", "PHYSDEVOP_get_free_pirq",
    "SCHED_WATCHDOG", "NR_DOMAIN_WATCHDOG_TIMERS",
]

# --- xen.h: struct multicall_entry {xen_ulong_t op, result; xen_ulong_t args[6];} (64 bytes; i386: 32) ----
MULTICALL_ENTRY = struct.Struct("<QQ6Q")
MULTICALL_ENTRY_COMPAT = struct.Struct("<II6I")

# --- xen.h: vm_assist(cmd, type) ------------------------------------------------------------------------
VMASST_CMD_enable, VMASST_CMD_disable = 0, 1
VMASST_TYPE_runstate_update_flag = 5
# xen/arch/x86/include/asm/domain.h: the only type an HVM/PVH domain may set
HVM_VM_ASSIST_MASK = 1 << VMASST_TYPE_runstate_update_flag

# --- physdev.h ------------------------------------------------------------------------------------------
PHYSDEVOP_irq_status_query, PHYSDEVOP_eoi, PHYSDEVOP_map_pirq, PHYSDEVOP_unmap_pirq = 5, 12, 13, 14
PHYSDEVOP_get_free_pirq = 23

# --- sched.h: struct sched_watchdog {uint32_t id; uint32_t timeout;} ------------------------------------
SCHED_WATCHDOG = struct.Struct("<II")
NR_DOMAIN_WATCHDOG_TIMERS = 2  # xen/include/xen/sched.h
