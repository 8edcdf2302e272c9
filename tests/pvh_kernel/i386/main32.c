/*
 * A 32-bit PVH test kernel (issue 13): protected mode, paging off, or 2-level paging with 4 MiB pages, or
 * PAE paging (cmdline paging=2level / paging=pae); never long mode. Every hypercall goes through the
 * 32-bit ABI (EAX = number; EBX, ECX, EDX, ESI, EDI; xen/include/public/arch-x86/xen-x86_32.h) with the
 * structures as a 32-bit guest compiles Xen's public headers (xen_ulong_t, xen_pfn_t and handles are 4
 * bytes). Prints the PASS/FAIL/SUMMARY lines tests/integration/pvh_kernel.py reads, then powers off.
 */
#include <stdint.h>

#define __HYPERVISOR_memory_op 12
#define __HYPERVISOR_xen_version 17
#define __HYPERVISOR_console_io 18
#define __HYPERVISOR_sched_op 29
#define __HYPERVISOR_event_channel_op 32
#define CONSOLEIO_write 0
#define XENVER_version 0
#define XENVER_extraversion 1
#define XENVER_platform_parameters 5
#define XENMEM_add_to_physmap 7
#define XENMEM_memory_map 9
#define XENMAPSPACE_shared_info 0
#define EVTCHNOP_send 4
#define EVTCHNOP_alloc_unbound 6
#define EVTCHNOP_bind_ipi 7
#define __HYPERVISOR_hvm_op 34
#define HVMOP_set_param 0
#define HVM_PARAM_CALLBACK_IRQ 0
#define SCHEDOP_shutdown 2
#define SHUTDOWN_poweroff 0
#define DOMID_SELF 0x7ff0
#define XEN_EFAULT 14
#define XEN_EINVAL 22
#define XEN_ENOSYS 38

struct xen_add_to_physmap { uint16_t domid, size; uint32_t space; unsigned long idx, gpfn; };
struct xen_memory_map { uint32_t nr_entries; void *buffer; };
struct e820entry { uint64_t addr, size; uint32_t type; } __attribute__((packed));
struct evtchn_alloc_unbound { uint16_t dom, remote_dom; uint32_t port; };
struct xen_hvm_param { uint16_t domid; uint16_t pad; uint32_t index; uint64_t value; };
struct evtchn_bind_ipi { uint32_t vcpu; uint32_t port; };
/* shared_info and vcpu_info as a 32-bit guest compiles xen.h: xen_ulong_t is 4 bytes */
struct vcpu_info32 { uint8_t upcall_pending, upcall_mask; uint16_t pad; uint32_t pending_sel; uint32_t arch[6];
                     uint32_t time[8]; };
struct shared_info32 { struct vcpu_info32 vcpu_info[32]; uint32_t evtchn_pending[32], evtchn_mask[32];
                       uint32_t wc_version, wc_sec, wc_nsec; };
_Static_assert(sizeof(struct vcpu_info32) == 64, "vcpu_info");
_Static_assert(__builtin_offsetof(struct shared_info32, wc_version) == 2304, "compat shared_info");
struct hvm_start_info { uint32_t magic, version, flags, nr_modules; uint64_t modlist_paddr, cmdline_paddr; };

_Static_assert(sizeof(struct xen_add_to_physmap) == 16, "compat xen_add_to_physmap");
_Static_assert(sizeof(struct xen_memory_map) == 8, "compat xen_memory_map");

static long hypercall3(uint32_t nr, uint32_t a1, uint32_t a2, uint32_t a3)
{
    uint32_t eax = nr;
    __asm__ volatile("vmcall" : "+a"(eax), "+b"(a1), "+c"(a2), "+d"(a3) : : "memory", "esi", "edi");
    return (long)(int32_t)eax;
}

static uint32_t len_of(const char *s) { uint32_t n = 0; while (s[n]) n++; return n; }

static long puts_(const char *s) { return hypercall3(__HYPERVISOR_console_io, CONSOLEIO_write, len_of(s), (uint32_t)s); }

static char line[160];
static unsigned pos;

static void put_c(char c) { if (pos < sizeof(line) - 1) line[pos++] = c; }
static void put_s(const char *s) { while (*s) put_c(*s++); }
static void put_u(unsigned long v, unsigned base)
{
    char d[12]; int n = 0;
    do { d[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    while (n) put_c(d[--n]);
}
static void put_l(long v) { if (v < 0) { put_c('-'); v = -v; } put_u((unsigned long)v, 10); }
static void flush(void) { put_c('\n'); line[pos] = 0; puts_(line); pos = 0; }

static unsigned passed, failed, cases;

static void case_(const char *name) { put_s("CASE "); put_s(name); flush(); cases++; }

static void check(const char *label, int ok, long got)
{
    put_s(ok ? "PASS " : "FAIL "); put_s(label);
    if (!ok) { put_s(": got "); put_l(got); }
    flush();
    if (ok) passed++; else failed++;
}

static const char *cmdline_value(const char *cmd, const char *key)
{
    uint32_t k = len_of(key);
    for (const char *p = cmd; p && *p; p++) {
        if ((p == cmd || p[-1] == ' ') && p[k] == '=') {
            uint32_t i = 0;
            while (i < k && p[i] == key[i]) i++;
            if (i == k) return p + k + 1;
        }
    }
    return 0;
}

static int word_is(const char *v, const char *w)
{
    while (*w && *v == *w) { v++; w++; }
    return !*w && (!*v || *v == ' ');
}

static uint32_t pd[1024] __attribute__((aligned(4096)));              /* 2-level: 4 MiB pages */
static uint64_t pae_pd[4][512] __attribute__((aligned(4096)));        /* PAE: 2 MiB pages */
static uint64_t pdpt[4] __attribute__((aligned(32)));
static uint8_t shinfo_page[4096] __attribute__((aligned(4096)));
static struct e820entry map[16];

static void enable_paging(int pae)
{
    uint32_t cr4, cr0, cr3;
    if (pae) {
        for (int i = 0; i < 4; i++) {
            for (int j = 0; j < 512; j++)
                pae_pd[i][j] = ((uint64_t)i << 30) | ((uint64_t)j << 21) | 0x83;  /* P, RW, PS */
            pdpt[i] = (uint32_t)pae_pd[i] | 1;                                  /* P only */
        }
        cr3 = (uint32_t)pdpt;
    } else {
        for (int i = 0; i < 1024; i++)
            pd[i] = ((uint32_t)i << 22) | 0x83;
        cr3 = (uint32_t)pd;
    }
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 |= pae ? (1u << 5) : (1u << 4);  /* PAE, or PSE */
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4));
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 |= 1u << 31;
    __asm__ volatile("mov %0, %%cr0; jmp 1f; 1:" : : "r"(cr0) : "memory");
}

void main32(const struct hvm_start_info *si)
{
    const char *cmd = (const char *)(uint32_t)si->cmdline_paddr;
    const char *paging = cmdline_value(cmd, "paging");
    int want_pae = paging && word_is(paging, "pae"), want_2level = paging && word_is(paging, "2level");
    if (want_pae || want_2level)
        enable_paging(want_pae);

    put_s("pvh-testkernel-i386: start, paging "); put_s(want_pae ? "pae" : want_2level ? "2level" : "off");
    put_s(", start_info 0x"); put_u((uint32_t)si, 16); put_s(" cmdline at 0x"); put_u((uint32_t)cmd, 16);
    put_s(": "); put_s(cmd); flush();

    uint32_t cr0, cr4;
    __asm__ volatile("mov %%cr0, %0; mov %%cr4, %1" : "=r"(cr0), "=r"(cr4));
    case_("mode32");
    check("mode32.paging", !!(cr0 & (1u << 31)) == (want_pae || want_2level), cr0);
    check("mode32.pae", !!(cr4 & (1u << 5)) == want_pae, cr4);

    long r;
    case_("console32");
    check("console32.write_returns_length", puts_("# hello from 32-bit code\n") == 25, 0);
    check("console32.bad_pointer", hypercall3(__HYPERVISOR_console_io, CONSOLEIO_write, 8, 0xf0000000u)
                                       == -XEN_EFAULT, 0);
    r = hypercall3(__HYPERVISOR_console_io, 77, 0, 0);
    check("console32.bad_cmd", r == -XEN_ENOSYS, r);  /* do_console_io: an unknown command */

    case_("version32");
    long v = hypercall3(__HYPERVISOR_xen_version, XENVER_version, 0, 0);
    check("version32.version", v >= (4 << 16), v);
    char extra[16] = {0};
    check("version32.extraversion", hypercall3(__HYPERVISOR_xen_version, XENVER_extraversion,
                                                (uint32_t)extra, 0) == 0 && extra[0] == '-', extra[0]);
    uint32_t params[2] = {0x11111111u, 0x22222222u};
    r = hypercall3(__HYPERVISOR_xen_version, XENVER_platform_parameters, (uint32_t)params, 0);
    check("version32.platform_parameters", r == 0 && params[0] == 0 && params[1] == 0x22222222u, r);

    case_("memory32");
    struct xen_add_to_physmap xatp = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0,
                                      (uint32_t)shinfo_page >> 12};
    r = hypercall3(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, (uint32_t)&xatp, 0);
    check("memory32.add_to_physmap_shared_info", r == 0, r);
    struct xen_memory_map mm = {16, map};
    r = hypercall3(__HYPERVISOR_memory_op, XENMEM_memory_map, (uint32_t)&mm, 0);
    check("memory32.memory_map", r == 0 && mm.nr_entries >= 2 && mm.nr_entries <= 16 && map[0].addr == 0
                                     && map[0].type == 1 && mm.buffer == map, r);

    case_("evtchn32");
    struct evtchn_alloc_unbound au = {DOMID_SELF, DOMID_SELF, 0};
    r = hypercall3(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, (uint32_t)&au, 0);
    check("evtchn32.alloc_unbound", r == 0 && au.port > 0, r);
    uint32_t port = au.port;
    r = hypercall3(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (uint32_t)&port, 0);
    check("evtchn32.send", r == 0, r);
    port = 5000;
    r = hypercall3(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (uint32_t)&port, 0);
    check("evtchn32.send_bad_port", r == -XEN_EINVAL, r);

    /* Setting the callback from 32-bit code latches the 32-bit shared_info layout (Xen's
     * hvm_latch_shinfo_size): event words of 32 bits, the selector at offset 4, the wallclock at 2304. */
    case_("shinfo32");
    volatile struct shared_info32 *sh = (volatile struct shared_info32 *)shinfo_page;
    struct xen_hvm_param cb = {DOMID_SELF, 0, HVM_PARAM_CALLBACK_IRQ, (2ULL << 56) | 0xf3};
    r = hypercall3(__HYPERVISOR_hvm_op, HVMOP_set_param, (uint32_t)&cb, 0);
    check("shinfo32.set_callback", r == 0, r);
    check("shinfo32.wallclock", sh->wc_version % 2 == 0 && sh->wc_version && sh->wc_sec > 1600000000u,
          (long)sh->wc_sec);
    struct evtchn_bind_ipi ipi = {0, 0};
    r = hypercall3(__HYPERVISOR_event_channel_op, EVTCHNOP_bind_ipi, (uint32_t)&ipi, 0);
    check("shinfo32.bind_ipi", r == 0 && ipi.port > 0 && ipi.port < 1024, r);
    port = ipi.port;
    r = hypercall3(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (uint32_t)&port, 0);
    check("shinfo32.send", r == 0, r);
    check("shinfo32.pending_bit", (sh->evtchn_pending[ipi.port / 32] >> (ipi.port % 32)) & 1,
          (long)sh->evtchn_pending[ipi.port / 32]);
    check("shinfo32.selector", (sh->vcpu_info[0].pending_sel >> (ipi.port / 32)) & 1,
          (long)sh->vcpu_info[0].pending_sel);
    check("shinfo32.upcall_pending", sh->vcpu_info[0].upcall_pending == 1, sh->vcpu_info[0].upcall_pending);

    put_s("SUMMARY passed="); put_u(passed, 10); put_s(" failed="); put_u(failed, 10);
    put_s(" cases="); put_u(cases, 10); flush();
    uint32_t reason = SHUTDOWN_poweroff;
    hypercall3(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (uint32_t)&reason, 0);
}
