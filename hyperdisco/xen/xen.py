"""xen/include/public/xen.h and arch-x86/xen.h (x86-64): the page, hypercall numbers, virtual IRQs,
DOMID_SELF, struct shared_info / struct vcpu_info, console_io."""

from __future__ import annotations

import struct

__all__ = [
    "PAGE", "HYPERCALLS", "HYPERCALL_NUMBERS", "VIRQ_TIMER", "VIRQ_DEBUG", "VIRQ_CONSOLE", "VIRQ_DOM_EXC",
    "NR_VIRQS", "DOMID_FIRST_RESERVED", "DOMID_SELF", "XEN_LEGACY_MAX_VCPUS", "VCPU_INFO_SIZE",
    "VI_UPCALL_PENDING", "VI_UPCALL_MASK", "VI_PENDING_SEL", "VI_TIME", "VCPU_TIME_INFO",
    "XEN_PVCLOCK_TSC_STABLE_BIT", "SI_EVTCHN_PENDING", "SI_EVTCHN_MASK", "SI_WC_VERSION", "WALLCLOCK",
    "COMPAT_VI_PENDING_SEL", "COMPAT_SI_EVTCHN_MASK", "COMPAT_SI_WC_VERSION", "COMPAT_SI_WC_SEC_HI",
    "COMPAT_WALLCLOCK", "EVTCHN_2L_COMPAT_NR_CHANNELS",
    "CONSOLEIO_write", "CONSOLEIO_read", "VMASST_CMD_enable", "VMASST_CMD_disable",
    "VMASST_TYPE_runstate_update_flag", "MULTICALL_ENTRY", "MULTICALL_ENTRY_COMPAT",
]

# --- xen.h / arch-x86/xen.h: the page (XEN_PAGE_SHIFT 12): the one definition every layer uses --------
PAGE = 4096

# --- xen.h: hypercall numbers --------------------------------------------------------------------------
HYPERCALLS: dict[int, str] = {
    0: "set_trap_table", 1: "mmu_update", 2: "set_gdt", 3: "stack_switch", 4: "set_callbacks",
    5: "fpu_taskswitch", 6: "sched_op_compat", 7: "platform_op", 8: "set_debugreg", 9: "get_debugreg",
    10: "update_descriptor", 12: "memory_op", 13: "multicall", 14: "update_va_mapping",
    15: "set_timer_op", 16: "event_channel_op_compat", 17: "xen_version", 18: "console_io",
    19: "physdev_op_compat", 20: "grant_table_op", 21: "vm_assist", 22: "update_va_mapping_otherdomain",
    23: "iret", 24: "vcpu_op", 25: "set_segment_base", 26: "mmuext_op", 27: "xsm_op", 28: "nmi_op",
    29: "sched_op", 30: "callback_op", 31: "xenoprof_op", 32: "event_channel_op", 33: "physdev_op",
    34: "hvm_op", 35: "sysctl", 36: "domctl", 37: "kexec_op", 38: "tmem_op", 39: "argo_op",
    40: "xenpmu_op", 41: "dm_op", 42: "hypfs_op",
}
HYPERCALL_NUMBERS = {name: nr for nr, name in HYPERCALLS.items()}

# --- xen.h: virtual IRQs ------------------------------------------------------------------------------
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
VIRQ_DOM_EXC = 3
NR_VIRQS = 24

DOMID_FIRST_RESERVED = 0x7FF0  # xen.h: DOMID_SELF and friends start here
DOMID_SELF = 0x7FF0

# --- xen.h: struct shared_info / struct vcpu_info (x86-64) --------------------------------------------
XEN_LEGACY_MAX_VCPUS = 32
VCPU_INFO_SIZE = 64
VI_UPCALL_PENDING = 0  # uint8_t evtchn_upcall_pending
VI_UPCALL_MASK = 1  # uint8_t evtchn_upcall_mask
VI_PENDING_SEL = 8  # xen_ulong_t evtchn_pending_sel
VI_TIME = 32  # struct vcpu_time_info (after struct arch_vcpu_info {cr2, pad})
# struct vcpu_time_info: version, pad0, tsc_timestamp, system_time, tsc_to_system_mul, tsc_shift, flags
VCPU_TIME_INFO = struct.Struct("<IIQQIbB2x")
XEN_PVCLOCK_TSC_STABLE_BIT = 1
SI_EVTCHN_PENDING = XEN_LEGACY_MAX_VCPUS * VCPU_INFO_SIZE  # 2048: xen_ulong_t evtchn_pending[64]
SI_EVTCHN_MASK = SI_EVTCHN_PENDING + 64 * 8  # 2560: xen_ulong_t evtchn_mask[64]
SI_WC_VERSION = SI_EVTCHN_MASK + 64 * 8  # 3072: wc_version, wc_sec, wc_nsec, wc_sec_hi
WALLCLOCK = struct.Struct("<IIII")
# The same structures as a 32-bit guest compiles them (xen_ulong_t and unsigned long are 4 bytes): Xen
# gives a PVH/HVM domain this layout when it latched 32-bit mode (hvm.c hvm_latch_shinfo_size).
# vcpu_info: evtchn_pending_sel at 4; arch_vcpu_info {cr2, pad[5]} is 24 bytes, so time stays at 32.
COMPAT_VI_PENDING_SEL = 4
# shared_info: vcpu_info[32], then evtchn_pending[32] and evtchn_mask[32] of 32-bit words, the wallclock
# (version, sec, nsec), then arch_shared_info {max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3,
# p2m_vaddr, p2m_generation, wc_sec_hi} (arch-x86/xen.h: wc_sec_hi lives there on i386)
COMPAT_SI_EVTCHN_MASK = SI_EVTCHN_PENDING + 32 * 4  # 2176
COMPAT_SI_WC_VERSION = COMPAT_SI_EVTCHN_MASK + 32 * 4  # 2304
COMPAT_SI_WC_SEC_HI = COMPAT_SI_WC_VERSION + 12 + 6 * 4  # 2340
COMPAT_WALLCLOCK = struct.Struct("<III")
EVTCHN_2L_COMPAT_NR_CHANNELS = 32 * 32  # sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64 / 8 on i386

# --- console_io (xen.h) -------------------------------------------------------------------------------
CONSOLEIO_write, CONSOLEIO_read = 0, 1

# --- xen.h: HYPERVISOR_vm_assist(cmd, type); an HVM domain may enable only runstate_update_flag
# (xen/arch/x86/include/asm/domain.h HVM_VM_ASSIST_MASK)
VMASST_CMD_enable, VMASST_CMD_disable = 0, 1
VMASST_TYPE_runstate_update_flag = 5

# --- xen.h: struct multicall_entry {xen_ulong_t op, result; xen_ulong_t args[6];} (64 bytes; i386: 32) ----
MULTICALL_ENTRY = struct.Struct("<QQ6Q")
MULTICALL_ENTRY_COMPAT = struct.Struct("<II6I")
