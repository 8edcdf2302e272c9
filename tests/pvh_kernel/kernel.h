/* The test kernel's API for cases (README.md): checks, hypercalls, exceptions, the command line. */
#ifndef KERNEL_H
#define KERNEL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "xen.h"

/* --- cases ------------------------------------------------------------------------------------------
 * CASE(name) { ... } defines a case run by default; EXPLICIT_CASE(name) one run only when the command
 * line's cases= names it. Cases run in link order, one after another, on one vCPU with interrupts off. */
struct test_case {
    const char *name;
    void (*fn)(void);
    int explicit_only;
};
#define CASE_(name, explicit)                                                        \
    static void case_##name(void);                                                   \
    static const struct test_case case_entry_##name                                  \
        __attribute__((used, section(".cases"), aligned(8))) = {#name, case_##name, explicit}; \
    static void case_##name(void)
#define CASE(name) CASE_(name, 0)
#define EXPLICIT_CASE(name) CASE_(name, 1)

/* --- checks: each prints one line, "PASS case.label" or "FAIL case.label: why" ------------------------ */
void check(const char *label, int ok, const char *why_fmt, ...) __attribute__((format(printf, 3, 4)));
void expect_eq(const char *label, long got, long want);   /* FAIL says got and want (decimal) */
#define EXPECT_EQ(label, got, want) expect_eq(label, (long)(got), (long)(want))
#define EXPECT(label, cond) check(label, !!(cond), "%s is false", #cond)

/* --- console -------------------------------------------------------------------------------------- */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int ksnprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  /* "# ..." line, not a check */

/* --- hypercalls: through the hypercall page (numbers < 128) or a bare vmcall (any number) ----------- */
extern uint8_t hypercall_page[4096];
long hypercall(unsigned int nr, unsigned long a1, unsigned long a2, unsigned long a3,
               unsigned long a4, unsigned long a5);
long hypercall_raw(unsigned long nr, unsigned long a1, unsigned long a2, unsigned long a3,
                   unsigned long a4, unsigned long a5);
#define HYPERCALL2(nr, a, b) hypercall(nr, (unsigned long)(a), (unsigned long)(b), 0, 0, 0)
#define HYPERCALL3(nr, a, b, c) hypercall(nr, (unsigned long)(a), (unsigned long)(b), (unsigned long)(c), 0, 0)
extern const char *hypercall_page_source;   /* "hypervisor" (MSR 0x40000000+ filled it) or "kernel" */
void poweroff(int reason) __attribute__((noreturn));

/* --- exceptions ------------------------------------------------------------------------------------
 * with_trap(fn, arg) runs fn(arg) and returns -1 if it returned, else the vector of the exception that
 * stopped it; last_trap then holds what the CPU pushed. An exception outside with_trap is a FAIL line
 * and the kernel powers off. */
struct trap_info { unsigned long vector, error_code, rip, cr2; };
extern struct trap_info last_trap;
long with_trap(void (*fn)(void *), void *arg);
int rdmsr_safe(uint32_t msr, uint64_t *val);       /* 0, or the vector (13 for #GP) */
int wrmsr_safe(uint32_t msr, uint64_t val);

/* --- the boot information ------------------------------------------------------------------------- */
extern struct hvm_start_info *start_info;
extern const char *cmdline;                        /* start_info's command line ("" if none) */
const char *cmdline_arg(const char *key);          /* value of key=value (to the next space), or NULL */
unsigned long cmdline_ulong(const char *key, unsigned long dflt);
extern unsigned long ram_end;                      /* end of the highest RAM range in the memory map */

/* the kernel image: [image_start, image_end) must never be handed out as scratch memory */
extern char __image_start[], __image_end[];
/* the identity map's page directories: pd[n] maps the 2 MiB page at n * 2 MiB (0..4 GiB) */
extern uint64_t pd[4 * 512];
/* page-aligned scratch memory the cases may use and hand to the hypervisor (64 pages) */
extern uint8_t scratch[64 * 4096];

/* --- small things ------------------------------------------------------------------------------------ */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
uint64_t rand64(void);                             /* xorshift64*, seeded by rand_seed() */
void rand_seed(uint64_t seed);

uint32_t xen_cpuid_base(void);                     /* the leaf of "XenVMMXenVMM", or 0 */
uint64_t tsc_khz(void);                            /* from Xen's CPUID time leaf (base + 3), or 0 */
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

#endif
