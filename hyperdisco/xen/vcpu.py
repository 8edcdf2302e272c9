"""xen/include/public/vcpu.h: the vcpu_op hypercall's commands and argument layouts."""

from __future__ import annotations

import struct

__all__ = [
    "VCPUOP_initialise", "VCPUOP_up", "VCPUOP_down", "VCPUOP_is_up", "VCPUOP_get_runstate_info",
    "VCPUOP_register_runstate_memory_area", "VCPUOP_set_periodic_timer", "VCPUOP_stop_periodic_timer",
    "VCPUOP_set_singleshot_timer", "VCPUOP_stop_singleshot_timer", "VCPUOP_register_vcpu_info",
    "VCPUOP_send_nmi", "VCPUOP_get_physid", "VCPUOP_register_vcpu_time_memory_area", "VCPU_SSHOTTMR_future",
    "SINGLESHOT_TIMER", "REGISTER_VCPU_INFO", "RUNSTATE_running", "RUNSTATE_runnable", "RUNSTATE_blocked",
    "RUNSTATE_offline", "XEN_RUNSTATE_UPDATE", "RUNSTATE_INFO", "COMPAT_RUNSTATE_INFO",
    "RUNSTATE_ENTRY_TIME", "COMPAT_RUNSTATE_ENTRY_TIME", "REGISTER_RUNSTATE_AREA",
]

# --- vcpu.h -------------------------------------------------------------------------------------------
VCPUOP_initialise, VCPUOP_up, VCPUOP_down, VCPUOP_is_up = 0, 1, 2, 3
VCPUOP_get_runstate_info, VCPUOP_register_runstate_memory_area = 4, 5
VCPUOP_set_periodic_timer, VCPUOP_stop_periodic_timer = 6, 7
VCPUOP_set_singleshot_timer, VCPUOP_stop_singleshot_timer = 8, 9
VCPUOP_register_vcpu_info, VCPUOP_send_nmi, VCPUOP_get_physid = 10, 11, 12
VCPUOP_register_vcpu_time_memory_area = 13
VCPU_SSHOTTMR_future = 1
SINGLESHOT_TIMER = struct.Struct("<QI4x")  # timeout_abs_ns, flags
REGISTER_VCPU_INFO = struct.Struct("<QII")  # mfn, offset, rsvd
# struct vcpu_runstate_info: int state; uint64_t state_entry_time; uint64_t time[4] (ns of Xen system time
# in each state). Native: state padded to 8 (48 bytes); compat (i386 ABI, uint64_t aligned to 4): 44 bytes.
RUNSTATE_running, RUNSTATE_runnable, RUNSTATE_blocked, RUNSTATE_offline = 0, 1, 2, 3
XEN_RUNSTATE_UPDATE = 1 << 63  # in state_entry_time while the hypervisor rewrites the area (VMASST below)
RUNSTATE_INFO = struct.Struct("<i4xQ4Q")
COMPAT_RUNSTATE_INFO = struct.Struct("<iQ4Q")
RUNSTATE_ENTRY_TIME, COMPAT_RUNSTATE_ENTRY_TIME = 8, 4  # offset of state_entry_time in each layout
REGISTER_RUNSTATE_AREA = struct.Struct("<Q")  # union { guest handle; pointer; uint64_t p } addr
