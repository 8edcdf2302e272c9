"""Constants and structure layouts of the Xen guest ABI (x86-64).

Every number here comes from Xen's public headers (xen/include/public/...) or Linux's copies of them
(include/xen/interface/...); the header is named beside each group. Layouts are given as `struct` format
strings with explicit little-endian, unpadded packing, plus byte offsets where fields are reached singly.
"""

from __future__ import annotations

import struct

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

DOMID_SELF = 0x7FF0

# --- errno.h: Xen's error numbers (returned negated) ---------------------------------------------------
EPERM, ENOENT, ESRCH, EINTR, EIO = 1, 2, 3, 4, 5
E2BIG, EBADF, EAGAIN, ENOMEM, EACCES, EFAULT = 7, 9, 11, 12, 13, 14
EBUSY, EEXIST, ENODEV, EINVAL, ENOSPC = 16, 17, 19, 22, 28
ERANGE, ENOSYS, ETIME, EOPNOTSUPP = 34, 38, 62, 95

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
EVTCHN_2L_NR_CHANNELS = 64 * 64  # 2-level ABI: 64 words of 64 bits

# --- hvm/start_info.h: PVH boot ------------------------------------------------------------------------
HVM_START_MAGIC = 0x336EC578
# magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr,
# memmap_entries, reserved
HVM_START_INFO = struct.Struct("<IIIIQQQQII")
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr, size, cmdline_paddr, reserved
HVM_MEMMAP_ENTRY = struct.Struct("<QQII")  # addr, size, type, reserved
E820_RAM, E820_RESERVED, E820_ACPI = 1, 2, 3

# --- elfnote.h ----------------------------------------------------------------------------------------
XEN_ELFNOTE_PHYS32_ENTRY = 18

# --- version.h ----------------------------------------------------------------------------------------
XENVER_version, XENVER_extraversion, XENVER_compile_info, XENVER_capabilities = 0, 1, 2, 3
XENVER_changeset, XENVER_platform_parameters, XENVER_get_features, XENVER_pagesize = 4, 5, 6, 7
XENVER_guest_handle, XENVER_commandline, XENVER_build_id = 8, 9, 10
# features.h
XENFEAT_writable_page_tables = 0
XENFEAT_auto_translated_physmap = 2
XENFEAT_supervisor_mode_kernel = 3
XENFEAT_hvm_callback_vector = 8
XENFEAT_hvm_safe_pvclock = 9
XENFEAT_linux_rsdp_unrestricted = 15

# --- console_io (xen.h) -------------------------------------------------------------------------------
CONSOLEIO_write, CONSOLEIO_read = 0, 1

# --- memory.h -----------------------------------------------------------------------------------------
XENMEM_increase_reservation, XENMEM_decrease_reservation, XENMEM_maximum_ram_page = 0, 1, 2
XENMEM_current_reservation, XENMEM_maximum_reservation, XENMEM_populate_physmap = 3, 4, 6
XENMEM_add_to_physmap, XENMEM_memory_map, XENMEM_maximum_gpfn = 7, 9, 14
XENMAPSPACE_shared_info, XENMAPSPACE_grant_table, XENMAPSPACE_gmfn = 0, 1, 2
ADD_TO_PHYSMAP = struct.Struct("<HHIQQ")  # domid, size, space, idx, gpfn
MEMORY_MAP = struct.Struct("<I4xQ")  # nr_entries, buffer (guest handle)
E820_ENTRY = struct.Struct("<QQI")  # packed e820 entry as XENMEM_memory_map returns it
MEMORY_RESERVATION = struct.Struct("<QQIH2x")  # extent_start, nr_extents, extent_order, mem_flags, domid

# --- hvm/hvm_op.h, hvm/params.h -----------------------------------------------------------------------
HVMOP_set_param, HVMOP_get_param, HVMOP_pagetable_dying, HVMOP_get_time = 0, 1, 9, 10
HVM_PARAM = struct.Struct("<H2xIQ")  # domid, index, value
HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN = 0, 1, 2
HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN = 17, 18
HVM_NR_PARAMS = 39
HVM_PARAM_CALLBACK_TYPE_VECTOR = 2  # in bits 63:56 of HVM_PARAM_CALLBACK_IRQ

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

# --- sched.h ------------------------------------------------------------------------------------------
SCHEDOP_yield, SCHEDOP_block, SCHEDOP_shutdown, SCHEDOP_poll = 0, 1, 2, 3
SCHEDOP_remote_shutdown, SCHEDOP_shutdown_code, SCHEDOP_watchdog = 4, 5, 6
SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash = 0, 1, 2, 3
SHUTDOWN_watchdog, SHUTDOWN_soft_reset = 4, 5
SHUTDOWN_NAMES = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash", 4: "watchdog", 5: "soft_reset"}
SCHED_POLL = struct.Struct("<QI4xQ")  # ports (handle), nr_ports, timeout

# --- event_channel.h ----------------------------------------------------------------------------------
EVTCHNOP_bind_interdomain, EVTCHNOP_bind_virq, EVTCHNOP_bind_pirq, EVTCHNOP_close = 0, 1, 2, 3
EVTCHNOP_send, EVTCHNOP_status, EVTCHNOP_alloc_unbound, EVTCHNOP_bind_ipi = 4, 5, 6, 7
EVTCHNOP_bind_vcpu, EVTCHNOP_unmask, EVTCHNOP_reset, EVTCHNOP_init_control = 8, 9, 10, 11
EVTCHNOP_expand_array, EVTCHNOP_set_priority = 12, 13
EVTCHNSTAT_closed, EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain = 0, 1, 2
EVTCHNSTAT_pirq, EVTCHNSTAT_virq, EVTCHNSTAT_ipi = 3, 4, 5
EVTCHN_ALLOC_UNBOUND = struct.Struct("<HHI")  # dom, remote_dom, port (OUT)
EVTCHN_BIND_INTERDOMAIN = struct.Struct("<H2xII")  # remote_dom, remote_port, local_port (OUT)
EVTCHN_BIND_VIRQ = struct.Struct("<III")  # virq, vcpu, port (OUT)
EVTCHN_BIND_IPI = struct.Struct("<II")  # vcpu, port (OUT)
EVTCHN_BIND_VCPU = struct.Struct("<II")  # port, vcpu
EVTCHN_PORT = struct.Struct("<I")  # close, send, unmask
EVTCHN_STATUS = struct.Struct("<H2xIII")  # dom, port, status (OUT), vcpu (OUT); union u at 16
EVTCHN_STATUS_UNION = 16

# --- grant_table.h ------------------------------------------------------------------------------------
GNTTABOP_map_grant_ref, GNTTABOP_unmap_grant_ref, GNTTABOP_setup_table = 0, 1, 2
GNTTABOP_copy, GNTTABOP_query_size, GNTTABOP_set_version, GNTTABOP_get_version = 5, 6, 8, 10
GNTTAB_QUERY_SIZE = struct.Struct("<H2xIIh2x")  # dom, nr_frames (OUT), max_nr_frames (OUT), status
GNTTAB_SETUP_TABLE = struct.Struct("<H2xIh6xQ")  # dom, nr_frames, status (OUT), frame_list (handle)
GNTST_okay, GNTST_general_error, GNTST_bad_domain = 0, -1, -2

# --- Port of entry: the two instructions a PVH guest uses to enter the hypervisor ------------------------
VMCALL = b"\x0f\x01\xc1"
VMMCALL = b"\x0f\x01\xd9"
