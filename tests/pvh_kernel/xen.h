/* The Xen ABI facts the test kernel uses, from Xen's public headers (xen/include/public/): numbers only,
 * the structures are written out where they are used. */
#ifndef XEN_H
#define XEN_H

/* xen.h: hypercall numbers */
#define __HYPERVISOR_memory_op         12
#define __HYPERVISOR_multicall         13
#define __HYPERVISOR_set_timer_op      15
#define __HYPERVISOR_xen_version       17
#define __HYPERVISOR_console_io        18
#define __HYPERVISOR_grant_table_op    20
#define __HYPERVISOR_vcpu_op           24
#define __HYPERVISOR_sched_op          29
#define __HYPERVISOR_event_channel_op  32
#define __HYPERVISOR_physdev_op        33
#define __HYPERVISOR_hvm_op            34

#define DOMID_SELF  0x7ff0
#define CONSOLEIO_write 0
#define CONSOLEIO_read  1

/* xen/include/public/errno.h (the values Xen returns negated) */
#define XEN_EPERM    1
#define XEN_ENOENT   2
#define XEN_ESRCH    3
#define XEN_EFAULT   14
#define XEN_EBUSY    16
#define XEN_EEXIST   17
#define XEN_EINVAL   22
#define XEN_ENOSPC   28
#define XEN_ENOSYS   38
#define XEN_ETIME    62
#define XEN_EOPNOTSUPP 95

/* sched.h */
#define SCHEDOP_yield     0
#define SCHEDOP_block     1
#define SCHEDOP_shutdown  2
#define SCHEDOP_poll      3
#define SCHEDOP_remote_shutdown 4
#define SHUTDOWN_poweroff 0
#define SHUTDOWN_crash    3

/* version.h */
#define XENVER_version      0
#define XENVER_extraversion 1
#define XENVER_get_features 6
#define XENVER_pagesize     7

/* event_channel.h */
#define EVTCHNOP_bind_interdomain 0
#define EVTCHNOP_bind_virq    1
#define EVTCHNOP_close        3
#define EVTCHNOP_send         4
#define EVTCHNOP_status       5
#define EVTCHNOP_alloc_unbound 6
#define EVTCHNOP_bind_ipi     7
#define EVTCHNOP_bind_vcpu    8
#define EVTCHNOP_unmask       9
#define EVTCHNOP_reset        10
#define EVTCHNOP_init_control 11
#define EVTCHNOP_expand_array 12
#define EVTCHNOP_set_priority 13

/* grant_table.h */
#define GNTTABOP_map_grant_ref   0
#define GNTTABOP_unmap_grant_ref 1
#define GNTTABOP_setup_table     2
#define GNTTABOP_copy            5
#define GNTTABOP_query_size      6
#define GNTTABOP_set_version     8
#define GNTTABOP_get_version     10
#define GNTMAP_host_map  (1 << 1)
#define GNTST_okay          0
#define GNTST_general_error (-1)
#define GNTST_bad_domain    (-2)
#define GNTST_bad_gntref    (-3)
#define GNTST_bad_handle    (-4)

/* memory.h */
#define XENMEM_increase_reservation 0
#define XENMEM_decrease_reservation 1
#define XENMEM_maximum_ram_page     2
#define XENMEM_current_reservation  3
#define XENMEM_maximum_reservation  4
#define XENMEM_populate_physmap     6
#define XENMEM_add_to_physmap       7
#define XENMEM_memory_map           9
#define XENMEM_maximum_gpfn         14
#define XENMAPSPACE_shared_info 0
#define XENMAPSPACE_grant_table 1

/* vcpu.h */
#define VCPUOP_initialise 0
#define VCPUOP_up         1
#define VCPUOP_down       2
#define VCPUOP_is_up      3
#define VCPUOP_get_runstate_info 4
#define VCPUOP_register_runstate_memory_area 5
#define VCPUOP_set_periodic_timer   6
#define VCPUOP_stop_periodic_timer  7
#define VCPUOP_set_singleshot_timer 8
#define VCPUOP_stop_singleshot_timer 9
#define VCPUOP_register_vcpu_info   10

/* hvm/hvm_op.h, hvm/params.h */
#define HVMOP_set_param 0
#define HVMOP_get_param 1
#define HVM_PARAM_CALLBACK_IRQ 0
#define HVM_PARAM_STORE_PFN    1
#define HVM_PARAM_STORE_EVTCHN 2
#define HVM_PARAM_CONSOLE_PFN  17
#define HVM_NR_PARAMS 39

/* arch-x86/hvm/start_info.h */
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578
struct hvm_start_info {
    unsigned int magic, version, flags, nr_modules;
    unsigned long modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    unsigned int memmap_entries, reserved;
};

#endif
