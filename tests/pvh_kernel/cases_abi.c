/*
 * The sub-ops docs/xen-abi.md lists beyond the basic ones, good and bad arguments, against Xen's answers
 * for a PVH domU (xen-project/xen):
 *   common/grant_table.c   gnttab_setup_table, gnttab_set_version/get_version, gnttab_copy, swap_grant_ref
 *   arch/x86/hvm/hypercall.c  hvm_grant_table_op (allow-list), hvm_physdev_op, hvm_memory_op
 *   common/multicall.c     do_multicall (no nesting: -EINVAL; results written back)
 *   common/kernel.c        do_vm_assist, asm/domain.h HVM_VM_ASSIST_MASK (runstate_update_flag only)
 *   common/sched/core.c    domain_watchdog
 * Named probe_* so that test_pvh_probes runs it with the others.
 */
#include "kernel.h"

#define E(x) (-(long)(x))
#define GNTTABOP_swap_grant_ref 11
#define GNTCOPY_source_gref 1
#define GNTST_bad_page (-9)
#define GNTST_bad_copy_arg (-10)
#define GNTST_permission_denied_ (-8)
#define VMASST_TYPE_runstate_update_flag 5
#define SCHEDOP_watchdog 6

struct gnttab_setup_table { uint16_t dom; uint32_t nr_frames; int16_t status; uint64_t frame_list; };
struct gnttab_get_version { uint16_t dom, pad; uint32_t version; };
struct gnttab_copy_ptr { union { uint32_t ref; uint64_t gmfn; } u; uint16_t domid, offset; };
struct gnttab_copy { struct gnttab_copy_ptr source, dest; uint16_t len, flags; int16_t status; };
struct gnttab_swap_grant_ref { uint32_t ref_a, ref_b; int16_t status; };
struct multicall_entry { uint64_t op, result, args[6]; };
struct sched_watchdog { uint32_t id, timeout; };

static long gnttab(int cmd, void *arg, unsigned long count)
{
    return HYPERCALL3(__HYPERVISOR_grant_table_op, cmd, arg, count);
}

static int16_t copy1(uint64_t src, uint16_t sdom, uint16_t soff, uint64_t dst, uint16_t ddom, uint16_t doff,
                     uint16_t len, uint16_t flags, long *rc)
{
    struct gnttab_copy c = {{{.gmfn = src}, sdom, soff}, {{.gmfn = dst}, ddom, doff}, len, flags, 0x77};
    *rc = gnttab(GNTTABOP_copy, &c, 1);
    return c.status;
}

CASE(probe_abi_grant)
{
    uint64_t frames[3] = {1, 2, 3};
    struct gnttab_setup_table st = {DOMID_SELF, 3, 0x77, (uint64_t)frames};
    EXPECT_EQ("setup_table", gnttab(GNTTABOP_setup_table, &st, 1), 0);
    EXPECT_EQ("setup_table_status", st.status, GNTST_okay);
    check("setup_table_frames_unplaced_or_placed", frames[2] == ~0ull || frames[2] < (1ull << 40),
          "frame %lx", (unsigned long)frames[2]);
    st = (struct gnttab_setup_table){DOMID_SELF, 33, 0x77, (uint64_t)frames};
    EXPECT_EQ("setup_table_too_many", gnttab(GNTTABOP_setup_table, &st, 1), 0);
    EXPECT_EQ("setup_table_too_many_status", st.status, GNTST_general_error);
    st = (struct gnttab_setup_table){0, 1, 0x77, (uint64_t)frames};
    gnttab(GNTTABOP_setup_table, &st, 1);
    EXPECT_EQ("setup_table_dom0_status", st.status, GNTST_permission_denied_);
    st = (struct gnttab_setup_table){DOMID_SELF, 1, 0x77, 0x00007f0000000000ull};
    EXPECT_EQ("setup_table_bad_list", gnttab(GNTTABOP_setup_table, &st, 1), 0);
    EXPECT_EQ("setup_table_bad_list_status", st.status, -5 /* GNTST_bad_virt_addr */);

    uint32_t version = 2;
    EXPECT_EQ("set_version_2", gnttab(GNTTABOP_set_version, &version, 1), E(XEN_ENOSYS));
    EXPECT_EQ("set_version_2_writes_back", version, 1);
    version = 7;
    EXPECT_EQ("set_version_7", gnttab(GNTTABOP_set_version, &version, 1), E(XEN_EINVAL));
    version = 1;
    EXPECT_EQ("set_version_1", gnttab(GNTTABOP_set_version, &version, 1), 0);
    struct gnttab_get_version gv = {DOMID_SELF, 0, 0};
    EXPECT_EQ("get_version", gnttab(GNTTABOP_get_version, &gv, 1), 0);
    EXPECT_EQ("get_version_is_1", gv.version, 1);
    gv = (struct gnttab_get_version){0, 0, 0};
    EXPECT_EQ("get_version_dom0", gnttab(GNTTABOP_get_version, &gv, 1), E(XEN_EPERM));
    gv = (struct gnttab_get_version){0x7ff5, 0, 0};
    EXPECT_EQ("get_version_reserved", gnttab(GNTTABOP_get_version, &gv, 1), E(XEN_ESRCH));

    /* copy between two of the domain's own frames (scratch is identity-mapped RAM) */
    uint8_t *src = scratch + 20 * 4096, *dst = scratch + 21 * 4096;
    for (int i = 0; i < 4096; i++)
        src[i] = (uint8_t)i, dst[i] = 0xee;
    long rc;
    int16_t s = copy1((uint64_t)src >> 12, DOMID_SELF, 16, (uint64_t)dst >> 12, DOMID_SELF, 100, 50, 0, &rc);
    EXPECT_EQ("copy_frames_rc", rc, 0);
    EXPECT_EQ("copy_frames", s, GNTST_okay);
    check("copy_frames_data", dst[100] == 16 && dst[149] == 65 && dst[99] == 0xee && dst[150] == 0xee,
          "%d %d %d %d", dst[100], dst[149], dst[99], dst[150]);
    EXPECT_EQ("copy_frame_needs_domid_self",
              copy1((uint64_t)src >> 12, 0, 0, (uint64_t)dst >> 12, DOMID_SELF, 0, 8, 0, &rc),
              GNTST_permission_denied_);
    EXPECT_EQ("copy_not_ram",
              copy1(0xfee00, DOMID_SELF, 0, (uint64_t)dst >> 12, DOMID_SELF, 0, 8, 0, &rc), GNTST_bad_page);
    EXPECT_EQ("copy_crosses_page",
              copy1((uint64_t)src >> 12, DOMID_SELF, 4000, (uint64_t)dst >> 12, DOMID_SELF, 0, 200, 0, &rc),
              GNTST_bad_copy_arg);
    EXPECT_EQ("copy_reserved_domid",
              copy1(1, 0x7ff4, 0, (uint64_t)dst >> 12, DOMID_SELF, 0, 8, GNTCOPY_source_gref, &rc),
              GNTST_bad_domain);
    EXPECT_EQ("copy_dom0_ungranted",
              copy1(1, 0, 0, (uint64_t)dst >> 12, DOMID_SELF, 0, 8, GNTCOPY_source_gref, &rc),
              GNTST_general_error);
    check("copy_refusals_wrote_nothing", dst[0] == 0xee && dst[7] == 0xee, "%d", dst[0]);
    EXPECT_EQ("copy_count_negative", gnttab(GNTTABOP_copy, scratch, 0x80000000ul), E(XEN_EINVAL));
    EXPECT_EQ("copy_bad_ptr", gnttab(GNTTABOP_copy, (void *)0x00007f0000000000ul, 1), E(XEN_EFAULT));

    struct gnttab_swap_grant_ref sw = {0xfffffff0u, 1, 0x77};
    EXPECT_EQ("swap_rc", gnttab(GNTTABOP_swap_grant_ref, &sw, 1), 0);
    EXPECT_EQ("swap_bad_ref", sw.status, GNTST_bad_gntref);
    EXPECT_EQ("transfer_not_for_pvh", gnttab(4, scratch, 1), E(XEN_ENOSYS));
    EXPECT_EQ("get_status_frames_not_for_pvh", gnttab(9, scratch, 1), E(XEN_ENOSYS));
}

CASE(probe_abi_multicall)
{
    static struct multicall_entry mc[4];
    memset(mc, 0, sizeof(mc));
    mc[0].op = __HYPERVISOR_xen_version, mc[0].args[0] = XENVER_version;
    mc[1].op = 99;
    mc[2].op = __HYPERVISOR_multicall, mc[2].args[0] = (uint64_t)mc, mc[2].args[1] = 1;
    mc[3].op = __HYPERVISOR_sched_op, mc[3].args[0] = SCHEDOP_poll, mc[3].args[1] = 0x00007f0000000000ull;
    EXPECT_EQ("multicall", HYPERCALL2(__HYPERVISOR_multicall, mc, 4), 0);
    EXPECT_EQ("multicall_version", (long)mc[0].result, HYPERCALL2(__HYPERVISOR_xen_version, XENVER_version, 0));
    EXPECT_EQ("multicall_unknown_op", (long)mc[1].result, E(XEN_ENOSYS));
    EXPECT_EQ("multicall_nested", (long)mc[2].result, E(XEN_EINVAL));
    EXPECT_EQ("multicall_entry_efault", (long)mc[3].result, E(XEN_EFAULT));
    EXPECT_EQ("multicall_bad_list", HYPERCALL2(__HYPERVISOR_multicall, 0x00007f0000000000ul, 1), E(XEN_EFAULT));
    EXPECT_EQ("multicall_empty", HYPERCALL2(__HYPERVISOR_multicall, 0x00007f0000000000ul, 0), 0);
}

CASE(probe_abi_misc)
{
    EXPECT_EQ("vm_assist_runstate_flag", HYPERCALL2(21, 0, VMASST_TYPE_runstate_update_flag), 0);
    EXPECT_EQ("vm_assist_pv_type", HYPERCALL2(21, 0, 2 /* writable_pagetables */), E(XEN_EINVAL));
    EXPECT_EQ("vm_assist_type_64", HYPERCALL2(21, 0, 64), E(XEN_EINVAL));
    EXPECT_EQ("vm_assist_bad_cmd", HYPERCALL2(21, 5, VMASST_TYPE_runstate_update_flag), E(XEN_ENOSYS));
    EXPECT_EQ("vm_assist_disable", HYPERCALL2(21, 1, VMASST_TYPE_runstate_update_flag), 0);

    uint16_t domid = DOMID_SELF;
    EXPECT_EQ("physdev_eoi", HYPERCALL2(__HYPERVISOR_physdev_op, 12, scratch), E(XEN_ENOSYS));
    EXPECT_EQ("physdev_get_free_pirq", HYPERCALL2(__HYPERVISOR_physdev_op, 23, scratch), E(XEN_ENOSYS));
    EXPECT_EQ("physdev_map_pirq_self", HYPERCALL2(__HYPERVISOR_physdev_op, 13, &domid), E(XEN_EPERM));
    EXPECT_EQ("physdev_map_pirq_bad_ptr", HYPERCALL2(__HYPERVISOR_physdev_op, 13, 0x00007f0000000000ul),
              E(XEN_EFAULT));

    struct sched_watchdog wd = {1, 30};
    EXPECT_EQ("watchdog_unallocated", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_watchdog, &wd), E(XEN_EINVAL));
    wd = (struct sched_watchdog){3, 30};
    EXPECT_EQ("watchdog_id_too_big", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_watchdog, &wd), E(XEN_EINVAL));
    wd = (struct sched_watchdog){0, 600};
    long id = HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_watchdog, &wd);
    check("watchdog_allocates", id == 1 || id == 2, "id %ld", id);
    wd = (struct sched_watchdog){(uint32_t)id, 0};
    EXPECT_EQ("watchdog_freed", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_watchdog, &wd), 0);
    EXPECT_EQ("watchdog_free_twice", HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_watchdog, &wd), E(XEN_EINVAL));

    EXPECT_EQ("xenmem_machphys_mapping", HYPERCALL2(__HYPERVISOR_memory_op, 12, scratch), E(XEN_ENOSYS));
    EXPECT_EQ("xenmem_machine_memory_map", HYPERCALL2(__HYPERVISOR_memory_op, 10, scratch), E(XEN_EPERM));
}
