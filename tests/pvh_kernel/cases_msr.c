/* MSRs, control registers and exception delivery as Xen presents them to a PVH guest (issue 13,
 * docs/x86-conformance.md): the guest's own view of platform/msr.py's policy and the engine's fixes. */
#include "kernel.h"

#define MSR_APIC_BASE 0x1b
#define MSR_PAT 0x277
#define MSR_EFER 0xc0000080
#define MSR_LSTAR 0xc0000082
#define MSR_X2APIC_ID 0x802
#define MSR_XEN_HYPERCALL_PAGE 0x40000000
#define EFER_LME (1UL << 8)
#define EFER_LMA (1UL << 10)
#define EFER_SVME (1UL << 12)

CASE(msr)
{
    uint64_t v = 1;
    EXPECT("hypercall_page_from_msr", strncmp(hypercall_page_source, "hypervisor", 11) == 0);
    EXPECT_EQ("unknown_rdmsr", rdmsr_safe(0x1234, &v), 13);
    EXPECT_EQ("unknown_rdmsr_error_code", last_trap.error_code, 0);
    EXPECT_EQ("unknown_wrmsr", wrmsr_safe(0x1234, 0), 13);
    EXPECT_EQ("x2apic_not_offered", rdmsr_safe(MSR_X2APIC_ID, &v), 13);
    EXPECT_EQ("svm_msr_not_offered", rdmsr_safe(0xc0010114, &v), 13);
    EXPECT_EQ("xen_range_beyond_page", rdmsr_safe(MSR_XEN_HYPERCALL_PAGE + 1, &v), 13);
    v = 1;
    EXPECT_EQ("hypercall_msr_read", rdmsr_safe(MSR_XEN_HYPERCALL_PAGE, &v), 0);
    EXPECT_EQ("hypercall_msr_reads_zero", v, 0);
    EXPECT_EQ("hypercall_msr_offset", wrmsr_safe(MSR_XEN_HYPERCALL_PAGE, (uint64_t)scratch + 8), 13);
    EXPECT_EQ("hypercall_msr_beyond_ram", wrmsr_safe(MSR_XEN_HYPERCALL_PAGE, (ram_end + 0x100000) & ~0xfffUL),
              13);
    EXPECT_EQ("hypercall_msr_scratch_page", wrmsr_safe(MSR_XEN_HYPERCALL_PAGE, (uint64_t)scratch), 0);
    EXPECT("hypercall_msr_stub", scratch[0] == 0xb8 && scratch[5] == 0x0f);
    EXPECT_EQ("efer_read", rdmsr_safe(MSR_EFER, &v), 0);
    EXPECT_EQ("efer_long_mode", v & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    EXPECT_EQ("efer_svme", wrmsr_safe(MSR_EFER, v | EFER_SVME), 13);
    EXPECT_EQ("efer_rewrite", wrmsr_safe(MSR_EFER, v), 0);
    EXPECT_EQ("lstar_noncanonical", wrmsr_safe(MSR_LSTAR, 0x0000800000000000UL), 13);
    EXPECT_EQ("apic_base", rdmsr_safe(MSR_APIC_BASE, &v), 0);
    EXPECT_EQ("apic_base_value", v, 0xfee00900UL);
    EXPECT_EQ("apic_base_disable", wrmsr_safe(MSR_APIC_BASE, 0xfee00100UL), 13);
    EXPECT_EQ("pat_read", rdmsr_safe(MSR_PAT, &v), 0);
    EXPECT_EQ("pat_reserved_type", wrmsr_safe(MSR_PAT, (v & ~0xffUL) | 2), 13);
    uint64_t t0 = 0, t1 = 0;
    EXPECT_EQ("tsc_read", rdmsr_safe(0x10, &t0) + rdmsr_safe(0x10, &t1), 0);
    EXPECT("tsc_advances", t1 > t0 && t0 != 0);
}

static unsigned long read_cr(int n)
{
    unsigned long v = 0;
    switch (n) {
    case 0: __asm__ volatile("mov %%cr0, %0" : "=r"(v)); break;
    case 3: __asm__ volatile("mov %%cr3, %0" : "=r"(v)); break;
    case 4: __asm__ volatile("mov %%cr4, %0" : "=r"(v)); break;
    default: __asm__ volatile("mov %%cr8, %0" : "=r"(v)); break;
    }
    return v;
}

struct cr_arg { int n; unsigned long v; };

static void write_cr(void *p)
{
    struct cr_arg *a = p;
    switch (a->n) {
    case 0: __asm__ volatile("mov %0, %%cr0" : : "r"(a->v) : "memory"); break;
    case 3: __asm__ volatile("mov %0, %%cr3" : : "r"(a->v) : "memory"); break;
    case 4: __asm__ volatile("mov %0, %%cr4" : : "r"(a->v) : "memory"); break;
    default: __asm__ volatile("mov %0, %%cr8" : : "r"(a->v) : "memory"); break;
    }
}

static long try_cr(int n, unsigned long v)
{
    struct cr_arg a = {n, v};
    return with_trap(write_cr, &a);
}

CASE(cr)
{
    unsigned long cr0 = read_cr(0), cr3 = read_cr(3), cr4 = read_cr(4);
    EXPECT_EQ("cr4_vmxe", try_cr(4, cr4 | 1UL << 13), 13);          /* VMX: no nested virtualisation */
    EXPECT_EQ("cr4_reserved_bit", try_cr(4, cr4 | 1UL << 25), 13);
    EXPECT_EQ("cr4_upper_bits", try_cr(4, cr4 | 1UL << 40), 13);
    EXPECT_EQ("cr4_pae_off_in_long_mode", try_cr(4, cr4 & ~(1UL << 5)), 13);
    EXPECT_EQ("cr4_unchanged", read_cr(4), cr4);
    EXPECT_EQ("cr4_same_value", try_cr(4, cr4), -1);
    EXPECT_EQ("cr0_upper_bits", try_cr(0, cr0 | 1UL << 32), 13);
    EXPECT_EQ("cr0_nw_without_cd", try_cr(0, cr0 | 1UL << 29), 13);
    EXPECT_EQ("cr0_pg_without_pe", try_cr(0, cr0 & ~1UL), 13);
    EXPECT_EQ("cr0_unchanged", read_cr(0), cr0);
    EXPECT_EQ("cr3_bit63", try_cr(3, cr3 | 1UL << 63), 13);
    EXPECT_EQ("cr8_reserved", try_cr(8, 0x10), 13);
    EXPECT_EQ("cr8_valid", try_cr(8, 0), -1);
}

static const unsigned char icebp_code[] = {0xf1, 0xc3};          /* icebp; ret */
static const unsigned char paddb_code[] = {0x0f, 0xfc, 0xc1, 0xc3}; /* paddb %mm1, %mm0; ret */

CASE(x86_exceptions)
{
    EXPECT_EQ("icebp_is_db", with_trap((void (*)(void *))(uintptr_t)icebp_code, 0), 1);
    EXPECT_EQ("icebp_rip_after", last_trap.rip, (unsigned long)icebp_code + 1);
    unsigned long cr0 = read_cr(0);
    struct cr_arg em = {0, cr0 | 1UL << 2 | 1UL << 3};             /* CR0.EM and CR0.TS */
    EXPECT_EQ("set_em_ts", with_trap(write_cr, &em), -1);
    EXPECT_EQ("mmx_with_em_is_ud", with_trap((void (*)(void *))(uintptr_t)paddb_code, 0), 6);
    EXPECT_EQ("mmx_ud_rip", last_trap.rip, (unsigned long)paddb_code);
    struct cr_arg back = {0, cr0};
    EXPECT_EQ("restore_cr0", with_trap(write_cr, &back), -1);
}
