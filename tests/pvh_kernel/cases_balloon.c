/*
 * Ballooning probes (core/reservation.py): XENMEM_decrease_reservation, increase_reservation and
 * populate_physmap from a guest, against xen/common/memory.c: the answer is the number of extents done,
 * never an error (a reservation that cannot be read, another domain, too many extents, a restart extent
 * past the end, an order above 9: the start extent); the extents are done in order and the first that
 * fails ends the call (a frame outside RAM, given back twice, populated twice). A page given back is no
 * longer the guest's for the hypervisor (a hypercall buffer there is -EFAULT) and reads as zeros once
 * populated again.
 */
#include "kernel.h"

struct xen_memory_reservation {         /* memory.h */
    uint64_t extent_start;              /* XEN_GUEST_HANDLE(xen_pfn_t) */
    uint64_t nr_extents;                /* xen_ulong_t */
    uint32_t extent_order;
    uint32_t mem_flags;
    uint16_t domid;
};
#define XENMEMF_populate_on_demand (1 << 16)
#define MEMOP_EXTENT_SHIFT 6

static uint64_t frames[8];

static long memop(unsigned long cmd, void *arg)
{
    return HYPERCALL2(__HYPERVISOR_memory_op, cmd, arg);
}

static long res(unsigned long cmd, unsigned long nr, unsigned int order, unsigned int flags, uint16_t domid)
{
    struct xen_memory_reservation r = {(uint64_t)frames, nr, order, flags, domid};
    return memop(cmd, &r);
}

static long reservation_now(void)
{
    uint16_t self = DOMID_SELF;
    return memop(XENMEM_current_reservation, &self);
}

/* scratch pages 40..47: the guest's own memory, nothing else lives there */
static uint8_t *page(int i) { return scratch + (40 + i) * 4096; }
static uint64_t gfn(int i) { return (uint64_t)page(i) >> 12; }

CASE(probe_balloon)
{
    long before = reservation_now();
    for (int i = 0; i < 8; i++)
        memset(page(i), 0x5a, 4096);

    /* nothing done: the start extent, not an error */
    frames[0] = gfn(0);
    EXPECT_EQ("other_domain", res(XENMEM_decrease_reservation, 1, 0, 0, 0), 0);
    EXPECT_EQ("other_domain_7", res(XENMEM_decrease_reservation, 1, 0, 0, 7), 0);
    EXPECT_EQ("order_10", res(XENMEM_decrease_reservation, 1, 10, 0, DOMID_SELF), 0);
    EXPECT_EQ("too_many_extents", res(XENMEM_decrease_reservation, 1ul << 26, 0, 0, DOMID_SELF), 0);
    EXPECT_EQ("bad_reservation_ptr", memop(XENMEM_decrease_reservation, (void *)0x00007f0000000000ul), 0);
    EXPECT_EQ("bad_reservation_ptr_restart", memop(XENMEM_decrease_reservation | 5ul << MEMOP_EXTENT_SHIFT,
                                                   (void *)0x00007f0000000000ul), 5);
    struct xen_memory_reservation r = {0x00007f0000000000ul, 4, 0, 0, DOMID_SELF};
    EXPECT_EQ("bad_extent_list", memop(XENMEM_decrease_reservation, &r), 0);
    frames[0] = (ram_end >> 12) + 16;
    EXPECT_EQ("frame_above_ram", res(XENMEM_decrease_reservation, 1, 0, 0, DOMID_SELF), 0);
    frames[0] = 0xfee00;
    EXPECT_EQ("frame_lapic", res(XENMEM_decrease_reservation, 1, 0, 0, DOMID_SELF), 0);
    EXPECT_EQ("reservation_unchanged", reservation_now(), before);

    /* give four pages back; a restart extent skips the ones before it */
    for (int i = 0; i < 4; i++)
        frames[i] = gfn(i);
    EXPECT_EQ("give_back_restart", res(XENMEM_decrease_reservation | 2ul << MEMOP_EXTENT_SHIFT, 4, 0, 0,
                                       DOMID_SELF), 4);
    EXPECT_EQ("give_back_rest", res(XENMEM_decrease_reservation, 2, 0, 0, DOMID_SELF), 2);
    EXPECT_EQ("reservation_down", reservation_now(), before - 4);
    EXPECT_EQ("give_back_twice", res(XENMEM_decrease_reservation, 4, 0, 0, DOMID_SELF), 0);
    frames[4] = gfn(4);
    frames[5] = gfn(0);                 /* given back already: the call stops there */
    frames[6] = gfn(5);
    struct xen_memory_reservation r2 = {(uint64_t)&frames[4], 3, 0, 0, DOMID_SELF};
    EXPECT_EQ("stops_at_given_back", memop(XENMEM_decrease_reservation, &r2), 1);
    EXPECT_EQ("reservation_down_5", reservation_now(), before - 5);

    /* the hypervisor no longer reads the page for us */
    EXPECT_EQ("console_from_given_back", HYPERCALL3(__HYPERVISOR_console_io, 0, 16, page(1)),
              -(long)XEN_EFAULT);
    uint16_t *self_in_given_back = (uint16_t *)page(2);
    EXPECT_EQ("reservation_query_from_given_back",
              memop(XENMEM_current_reservation, self_in_given_back), -(long)XEN_EFAULT);
    note("own read of a page given back: 0x%lx (hyperdisco: zeros; Xen: all ones)",
         (unsigned long)*(volatile uint64_t *)page(3));
    *(volatile uint64_t *)page(3) = 0x1234;    /* a store there: lost once the page is populated */

    /* populate: PoD on oneself refused; the pages come back zeroed; twice stops */
    for (int i = 0; i < 5; i++)
        frames[i] = gfn(i);
    EXPECT_EQ("populate_pod_self", res(XENMEM_populate_physmap, 5, 0, XENMEMF_populate_on_demand,
                                       DOMID_SELF), 0);
    EXPECT_EQ("populate_other_domain", res(XENMEM_populate_physmap, 5, 0, 0, 0), 0);
    frames[2] = (ram_end >> 12) + 16;
    EXPECT_EQ("populate_stops_outside_ram", res(XENMEM_populate_physmap, 5, 0, 0, DOMID_SELF), 2);
    frames[2] = gfn(2);
    EXPECT_EQ("populate_twice_stops", res(XENMEM_populate_physmap, 5, 0, 0, DOMID_SELF), 0);
    struct xen_memory_reservation r3 = {(uint64_t)&frames[2], 3, 0, 0, DOMID_SELF};
    EXPECT_EQ("populate_rest", memop(XENMEM_populate_physmap, &r3), 3);
    EXPECT_EQ("reservation_back", reservation_now(), before);
    int zero = 1;
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4096; j++)
            zero &= page(i)[j] == 0;
    EXPECT("populated_pages_are_zero", zero);
    EXPECT_EQ("untouched_neighbour", page(6)[100], 0x5a);
    page(1)[0] = '\n';
    EXPECT_EQ("console_from_populated", HYPERCALL3(__HYPERVISOR_console_io, 0, 1, page(1)), 1);
}
