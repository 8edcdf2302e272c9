/* A neighbour for adversarial tests: for beat_s=N seconds (default 20) it keeps doing what a domain does
 * (allocate, inspect and close an event channel, ask xen_version, yield) and counts anything that goes
 * wrong; a domain under attack next door must not change what it sees. */
#include "kernel.h"

uint64_t tsc_khz(void)
{
    uint32_t r[4], base = xen_cpuid_base();
    if (!base)
        return 0;
    cpuid(base + 3, 0, r);  /* arch-x86/cpuid.h: leaf 4, subleaf 0: ecx = guest TSC frequency in kHz */
    return r[2];
}

struct evtchn_alloc_unbound { uint16_t dom, remote_dom; uint32_t port; };
struct evtchn_status { uint16_t dom; uint32_t port, status, vcpu; uint64_t u; };

/* grant_ref=N grantee=D: before beating, grant a page of ours (marked "neighbour-page"): ref N to domain 0
 * (not to D), ref N+1 to D writable, ref N+2 to D read-only; at the end the page must hold its mark */
#define GRANT_TABLE_PAGE (scratch + 40 * 4096)
#define GRANTED_PAGE (scratch + 41 * 4096)
static const char mark[] = "neighbour-page";

static void grant_pages(unsigned long ref, unsigned long grantee)
{
    struct { uint16_t domid, size; uint32_t space; uint64_t idx, gpfn; } x = {
        DOMID_SELF, 0, XENMAPSPACE_grant_table, 0, (uint64_t)GRANT_TABLE_PAGE >> 12};
    EXPECT_EQ("grant_table_frame", HYPERCALL2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, &x), 0);
    memcpy(GRANTED_PAGE, mark, sizeof(mark));
    struct grant_entry_v1 { uint16_t flags, domid; uint32_t frame; } *gt = (void *)GRANT_TABLE_PAGE;
    uint32_t frame = (uint32_t)((uint64_t)GRANTED_PAGE >> 12);
    static const uint16_t flags[3] = {1, 1, 1 | 4};  /* GTF_permit_access, | GTF_readonly */
    for (unsigned long i = 0; i < 3; i++) {
        gt[ref + i].domid = (uint16_t)(i ? grantee : 0);
        gt[ref + i].frame = frame;
        __asm__ volatile("" ::: "memory");  /* the entry before its flags (grant_table.h) */
        gt[ref + i].flags = flags[i];
    }
    note("granted refs %lu..%lu of frame 0x%x (to d0, d%lu, d%lu read-only)", ref, ref + 2, frame, grantee,
         grantee);
}

EXPLICIT_CASE(heartbeat)
{
    uint64_t khz = tsc_khz(), seconds = cmdline_ulong("beat_s", 20);
    unsigned long gref = cmdline_ulong("grant_ref", 0);
    if (gref)
        grant_pages(gref, cmdline_ulong("grantee", 0));
    check("tsc_khz", khz != 0, "CPUID gives no TSC frequency");
    if (!khz)
        return;
    uint64_t start = rdtsc(), end = start + seconds * khz * 1000;
    unsigned long beats = 0, wrong = 0;
    long last_bad = 0;
    while (rdtsc() < end) {
        struct evtchn_alloc_unbound a = {DOMID_SELF, 0, 0};
        long rc = HYPERCALL2(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, &a);
        struct evtchn_status st = {DOMID_SELF, a.port, 0, 0, 0};
        long rc2 = HYPERCALL2(__HYPERVISOR_event_channel_op, EVTCHNOP_status, &st);
        long rc3 = HYPERCALL2(__HYPERVISOR_event_channel_op, EVTCHNOP_close, &a.port);
        long v = HYPERCALL2(__HYPERVISOR_xen_version, XENVER_version, 0);
        if (rc || rc2 || st.status != 1 || rc3 || v < (4 << 16)) {
            wrong++;
            last_bad = rc ? rc : rc2 ? rc2 : rc3 ? rc3 : v;
        }
        HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0);
        beats++;
    }
    note("beats=%lu in %lu s", beats, (unsigned long)seconds);
    check("beats", beats > 0, "no beat");
    check("all_beats_right", wrong == 0, "%lu of %lu beats went wrong (last: %ld)", wrong, beats, last_bad);
    if (gref)
        check("granted_page_intact", !memcmp(GRANTED_PAGE, mark, sizeof(mark)), "the granted page changed");
}
