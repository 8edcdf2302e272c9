/* The framework's own cases: the boot ABI, the console, xen_version, with_trap. */
#include "kernel.h"

CASE(boot)
{
    EXPECT_EQ("start_info_magic", start_info->magic, XEN_HVM_START_MAGIC_VALUE);
    EXPECT("memory_map", ram_end > 0x100000);
    check("hypercall_page", hypercall_page[5] == 0x0f && hypercall_page[6] == 0x01,
          "stub 0 is %02x %02x %02x, not a vmcall/vmmcall", hypercall_page[5], hypercall_page[6],
          hypercall_page[7]);
}

CASE(xen_version)
{
    long v = HYPERCALL2(__HYPERVISOR_xen_version, XENVER_version, 0);
    check("version", v >= (4 << 16), "XENVER_version gave 0x%lx", v);
    EXPECT_EQ("pagesize", HYPERCALL2(__HYPERVISOR_xen_version, XENVER_pagesize, 0), 4096);
    char extra[16];
    EXPECT_EQ("extraversion", HYPERCALL2(__HYPERVISOR_xen_version, XENVER_extraversion, extra), 0);
}

static void divide_by_zero(void *arg)
{
    unsigned int zero = 0, lo = 1, hi = 0;
    __asm__ volatile("divl %2" : "+a"(lo), "+d"(hi) : "r"(zero));
    *(unsigned int *)arg = lo;
}

static void nothing(void *arg)
{
    (void)arg;
}

static const unsigned char ud2_code[] = {0x0f, 0x0b};

CASE(with_trap)
{
    int out = 0;
    EXPECT_EQ("no_exception", with_trap(nothing, 0), -1);
    EXPECT_EQ("divide_error", with_trap(divide_by_zero, &out), 0);
    EXPECT_EQ("ud2", with_trap((void (*)(void *))(uintptr_t)ud2_code, 0), 6);
    EXPECT_EQ("ud2_rip", last_trap.rip, (unsigned long)ud2_code);
}
