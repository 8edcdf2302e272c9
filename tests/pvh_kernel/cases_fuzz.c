/*
 * The hypercall fuzzer (EXPLICIT_CASE fuzz): random hypercall numbers and arguments from seed=N on the
 * command line, calls=N of them or fuzz_s=N seconds, whichever ends first. The hypervisor is the target:
 * whatever the guest asks, hyperdisco must answer and go on, and other domains must not notice.
 *
 * The guest keeps itself alive on purpose: what a hypercall may legitimately do to its caller (stop it,
 * block it, write over memory the caller named) is steered away from the kernel itself. Pointers and frame
 * numbers name the arena (physical 16 MiB up, outside the kernel image; the domain needs >= 32 MiB), low
 * memory below 1 MiB (unused after boot), or what is not the domain's memory at all, never the kernel image
 * at 1 MiB; sched_op's block, shutdown, poll and watchdog, vcpu_op's down and multicall are not made.
 */
#include "kernel.h"

#define ARENA ((uint8_t *)0x1000000ul)
#define ARENA_PAGES 64
#define ARENA_SIZE (ARENA_PAGES * 4096ul)
/* Structures are read at 8-aligned places of the arena's values (Xen's structures keep their 64-bit
 * fields 8-aligned, so each such field is one value the fuzzer made); unaligned pointers go into the
 * poison part, whose bytes are all >= 0x80, so that a field straddling two of them is never a small
 * address or frame number (the first campaign found an unaligned read composing 0x1000 << 8: the kernel). */
#define POISON (ARENA + ARENA_SIZE)
#define POISON_SIZE (16 * 4096ul)

static const unsigned long not_memory[] = {
    0x00007f0000000000ul, 0x8000000000000000ul, 0xc0000000ul, 0xfffffffffffff000ul, 0xfed00000ul /* HPET */,
    0xfec00000ul /* IO-APIC */, 0xfee00000ul /* LAPIC */, 0xfeff0000ul /* special pages: console ring */,
    0xfeff1000ul /* xenstore ring */, 0x1ffff00ul /* near the end of 32 MiB */,
};
static const unsigned long edges[] = {
    0xffffffffu, 0x7fffffffu, 0x80000000u, 0x100000000ul, ~0ul, 0x7ff0 /* DOMID_SELF */, 0x7ff1, 0x7ff2,
    0xffff, 4095, 4096, 4097, 4096 * 2, 1ul << 40, 0x8000000000000000ul, 128, 129, 1023, 1024, 1ul << 17,
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

/* the kernel image as addresses or as frame numbers: no value the fuzzer makes names it */
static int names_kernel(uint64_t v)
{
    uint64_t lo = (uint64_t)__image_start, hi = (uint64_t)__image_end;
    return (v >= lo && v < hi) || (v >= lo >> 12 && v <= hi >> 12);
}

static uint64_t raw_value(void);

/* a value of the kinds hypercall arguments and structure fields take */
static uint64_t value(void)
{
    uint64_t v = raw_value();
    return names_kernel(v) ? 0 : v;
}

static uint64_t raw_value(void)
{
    uint64_t r = rand64();
    switch (r & 15) {
    case 0: return 0;
    case 1: case 2: return (r >> 8) & 0xff;                                   /* small numbers, low pfns */
    case 3: return (r >> 8) & 7;                                              /* domids, vCPUs, commands */
    case 4: case 5: return (uint64_t)ARENA + (((r >> 8) % ARENA_SIZE) & ~7ul); /* pointers into the arena */
    case 6: return ((uint64_t)ARENA >> 12) + ((r >> 8) % ARENA_PAGES);        /* arena frame numbers */
    case 7: case 8: return edges[(r >> 8) % N(edges)];
    case 9: return not_memory[(r >> 8) % N(not_memory)] + ((r >> 40) & 0xfff);
    case 10: return (r >> 8) & 0xffff;                                        /* ports, refs */
    default: return rand64();
    }
}

static uint64_t pointer(void)
{
    uint64_t r = rand64();
    if ((r & 7) < 4)
        return (uint64_t)ARENA + (((r >> 8) % ARENA_SIZE) & ~7ul);
    if ((r & 7) == 4)
        return (uint64_t)POISON + ((r >> 8) % POISON_SIZE);
    if ((r & 7) == 5)
        return not_memory[(r >> 8) % N(not_memory)];
    return value();
}

static void scramble(unsigned long bytes)
{
    uint64_t *a = (uint64_t *)(ARENA + ((rand64() % ARENA_SIZE) & ~7ul));
    for (unsigned long i = 0; i < bytes / 8 && (uint8_t *)(a + i) < ARENA + ARENA_SIZE; i++)
        a[i] = value();
}

/* the hypercalls hyperdisco implements get most calls; any number at all gets the rest */
static const unsigned int implemented[] = {
    __HYPERVISOR_memory_op, __HYPERVISOR_set_timer_op, __HYPERVISOR_xen_version, __HYPERVISOR_console_io,
    __HYPERVISOR_grant_table_op, __HYPERVISOR_vcpu_op, __HYPERVISOR_sched_op, __HYPERVISOR_event_channel_op,
    __HYPERVISOR_hvm_op,
};

/* what would stop or block this domain legitimately, which the fuzzer does not ask */
static int self_stopping(uint64_t nr, uint64_t a1)
{
    if (nr == __HYPERVISOR_sched_op)
        return (a1 & 0xffffffffu) != SCHEDOP_yield && (a1 & 0xffffffffu) != SCHEDOP_remote_shutdown
               && (a1 & 0xffffffffu) != 5 /* shutdown_code */;
    if (nr == __HYPERVISOR_vcpu_op)
        return (a1 & 0xffffffffu) == VCPUOP_down;
    /* a multicall's entries are read from wherever its list points and can name any of the above (and
     * its results are written back over the list): the calls it dispatches are fuzzed directly */
    if (nr == __HYPERVISOR_multicall)
        return 1;
    return 0;
}

EXPLICIT_CASE(fuzz)
{
    uint64_t seed = cmdline_ulong("seed", 1), calls = cmdline_ulong("calls", 1000000);
    uint64_t seconds = cmdline_ulong("fuzz_s", 0), khz = tsc_khz();
    unsigned long trace_from = cmdline_ulong("trace_from", ~0ul);
    uint64_t deadline = seconds && khz ? rdtsc() + seconds * khz * 1000 : ~0ull;
    check("arena_is_ram", ram_end >= (unsigned long)POISON + POISON_SIZE,
          "the fuzzer needs 32 MiB (RAM ends at 0x%lx)", ram_end);
    if (ram_end < (unsigned long)POISON + POISON_SIZE)
        return;
    rand_seed(seed);
    scramble(ARENA_SIZE);
    for (unsigned long i = 0; i < POISON_SIZE / 8; i++)
        ((uint64_t *)POISON)[i] = rand64() | 0x8080808080808080ull;
    unsigned long made = 0, ok = 0, enosys = 0, efault = 0, einval = 0, other = 0;
    while (made < calls) {
        if ((made & 1023) == 0 && rdtsc() > deadline)
            break;
        if ((made & 63) == 0)
            scramble(512);
        uint64_t r = rand64(), nr;
        if ((r & 7) < 6)
            nr = implemented[(r >> 8) % N(implemented)];
        else if ((r & 7) == 6)
            nr = (r >> 8) & 63;
        else
            nr = value();
        uint64_t a1 = (r >> 32) & 7 ? (r >> 40) & 15 : value();   /* a command: mostly a small one */
        if (self_stopping(nr, a1))
            continue;
        uint64_t a2 = pointer(), a3 = value(), a4 = value(), a5 = value();
        if (nr == __HYPERVISOR_vcpu_op) {                        /* vcpu_op(cmd, vcpuid, arg) */
            a3 = a2;
            a2 = (r >> 44) & 1 ? 0 : value();
        }
        if (nr == __HYPERVISOR_console_io && (a1 & 0xffffffffu) == CONSOLEIO_write)
            a3 = not_memory[(r >> 50) % 4];                        /* no garbage on the console */
        if (nr == __HYPERVISOR_grant_table_op) {
            /* counts: mostly 0..3 ops, at most 1023 where the ops are memory (the hypervisor writes each op's
             * status back: a count of 50000 at 4 KiB would write over the kernel, the guest's own doing);
             * any count at all where they are not */
            if ((r >> 45) & 1)
                a3 = (r >> 46) & 3;
            else if ((r >> 48) & 15)
                a3 &= 1023;
            else
                a2 = not_memory[(r >> 52) % 4];
        }
        if (made >= trace_from)  /* trace_from=N: each call from the Nth on, to find the one that hurt */
            kprintf("# call %lu: %lx(%lx, %lx, %lx, %lx, %lx)\n", made, (unsigned long)nr, (unsigned long)a1,
                    (unsigned long)a2, (unsigned long)a3, (unsigned long)a4, (unsigned long)a5);
        /* XENMEM_memory_map writes the e820 map, whose first RAM range starts at the kernel (1 MiB), into
         * the buffer: scramble it again afterwards, or a later structure would name the kernel */
        uint64_t map_buf = 0, map_nr = 0;
        if (nr == __HYPERVISOR_memory_op && (a1 & 0x3f) == XENMEM_memory_map && a2 >= (uint64_t)ARENA
            && a2 <= (uint64_t)ARENA + ARENA_SIZE - 16) {
            map_nr = *(uint32_t *)a2;
            map_buf = *(uint64_t *)(a2 + 8);
        }
        long rc = hypercall_raw(nr, a1, a2, a3, a4, a5);
        if (map_buf >= (uint64_t)ARENA && map_buf < (uint64_t)ARENA + ARENA_SIZE + POISON_SIZE) {
            uint64_t *w = (uint64_t *)(map_buf & ~7ul);
            for (uint64_t i = 0; i < (map_nr < 64 ? map_nr : 64) * 3 + 1; i++)
                if ((uint8_t *)(w + i) < ARENA + ARENA_SIZE)
                    w[i] = value();
                else if ((uint8_t *)(w + i) < POISON + POISON_SIZE)
                    w[i] = rand64() | 0x8080808080808080ull;
        }
        made++;
        if (rc >= 0)
            ok++;
        else if (rc == -XEN_ENOSYS)
            enosys++;
        else if (rc == -XEN_EFAULT)
            efault++;
        else if (rc == -XEN_EINVAL)
            einval++;
        else
            other++;
        if ((made & ((1ul << 18) - 1)) == 0)
            note("calls=%lu", made);
    }
    note("seed=%lu calls=%lu ok=%lu enosys=%lu efault=%lu einval=%lu other=%lu", (unsigned long)seed, made, ok,
         enosys, efault, einval, other);
    check("made_calls", made > 0, "no call made");
    /* and the domain still works as a domain */
    EXPECT_EQ("xen_version_after", HYPERCALL2(__HYPERVISOR_xen_version, XENVER_pagesize, 0), 4096);
    struct { uint16_t dom, remote; uint32_t port; } a = {DOMID_SELF, 0, 0};
    long rc = HYPERCALL2(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, &a);
    check("evtchn_after", rc == 0 || rc == -XEN_ENOSPC, "alloc_unbound gave %ld", rc);
}
