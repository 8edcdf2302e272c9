/* The test kernel's main: boot information, IDT, hypercall page, then every selected case, a summary
 * line, and a poweroff. */
#include "kernel.h"

extern const char *current_case;
extern int checks_passed, checks_failed;
extern const struct test_case __cases_start[], __cases_end[];
extern uint8_t trap_stubs[];

struct hvm_start_info *start_info;
const char *cmdline = "";
unsigned long ram_end;
const char *hypercall_page_source = "none";
uint8_t scratch[64 * 4096] __attribute__((aligned(4096)));

static char cmdline_copy[1024];

const char *cmdline_arg(const char *key)
{
    size_t k = strlen(key);
    for (const char *p = cmdline; *p;) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, k) && p[k] == '=')
            return p + k + 1;
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

unsigned long cmdline_ulong(const char *key, unsigned long dflt)
{
    const char *v = cmdline_arg(key);
    if (!v || !*v || *v == ' ')
        return dflt;
    unsigned long n = 0, base = 10;
    if (v[0] == '0' && v[1] == 'x')
        base = 16, v += 2;
    for (; *v && *v != ' '; v++) {
        int d = *v >= '0' && *v <= '9' ? *v - '0' : *v >= 'a' && *v <= 'f' ? *v - 'a' + 10 : 99;
        if (d >= (int)base)
            break;
        n = n * base + (unsigned long)d;
    }
    return n;
}

/* Whether the case runs: cases=a,b,c names cases (or name prefixes ending in '*'); without cases=, every
 * case but the explicit ones. */
static int selected(const struct test_case *c)
{
    const char *v = cmdline_arg("cases");
    if (!v)
        return !c->explicit_only;
    size_t n = strlen(c->name);
    while (*v && *v != ' ') {
        size_t len = 0;
        while (v[len] && v[len] != ',' && v[len] != ' ')
            len++;
        if (len && v[len - 1] == '*' ? !strncmp(v, c->name, len - 1) : len == n && !strncmp(v, c->name, n))
            return 1;
        v += len;
        if (*v == ',')
            v++;
    }
    return 0;
}

/* --- the IDT: 256 interrupt gates to trap_stubs (head.S), ring 0 --------------------------------------- */
static uint64_t idt[512] __attribute__((aligned(16)));

static void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        uint64_t a = (uint64_t)(trap_stubs + 16 * v);
        idt[2 * v] = (a & 0xffff) | (uint64_t)0x08 << 16 | (uint64_t)0x8e00 << 32 | (a >> 16 & 0xffff) << 48;
        idt[2 * v + 1] = a >> 32;
    }
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } d = {sizeof(idt) - 1, (uint64_t)idt};
    __asm__ volatile("lidt %0" : : "m"(d));
}

void unexpected_trap(unsigned long *frame)
{
    checks_failed++;
    kprintf("FAIL %s.unexpected_exception: vector %lu error code 0x%lx at rip 0x%lx\n", current_case,
            frame[0], frame[1], frame[2]);
    kprintf("SUMMARY passed=%d failed=%d aborted=1\n", checks_passed, checks_failed);
    poweroff(SHUTDOWN_crash);
}

/* --- the hypercall page: asked of the hypervisor through the MSR CPUID leaf base+2 names (Xen's
 * arch/x86/cpuid.c, hvm/viridian-free HVM guests: write the page's address to that MSR); if it stays
 * empty the kernel writes Xen's stubs itself (mov $nr, %eax; vmcall; ret, as xen/arch/x86/hvm/vmx/vmx.c
 * vmx_init_hypercall_page writes them) so that the cases can run either way. */
uint32_t xen_cpuid_base(void)
{
    uint32_t r[4];
    for (uint32_t leaf = 0x40000000; leaf < 0x40010000; leaf += 0x100) {
        cpuid(leaf, 0, r);
        if (r[1] == 0x566e6558 && r[2] == 0x65584d4d && r[3] == 0x4d4d566e)  /* "XenVMMXenVMM" */
            return leaf;
    }
    return 0;
}

static void hypercall_page_init(void)
{
    uint32_t r[4];
    uint32_t base = xen_cpuid_base();
    if (base) {
        cpuid(base + 2, 0, r);
        if (r[0] >= 1 && wrmsr_safe(r[1], (uint64_t)hypercall_page) == 0 && hypercall_page[0])
            hypercall_page_source = "hypervisor";
    }
    if (!hypercall_page[0]) {
        for (int nr = 0; nr < 128; nr++) {
            uint8_t *p = hypercall_page + 32 * nr;
            p[0] = 0xb8;                                   /* mov $nr, %eax */
            p[1] = (uint8_t)nr;
            p[2] = p[3] = p[4] = 0;
            p[5] = 0x0f, p[6] = 0x01, p[7] = 0xc1;         /* vmcall */
            p[8] = 0xc3;                                   /* ret */
        }
        hypercall_page_source = "kernel";
    }
}

struct e820 { uint64_t addr, size; uint32_t type, reserved; };

void kmain(unsigned long start_info_pa)
{
    start_info = (struct hvm_start_info *)start_info_pa;
    idt_init();
    hypercall_page_init();
    if (start_info->magic != XEN_HVM_START_MAGIC_VALUE) {
        kprintf("FAIL boot.start_info_magic: 0x%x\n", start_info->magic);
        poweroff(SHUTDOWN_crash);
    }
    if (start_info->cmdline_paddr) {
        const char *c = (const char *)start_info->cmdline_paddr;
        size_t n = 0;
        while (c[n] && n < sizeof(cmdline_copy) - 1)
            n++;
        memcpy(cmdline_copy, c, n);
        cmdline = cmdline_copy;
    }
    if (start_info->version >= 1 && start_info->memmap_paddr) {
        const struct e820 *m = (const struct e820 *)start_info->memmap_paddr;
        for (unsigned int i = 0; i < start_info->memmap_entries; i++)
            if (m[i].type == 1 && m[i].addr + m[i].size > ram_end)
                ram_end = m[i].addr + m[i].size;
    }
    kprintf("pvh-testkernel: start (hypercall page: %s, RAM to 0x%lx) cmdline: %s\n", hypercall_page_source,
            ram_end, cmdline);
    int ran = 0;
    for (const struct test_case *c = __cases_start; c < __cases_end; c++) {
        if (!selected(c))
            continue;
        current_case = c->name;
        kprintf("CASE %s\n", c->name);
        c->fn();
        ran++;
    }
    current_case = "end";
    kprintf("SUMMARY passed=%d failed=%d cases=%d\n", checks_passed, checks_failed, ran);
    poweroff(SHUTDOWN_poweroff);
}
