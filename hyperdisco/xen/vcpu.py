"""xen/include/public/vcpu.h: the vcpu_op hypercall's commands and argument layouts."""

from __future__ import annotations

import struct

__all__ = [
    "VCPUOP_initialise", "VCPUOP_up", "VCPUOP_down", "VCPUOP_is_up", "VCPUOP_get_runstate_info",
    "VCPUOP_register_runstate_memory_area", "VCPUOP_set_periodic_timer", "VCPUOP_stop_periodic_timer",
    "VCPUOP_set_singleshot_timer", "VCPUOP_stop_singleshot_timer", "VCPUOP_register_vcpu_info",
    "VCPUOP_send_nmi", "VCPUOP_get_physid", "VCPUOP_register_vcpu_time_memory_area", "VCPU_SSHOTTMR_future",
    "SINGLESHOT_TIMER", "REGISTER_VCPU_INFO",
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
