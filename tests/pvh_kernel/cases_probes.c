/*
 * Hypercall argument probes: every hypercall hyperdisco implements, called with bad arguments, checked
 * against the error Xen returns. Where each comes from (xen-project/xen):
 *   event_channel.c   evtchn_send/close/status/bind_virq/bind_ipi/bind_vcpu/unmask, do_event_channel_op
 *   grant_table.c     do_grant_table_op (count checks), map_grant_ref (flags, domain), unmap (handle)
 *   arch/x86/mm.c     XENMEM_memory_map (truncates to the caller's nr_entries); common/memory.c
 *   common/domain.c   do_vcpu_op (unknown vCPU: -ENOENT; periodic timer < 1 ms: -EINVAL; ETIME)
 *   common/sched/core.c  do_poll (nr_ports > 128: -EINVAL; port >= max_evtchns: -EINVAL)
 *   common/kernel.c   do_xen_version (get_features submap != 0: -EINVAL; pagesize with a buffer: -EINVAL)
 *   drivers/char/console.c  do_console_io (unknown cmd: -ENOSYS)
 *   arch/x86/hvm/hypercall.c  hvm_hypercall (64-bit mode: the whole of RAX is the number; none: -ENOSYS)
 *   arch/x86/hvm/hvm.c  hvm_allow_get_param (the ioreq pages are the device model's: -EPERM)
 * and every pointer argument outside the domain's memory gives -EFAULT (copy_from/to_guest).
 */
#include "kernel.h"

#define E(x) (-(long)(x))

/* addresses a guest may pass that are not its memory: not mapped by its page tables, non-canonical,
 * mapped but neither RAM nor MMIO (the hole above RAM) */
static const unsigned long bad_ptrs[] = {0x00007f0000000000ul, 0x8000000000000000ul, 0xc0000000ul,
                                         0xfffffffffffff000ul};
#define NBAD (sizeof(bad_ptrs) / sizeof(bad_ptrs[0]))

static char label_buf[96];
static const char *label(const char *what, int i)
{
    ksnprintf(label_buf, sizeof(label_buf), "%s_%d", what, i);
    return label_buf;
}

/* one call per bad pointer: each must be -EFAULT */
#define EXPECT_EFAULT_ALL(what, nr, a1, expr_with_p)                                                 \
    for (unsigned int i_ = 0; i_ < NBAD; i_++) {                                                     \
        unsigned long p = bad_ptrs[i_];                                                              \
        EXPECT_EQ(label(what, (int)i_), hypercall(nr, a1, expr_with_p, 0, 0, 0), E(XEN_EFAULT));     \
    }

static long evtchn(int cmd, void *arg)
{
    return HYPERCALL2(__HYPERVISOR_event_channel_op, cmd, arg);
}

struct evtchn_alloc_unbound { uint16_t dom, remote_dom; uint32_t port; };
struct evtchn_bind_interdomain { uint16_t remote_dom; uint32_t remote_port, local_port; };
struct evtchn_bind_virq { uint32_t virq, vcpu, port; };
struct evtchn_bind_ipi { uint32_t vcpu, port; };
struct evtchn_status { uint16_t dom; uint32_t port, status, vcpu; uint64_t u; };
struct evtchn_bind_vcpu { uint32_t port, vcpu; };

static uint32_t alloc_unbound_self(void)
{
    struct evtchn_alloc_unbound a = {DOMID_SELF, 0, 0};
    long rc = evtchn(EVTCHNOP_alloc_unbound, &a);
    EXPECT_EQ("alloc_unbound_self", rc, 0);
    return a.port;
}

CASE(probe_evtchn)
{
    static const uint32_t bad_ports[] = {0, 4096, 100000, 0xffffffffu};
    for (unsigned int i = 0; i < 4; i++) {
        uint32_t port = bad_ports[i];
        EXPECT_EQ(label("send_bad_port", (int)i), evtchn(EVTCHNOP_send, &port), E(XEN_EINVAL));
        EXPECT_EQ(label("close_bad_port", (int)i), evtchn(EVTCHNOP_close, &port), E(XEN_EINVAL));
        if (port) /* port 0 is valid (reserved) in Xen: unmasking it is allowed */
            EXPECT_EQ(label("unmask_bad_port", (int)i), evtchn(EVTCHNOP_unmask, &port), E(XEN_EINVAL));
        struct evtchn_bind_vcpu bv = {port, 0};
        EXPECT_EQ(label("bind_vcpu_bad_port", (int)i), evtchn(EVTCHNOP_bind_vcpu, &bv), E(XEN_EINVAL));
    }
    for (unsigned int i = 1; i < 4; i++) {
        struct evtchn_status st = {DOMID_SELF, bad_ports[i], 0, 0, 0};
        EXPECT_EQ(label("status_bad_port", (int)i), evtchn(EVTCHNOP_status, &st), E(XEN_EINVAL));
    }

    /* an unbound port: send is silently dropped; close works once */
    uint32_t port = alloc_unbound_self();
    EXPECT_EQ("send_unbound", evtchn(EVTCHNOP_send, &port), 0);
    struct evtchn_status st = {DOMID_SELF, port, 0, 0, 0};
    EXPECT_EQ("status_unbound", evtchn(EVTCHNOP_status, &st), 0);
    EXPECT_EQ("status_unbound_state", st.status, 1 /* EVTCHNSTAT_unbound */);
    struct evtchn_bind_vcpu bv = {port, 1};
    EXPECT_EQ("bind_vcpu_bad_vcpu", evtchn(EVTCHNOP_bind_vcpu, &bv), E(XEN_ENOENT));
    EXPECT_EQ("close_unbound", evtchn(EVTCHNOP_close, &port), 0);
    EXPECT_EQ("close_twice", evtchn(EVTCHNOP_close, &port), E(XEN_EINVAL));
    EXPECT_EQ("send_closed", evtchn(EVTCHNOP_send, &port), E(XEN_EINVAL));

    /* other domains' ports: not ours to look at or allocate */
    struct evtchn_status st0 = {0, 1, 0, 0, 0};
    EXPECT_EQ("status_dom0", evtchn(EVTCHNOP_status, &st0), E(XEN_EPERM));
    struct evtchn_alloc_unbound a0 = {0, 0, 0};
    EXPECT_EQ("alloc_unbound_for_dom0", evtchn(EVTCHNOP_alloc_unbound, &a0), E(XEN_EPERM));
    struct evtchn_bind_interdomain bi = {DOMID_SELF, 4096, 0};
    EXPECT_EQ("bind_interdomain_bad_port", evtchn(EVTCHNOP_bind_interdomain, &bi), E(XEN_EINVAL));
    struct { uint16_t dom; } reset0 = {0};
    EXPECT_EQ("reset_dom0", evtchn(EVTCHNOP_reset, &reset0), E(XEN_EPERM));

    /* VIRQs: range, per-vCPU vs global, bad vCPUs, double binding */
    struct evtchn_bind_virq v = {24 /* NR_VIRQS */, 0, 0};
    EXPECT_EQ("bind_virq_range", evtchn(EVTCHNOP_bind_virq, &v), E(XEN_EINVAL));
    v = (struct evtchn_bind_virq){0xffffffffu, 0, 0};
    EXPECT_EQ("bind_virq_negative", evtchn(EVTCHNOP_bind_virq, &v), E(XEN_EINVAL));
    v = (struct evtchn_bind_virq){2 /* VIRQ_CONSOLE: global */, 1, 0};
    EXPECT_EQ("bind_global_virq_vcpu1", evtchn(EVTCHNOP_bind_virq, &v), E(XEN_EINVAL));
    v = (struct evtchn_bind_virq){0 /* VIRQ_TIMER: per vCPU */, 1, 0};
    EXPECT_EQ("bind_virq_bad_vcpu", evtchn(EVTCHNOP_bind_virq, &v), E(XEN_ENOENT));
    v = (struct evtchn_bind_virq){0, 0xffffffffu, 0};
    EXPECT_EQ("bind_virq_vcpu_negative", evtchn(EVTCHNOP_bind_virq, &v), E(XEN_ENOENT));
    v = (struct evtchn_bind_virq){1 /* VIRQ_DEBUG: per vCPU */, 0, 0};
    EXPECT_EQ("bind_virq_debug", evtchn(EVTCHNOP_bind_virq, &v), 0);
    uint32_t virq_port = v.port;
    EXPECT_EQ("bind_virq_twice", evtchn(EVTCHNOP_bind_virq, &v), E(XEN_EEXIST));
    EXPECT_EQ("send_virq", evtchn(EVTCHNOP_send, &virq_port), E(XEN_EINVAL));
    bv = (struct evtchn_bind_vcpu){virq_port, 0};
    EXPECT_EQ("bind_vcpu_per_vcpu_virq", evtchn(EVTCHNOP_bind_vcpu, &bv), E(XEN_EINVAL));
    EXPECT_EQ("close_virq", evtchn(EVTCHNOP_close, &virq_port), 0);

    /* IPIs */
    struct evtchn_bind_ipi ipi = {1, 0};
    EXPECT_EQ("bind_ipi_bad_vcpu", evtchn(EVTCHNOP_bind_ipi, &ipi), E(XEN_ENOENT));
    ipi = (struct evtchn_bind_ipi){0x80000000u, 0};
    EXPECT_EQ("bind_ipi_vcpu_negative", evtchn(EVTCHNOP_bind_ipi, &ipi), E(XEN_ENOENT));
    ipi = (struct evtchn_bind_ipi){0, 0};
    EXPECT_EQ("bind_ipi", evtchn(EVTCHNOP_bind_ipi, &ipi), 0);
    bv = (struct evtchn_bind_vcpu){ipi.port, 0};
    EXPECT_EQ("bind_vcpu_ipi", evtchn(EVTCHNOP_bind_vcpu, &bv), E(XEN_EINVAL));
    EXPECT_EQ("close_ipi", evtchn(EVTCHNOP_close, &ipi.port), 0);

    EXPECT_EQ("unknown_subop", evtchn(99, scratch), E(XEN_ENOSYS));
    /* pointers that are not the domain's memory, for every sub-op that reads its argument */
    static const int ops[] = {EVTCHNOP_bind_interdomain, EVTCHNOP_bind_virq, EVTCHNOP_close, EVTCHNOP_send,
                              EVTCHNOP_status, EVTCHNOP_alloc_unbound, EVTCHNOP_bind_ipi, EVTCHNOP_bind_vcpu,
                              EVTCHNOP_unmask};
    for (unsigned int k = 0; k < sizeof(ops) / sizeof(ops[0]); k++) {
        char what[32];
        ksnprintf(what, sizeof(what), "op%d_bad_ptr", ops[k]);
        EXPECT_EFAULT_ALL(what, __HYPERVISOR_event_channel_op, ops[k], p);
    }
    /* unaligned but inside RAM: fine; straddling the end of RAM: -EFAULT */
    struct evtchn_status *odd = (struct evtchn_status *)(scratch + 4093);
    odd->dom = DOMID_SELF, odd->port = 1;
    EXPECT_EQ("status_unaligned", evtchn(EVTCHNOP_status, odd), 0);
    EXPECT_EQ("send_straddles_ram_end", evtchn(EVTCHNOP_send, (void *)(ram_end - 2)), E(XEN_EFAULT));
}

struct gnttab_query_size { uint16_t dom; uint32_t nr_frames, max_nr_frames; int16_t status; };
struct gnttab_map_grant_ref {
    uint64_t host_addr; uint32_t flags, ref; uint16_t dom; int16_t status; uint32_t handle; uint64_t dev_bus_addr;
};
struct gnttab_unmap_grant_ref { uint64_t host_addr, dev_bus_addr; uint32_t handle; int16_t status; };

static long gnttab(int cmd, void *arg, unsigned long count)
{
    return HYPERCALL3(__HYPERVISOR_grant_table_op, cmd, arg, count);
}

static int16_t map_status(uint16_t dom, uint32_t ref, uint32_t flags, long *rc)
{
    struct gnttab_map_grant_ref m = {(uint64_t)(scratch + 8 * 4096), flags, ref, dom, 0x7777, 0, 0};
    *rc = gnttab(GNTTABOP_map_grant_ref, &m, 1);
    return m.status;
}

CASE(probe_grant)
{
    struct gnttab_query_size q = {DOMID_SELF, 0, 0, 0};
    EXPECT_EQ("query_size_count_2", gnttab(GNTTABOP_query_size, &q, 2), E(XEN_EINVAL));
    EXPECT_EQ("setup_table_count_2", gnttab(GNTTABOP_setup_table, scratch, 2), E(XEN_EINVAL));
    EXPECT_EQ("query_size", gnttab(GNTTABOP_query_size, &q, 1), 0);
    EXPECT_EQ("query_size_status", q.status, GNTST_okay);
    q = (struct gnttab_query_size){0, 0, 0, 0};
    EXPECT_EQ("query_size_dom0", gnttab(GNTTABOP_query_size, &q, 1), 0);
    EXPECT_EQ("query_size_dom0_status", q.status, -8 /* GNTST_permission_denied */);
    q = (struct gnttab_query_size){0x7ff5, 0, 0, 0};
    EXPECT_EQ("query_size_reserved_domid", gnttab(GNTTABOP_query_size, &q, 1), 0);
    EXPECT_EQ("query_size_reserved_domid_status", q.status, GNTST_bad_domain);

    long rc;
    EXPECT_EQ("map_no_flags", map_status(0, 1, 0, &rc), GNTST_bad_gntref);
    EXPECT_EQ("map_no_flags_rc", rc, 0);
    EXPECT_EQ("map_contains_pte", map_status(0, 1, GNTMAP_host_map | (1 << 4), &rc), GNTST_general_error);
    EXPECT_EQ("map_device_map", map_status(0, 1, GNTMAP_host_map | 1, &rc), GNTST_general_error);
    EXPECT_EQ("map_domid_self", map_status(DOMID_SELF, 1, GNTMAP_host_map, &rc), GNTST_bad_domain);
    EXPECT_EQ("map_domid_reserved", map_status(0x7ff5, 1, GNTMAP_host_map, &rc), GNTST_bad_domain);
    EXPECT_EQ("map_dom0_bad_ref", map_status(0, 0xffffffffu, GNTMAP_host_map, &rc), GNTST_bad_gntref);
    EXPECT_EQ("map_dom0_bad_ref_rc", rc, 0);
    EXPECT_EQ("map_dom0_ungranted_ref", map_status(0, 1, GNTMAP_host_map, &rc), GNTST_general_error);

    struct gnttab_unmap_grant_ref u = {0, 0, 0xffffffffu, 0x7777};
    EXPECT_EQ("unmap_bad_handle_rc", gnttab(GNTTABOP_unmap_grant_ref, &u, 1), 0);
    EXPECT_EQ("unmap_bad_handle", u.status, GNTST_bad_handle);

    /* counts: (int)count < 0 is -EINVAL; a count of ops at a pointer that is not memory: -EFAULT */
    EXPECT_EQ("map_count_negative", gnttab(GNTTABOP_map_grant_ref, scratch, 0x80000000ul), E(XEN_EINVAL));
    EXPECT_EQ("unmap_count_negative", gnttab(GNTTABOP_unmap_grant_ref, scratch, 0xfffffffful), E(XEN_EINVAL));
    for (unsigned int i = 0; i < NBAD; i++) {
        EXPECT_EQ(label("map_bad_ptr", (int)i), gnttab(GNTTABOP_map_grant_ref, (void *)bad_ptrs[i], 1),
                  E(XEN_EFAULT));
        EXPECT_EQ(label("unmap_bad_ptr", (int)i), gnttab(GNTTABOP_unmap_grant_ref, (void *)bad_ptrs[i], 1),
                  E(XEN_EFAULT));
        EXPECT_EQ(label("query_size_bad_ptr", (int)i), gnttab(GNTTABOP_query_size, (void *)bad_ptrs[i], 1),
                  E(XEN_EFAULT));
    }
    EXPECT_EQ("unknown_subop", gnttab(99, scratch, 1), E(XEN_ENOSYS));
}

struct xen_memory_map { uint32_t nr_entries; uint64_t buffer; };
struct xen_add_to_physmap { uint16_t domid, size; uint32_t space; uint64_t idx, gpfn; };

static long memop(int cmd, void *arg)
{
    return HYPERCALL2(__HYPERVISOR_memory_op, cmd, arg);
}

CASE(probe_memory)
{
    EXPECT_EQ("unknown_op", memop(63, scratch), E(XEN_ENOSYS));
    uint16_t dom0 = 0;
    EXPECT_EQ("current_reservation_dom0", memop(XENMEM_current_reservation, &dom0), E(XEN_EPERM));
    uint16_t self = DOMID_SELF;
    check("current_reservation_self", memop(XENMEM_current_reservation, &self) > 0, "not positive");

    /* memory_map: a buffer too small for the map gets as many entries as it holds */
    struct xen_memory_map m = {2, (uint64_t)(scratch + 4096)};
    memset(scratch + 4096, 0xa5, 64);
    EXPECT_EQ("memory_map_short", memop(XENMEM_memory_map, &m), 0);
    EXPECT_EQ("memory_map_short_nr", m.nr_entries, 2);
    EXPECT_EQ("memory_map_short_untouched", scratch[4096 + 2 * 20], 0xa5);
    m = (struct xen_memory_map){64, 0x00007f0000000000ul};
    EXPECT_EQ("memory_map_bad_buffer", memop(XENMEM_memory_map, &m), E(XEN_EFAULT));
    EXPECT_EFAULT_ALL("memory_map_bad_ptr", __HYPERVISOR_memory_op, XENMEM_memory_map, p);

    struct xen_add_to_physmap x = {0, 0, XENMAPSPACE_shared_info, 0, (uint64_t)scratch >> 12};
    EXPECT_EQ("add_to_physmap_dom0", memop(XENMEM_add_to_physmap, &x), E(XEN_EPERM));
    x = (struct xen_add_to_physmap){DOMID_SELF, 0, XENMAPSPACE_shared_info, 1, (uint64_t)scratch >> 12};
    EXPECT_EQ("add_to_physmap_shared_info_idx1", memop(XENMEM_add_to_physmap, &x), E(XEN_EINVAL));
    EXPECT_EFAULT_ALL("add_to_physmap_bad_ptr", __HYPERVISOR_memory_op, XENMEM_add_to_physmap, p);
}

struct vcpu_register_vcpu_info { uint64_t mfn; uint32_t offset, rsvd; };
struct vcpu_set_singleshot_timer { uint64_t timeout_abs_ns; uint32_t flags; };

static long vcpuop(int cmd, unsigned long vcpu, void *arg)
{
    return HYPERCALL3(__HYPERVISOR_vcpu_op, cmd, vcpu, arg);
}

CASE(probe_vcpu)
{
    static const unsigned long bad_vcpus[] = {1, 31, 0x7fffffff, 0xffffffff};
    for (unsigned int i = 0; i < 4; i++) {
        EXPECT_EQ(label("is_up_bad_vcpu", (int)i), vcpuop(VCPUOP_is_up, bad_vcpus[i], 0), E(XEN_ENOENT));
        EXPECT_EQ(label("timer_bad_vcpu", (int)i), vcpuop(VCPUOP_stop_singleshot_timer, bad_vcpus[i], 0),
                  E(XEN_ENOENT));
    }
    EXPECT_EQ("is_up_vcpu0", vcpuop(VCPUOP_is_up, 0, 0), 1);
    EXPECT_EQ("unknown_cmd", vcpuop(99, 0, scratch), E(XEN_ENOSYS));

    uint64_t period = 1000;  /* < 1 ms */
    EXPECT_EQ("periodic_timer_too_short", vcpuop(VCPUOP_set_periodic_timer, 0, &period), E(XEN_EINVAL));
    struct vcpu_set_singleshot_timer t = {1, 1 /* VCPU_SSHOTTMR_future */};
    EXPECT_EQ("singleshot_in_the_past", vcpuop(VCPUOP_set_singleshot_timer, 0, &t), E(XEN_ETIME));

    struct vcpu_register_vcpu_info vi = {(uint64_t)scratch >> 12, 4090, 0};
    EXPECT_EQ("vcpu_info_offset_past_page", vcpuop(VCPUOP_register_vcpu_info, 0, &vi), E(XEN_EINVAL));
    vi = (struct vcpu_register_vcpu_info){0xc0000, 0, 0};  /* the hole above RAM */
    EXPECT_EQ("vcpu_info_not_ram", vcpuop(VCPUOP_register_vcpu_info, 0, &vi), E(XEN_EINVAL));

    static const int ops[] = {VCPUOP_set_periodic_timer, VCPUOP_set_singleshot_timer,
                              VCPUOP_register_vcpu_info, VCPUOP_register_runstate_memory_area};
    for (unsigned int k = 0; k < 4; k++) {
        for (unsigned int i = 0; i < NBAD; i++) {
            char what[40];
            ksnprintf(what, sizeof(what), "op%d_bad_ptr_%u", ops[k], i);
            EXPECT_EQ(what, vcpuop(ops[k], 0, (void *)bad_ptrs[i]), E(XEN_EFAULT));
        }
    }
    /* a runstate area that is not memory is accepted (Xen checks it only when it writes it); the domain
     * must live on through the updates it fails to make */
    uint64_t runstate = 0x00007f0000000000ul;
    EXPECT_EQ("runstate_area_unmapped", vcpuop(VCPUOP_register_runstate_memory_area, 0, &runstate), 0);
    for (int i = 0; i < 50; i++)
        HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0);
    runstate = 0;
    EXPECT_EQ("runstate_area_off", vcpuop(VCPUOP_register_runstate_memory_area, 0, &runstate), 0);
}

struct sched_poll { uint64_t ports; uint32_t nr_ports; uint64_t timeout; };

CASE(probe_sched)
{
    EXPECT_EQ("unknown_cmd", HYPERCALL2(__HYPERVISOR_sched_op, 99, scratch), E(XEN_ENOSYS));
    uint32_t *ports = (uint32_t *)scratch;
    ports[0] = 5000;
    struct sched_poll p = {(uint64_t)ports, 129, 1};
    EXPECT_EQ("poll_too_many_ports", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_poll, &p), E(XEN_EINVAL));
    p.nr_ports = 1;
    EXPECT_EQ("poll_bad_port", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_poll, &p), E(XEN_EINVAL));
    p.ports = 0x00007f0000000000ul;
    EXPECT_EQ("poll_ports_unmapped", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_poll, &p), E(XEN_EFAULT));
    EXPECT_EFAULT_ALL("poll_bad_ptr", __HYPERVISOR_sched_op, SCHEDOP_poll, p);
    EXPECT_EFAULT_ALL("shutdown_bad_ptr", __HYPERVISOR_sched_op, SCHEDOP_shutdown, p);
    struct { uint16_t domid; uint32_t reason; } rs = {0, SHUTDOWN_poweroff};
    EXPECT_EQ("remote_shutdown_dom0", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, &rs),
              E(XEN_EPERM));
    EXPECT_EQ("yield", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0), 0);
}

struct xen_hvm_param { uint16_t domid; uint32_t index; uint64_t value; };

CASE(probe_hvm)
{
    EXPECT_EQ("unknown_op", HYPERCALL2(__HYPERVISOR_hvm_op, 99, scratch), E(XEN_ENOSYS));
    static const uint32_t bad_index[] = {HVM_NR_PARAMS, 1000, 0xffffffffu};
    for (unsigned int i = 0; i < 3; i++) {
        struct xen_hvm_param hp = {DOMID_SELF, bad_index[i], 0};
        EXPECT_EQ(label("get_param_bad_index", (int)i), HYPERCALL2(__HYPERVISOR_hvm_op, HVMOP_get_param, &hp),
                  E(XEN_EINVAL));
    }
    struct xen_hvm_param hp = {0, HVM_PARAM_STORE_PFN, 0};
    EXPECT_EQ("get_param_dom0", HYPERCALL2(__HYPERVISOR_hvm_op, HVMOP_get_param, &hp), E(XEN_EPERM));
    hp = (struct xen_hvm_param){DOMID_SELF, HVM_PARAM_STORE_PFN, 0x1234};
    EXPECT_EQ("set_param_store_pfn", HYPERCALL2(__HYPERVISOR_hvm_op, HVMOP_set_param, &hp), E(XEN_EPERM));
    hp = (struct xen_hvm_param){DOMID_SELF, 5 /* HVM_PARAM_IOREQ_PFN */, 0};
    EXPECT_EQ("get_param_ioreq_pfn", HYPERCALL2(__HYPERVISOR_hvm_op, HVMOP_get_param, &hp), E(XEN_EPERM));
    hp = (struct xen_hvm_param){DOMID_SELF, HVM_PARAM_STORE_PFN, 0};
    EXPECT_EQ("get_param_store_pfn", HYPERCALL2(__HYPERVISOR_hvm_op, HVMOP_get_param, &hp), 0);
    check("get_param_store_pfn_value", hp.value != 0, "store pfn is 0");
    EXPECT_EFAULT_ALL("get_param_bad_ptr", __HYPERVISOR_hvm_op, HVMOP_get_param, p);
    EXPECT_EFAULT_ALL("set_param_bad_ptr", __HYPERVISOR_hvm_op, HVMOP_set_param, p);
}

CASE(probe_version_console)
{
    EXPECT_EQ("version_unknown", HYPERCALL2(__HYPERVISOR_xen_version, 99, scratch), E(XEN_ENOSYS));
    uint32_t fi[2] = {1, 0};
    EXPECT_EQ("get_features_submap1", HYPERCALL2(__HYPERVISOR_xen_version, XENVER_get_features, fi),
              E(XEN_EINVAL));
    EXPECT_EQ("pagesize_with_buffer", HYPERCALL2(__HYPERVISOR_xen_version, XENVER_pagesize, scratch),
              E(XEN_EINVAL));
    EXPECT_EFAULT_ALL("extraversion_bad_ptr", __HYPERVISOR_xen_version, XENVER_extraversion, p);
    EXPECT_EFAULT_ALL("get_features_bad_ptr", __HYPERVISOR_xen_version, XENVER_get_features, p);

    EXPECT_EQ("console_unknown_cmd", HYPERCALL3(__HYPERVISOR_console_io, 99, 1, scratch), E(XEN_ENOSYS));
    for (unsigned int i = 0; i < NBAD; i++)
        EXPECT_EQ(label("console_write_bad_ptr", (int)i),
                  HYPERCALL3(__HYPERVISOR_console_io, CONSOLEIO_write, 8, bad_ptrs[i]), E(XEN_EFAULT));
    EXPECT_EQ("console_write_straddles_ram_end",
              HYPERCALL3(__HYPERVISOR_console_io, CONSOLEIO_write, 8, ram_end - 4), E(XEN_EFAULT));
}

CASE(probe_hypercall_numbers)
{
    /* hypercalls a PVH guest does not have, and numbers past the table: -ENOSYS. In 64-bit mode the
     * number is all of RAX, so 2^32 + 17 is not xen_version. */
    static const unsigned long nrs[] = {0, 1, 2, 3, 14, 23, 26, 64, 127, 128, 0xffff, 0x100000011ul,
                                        0xffffffff00000012ul, 0x8000000000000011ul};
    for (unsigned int i = 0; i < sizeof(nrs) / sizeof(nrs[0]); i++)
        EXPECT_EQ(label("nr", (int)i), hypercall_raw(nrs[i], XENVER_version, 0, 0, 0, 0), E(XEN_ENOSYS));
}

/* A page the guest gave back (XENMEM_decrease_reservation) is no memory until populated again: as any
 * other address that is not RAM, it reads as all ones and ignores writes - no #PF (the guest's page
 * tables did not change) and no end of the domain. */
struct xen_memory_reservation { uint64_t extent_start, nr_extents; uint32_t extent_order, mem_flags;
                                uint16_t domid; };

static void touch(void *p)
{
    volatile uint32_t *q = p;
    *(uint32_t *)scratch = *q;
    *q = 0x12345678;
    *((uint32_t *)scratch + 1) = *q;
}

EXPLICIT_CASE(given_back_page)
{
    uint8_t *page = scratch + 32 * 4096;
    uint64_t gpfn = (uint64_t)page >> 12;
    memset(page, 0x5a, 4096);
    struct xen_memory_reservation r = {(uint64_t)&gpfn, 1, 0, 0, DOMID_SELF};
    EXPECT_EQ("decrease_reservation", memop(XENMEM_decrease_reservation, &r), 1);
    EXPECT_EQ("no_exception", with_trap(touch, page), -1);
    EXPECT_EQ("reads_all_ones", *(uint32_t *)scratch, 0xffffffffu);
    EXPECT_EQ("writes_dropped", *((uint32_t *)scratch + 1), 0xffffffffu);
    r = (struct xen_memory_reservation){(uint64_t)&gpfn, 1, 0, 0, DOMID_SELF};
    EXPECT_EQ("populate_again", memop(XENMEM_populate_physmap, &r), 1);
    EXPECT_EQ("zeros_again", *(volatile uint32_t *)page, 0);
}

/* A hypercall's result into a page the guest mapped read-only, with CR0.WP set: Xen's copy_to_guest walks
 * the guest's page tables for a write (hvm_copy_to_guest_linear, PFEC_write_access) and fails with
 * -EFAULT, writing nothing. The 2 MiB page at 8 MiB (unused RAM) is made read-only for the test. */
CASE(probe_readonly_buffer)
{
    volatile uint64_t *page = (volatile uint64_t *)0x800000ul;
    page[0] = 0x1122334455667788ull;
    page[1] = DOMID_SELF | (uint64_t)HVM_PARAM_STORE_PFN << 32;
    unsigned long cr0;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %0, %%cr0" : : "r"(cr0 | (1ul << 16)) : "memory");  /* CR0.WP */
    pd[4] &= ~2ull;
    __asm__ volatile("invlpg (%0)" : : "r"(page) : "memory");
    EXPECT_EQ("extraversion_into_readonly", HYPERCALL2(__HYPERVISOR_xen_version, XENVER_extraversion, page),
              E(XEN_EFAULT));
    EXPECT_EQ("readonly_untouched", page[0], 0x1122334455667788ull);
    struct xen_hvm_param *hp = (struct xen_hvm_param *)(page + 1);
    EXPECT_EQ("get_param_into_readonly", HYPERCALL2(__HYPERVISOR_hvm_op, HVMOP_get_param, hp), E(XEN_EFAULT));
    /* reading from a read-only page is fine (port 0 is reserved: -EINVAL, not -EFAULT) */
    EXPECT_EQ("send_from_readonly", evtchn(EVTCHNOP_send, (void *)(page + 2)), E(XEN_EINVAL));
    pd[4] |= 2;
    __asm__ volatile("invlpg (%0)" : : "r"(page) : "memory");
    __asm__ volatile("mov %0, %%cr0" : : "r"(cr0) : "memory");
    EXPECT_EQ("extraversion_into_writable", HYPERCALL2(__HYPERVISOR_xen_version, XENVER_extraversion, page), 0);
}

/* Another domain's memory (peer=D ref=N, next to a heartbeat domain started with grant_ref=N grantee=us):
 * a domain reaches another's pages only through grants, and only those granted to it, as granted
 * (grant_table.c map_grant_ref / _set_status_v1). */
static int16_t map_peer(uint16_t peer, uint32_t ref, uint32_t flags, uint64_t at, uint32_t *handle)
{
    struct gnttab_map_grant_ref m = {at, flags, ref, peer, 0x7777, 0, 0};
    long rc = gnttab(GNTTABOP_map_grant_ref, &m, 1);
    *handle = m.handle;
    return rc ? (int16_t)-100 : m.status;
}

static int16_t unmap_peer(uint64_t at, uint32_t handle)
{
    struct gnttab_unmap_grant_ref u = {at, 0, handle, 0x7777};
    long rc = gnttab(GNTTABOP_unmap_grant_ref, &u, 1);
    return rc ? (int16_t)-100 : u.status;
}

CASE(probe_cross_domain)
{
    uint16_t peer = (uint16_t)cmdline_ulong("peer", 0);
    uint32_t ref = (uint32_t)cmdline_ulong("ref", 0), handle;
    if (!peer || !ref) {
        note("no peer= and ref=: nothing to probe");
        return;
    }
    uint8_t *at = scratch + 50 * 4096;
    int16_t st = -1;
    for (int i = 0; i < 200000 && st != GNTST_okay; i++) {  /* the neighbour may still be granting */
        st = map_peer(peer, ref + 1, GNTMAP_host_map, (uint64_t)at, &handle);
        if (st != GNTST_okay)
            HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0);
    }
    EXPECT_EQ("map_granted_to_us", st, GNTST_okay);
    if (st == GNTST_okay) {
        check("sees_the_peers_page", !memcmp(at, "neighbour-page", 15), "the mapped page is not the peer's");
        EXPECT_EQ("unmap", unmap_peer((uint64_t)at, handle), GNTST_okay);
        EXPECT_EQ("unmap_twice", unmap_peer((uint64_t)at, handle), GNTST_bad_handle);
    }
    EXPECT_EQ("map_granted_to_dom0", map_peer(peer, ref, GNTMAP_host_map, (uint64_t)at, &handle),
              GNTST_general_error);
    EXPECT_EQ("map_readonly_grant_writable", map_peer(peer, ref + 2, GNTMAP_host_map, (uint64_t)at, &handle),
              GNTST_general_error);
    EXPECT_EQ("map_ungranted_ref", map_peer(peer, ref + 3, GNTMAP_host_map, (uint64_t)at, &handle),
              GNTST_general_error);
    EXPECT_EQ("map_ref_past_table", map_peer(peer, 100000, GNTMAP_host_map, (uint64_t)at, &handle),
              GNTST_bad_gntref);
    /* the peer's page mapped where no RAM of ours is (4 GiB up), read-only, then unmapped */
    st = map_peer(peer, ref + 2, GNTMAP_host_map | (1 << 2), 0x100000000ul, &handle);
    EXPECT_EQ("map_readonly_grant_readonly", st, GNTST_okay);
    if (st == GNTST_okay)
        EXPECT_EQ("unmap_readonly", unmap_peer(0x100000000ul, handle), GNTST_okay);
    /* the peer's event channels: ports not offered to us cannot be bound */
    struct evtchn_bind_interdomain bi = {peer, 1, 0};
    EXPECT_EQ("bind_peers_port", evtchn(EVTCHNOP_bind_interdomain, &bi), E(XEN_EINVAL));
}
