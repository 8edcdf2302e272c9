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

EXPLICIT_CASE(heartbeat)
{
    uint64_t khz = tsc_khz(), seconds = cmdline_ulong("beat_s", 20);
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
}
