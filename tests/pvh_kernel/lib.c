/* The test kernel's library: console output, formatting, checks, hypercalls, MSR access, strings. */
#include "kernel.h"

const char *current_case = "boot";
int checks_passed, checks_failed;

/* --- hypercalls ------------------------------------------------------------------------------------
 * The 64-bit ABI (xen/include/public/arch-x86/xen-x86_64.h): number in RAX, arguments in RDI, RSI, RDX,
 * R10, R8, result in RAX. A hypercall page holds 128 stubs of 32 bytes, stub N for hypercall N. */
long hypercall(unsigned int nr, unsigned long a1, unsigned long a2, unsigned long a3, unsigned long a4,
               unsigned long a5)
{
    register unsigned long r10 __asm__("r10") = a4;
    register unsigned long r8 __asm__("r8") = a5;
    long ret;
    void *stub = hypercall_page + (nr & 127) * 32;
    __asm__ volatile("call *%[stub]"
                     : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     : [stub] "m"(stub)
                     : "memory", "rcx", "r11");
    return ret;
}

long hypercall_raw(unsigned long nr, unsigned long a1, unsigned long a2, unsigned long a3, unsigned long a4,
                   unsigned long a5)
{
    register unsigned long r10 __asm__("r10") = a4;
    register unsigned long r8 __asm__("r8") = a5;
    long ret;
    __asm__ volatile("vmcall"
                     : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     : "a"(nr)
                     : "memory", "rcx", "r11");
    return ret;
}

void poweroff(int reason)
{
    unsigned int why = (unsigned int)reason;
    HYPERCALL2(__HYPERVISOR_sched_op, SCHEDOP_shutdown, &why);
    for (;;)
        __asm__ volatile("hlt");
}

/* --- MSRs ------------------------------------------------------------------------------------------ */
struct msr_arg { uint32_t msr; uint64_t val; };

static void do_rdmsr(void *p)
{
    struct msr_arg *m = p;
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(m->msr));
    m->val = (uint64_t)hi << 32 | lo;
}

static void do_wrmsr(void *p)
{
    struct msr_arg *m = p;
    __asm__ volatile("wrmsr" : : "c"(m->msr), "a"((uint32_t)m->val), "d"((uint32_t)(m->val >> 32)) : "memory");
}

int rdmsr_safe(uint32_t msr, uint64_t *val)
{
    struct msr_arg m = {msr, 0};
    long v = with_trap(do_rdmsr, &m);
    *val = m.val;
    return v < 0 ? 0 : (int)v;
}

int wrmsr_safe(uint32_t msr, uint64_t val)
{
    struct msr_arg m = {msr, val};
    long v = with_trap(do_wrmsr, &m);
    return v < 0 ? 0 : (int)v;
}

/* --- strings --------------------------------------------------------------------------------------- */
void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

void rand_seed(uint64_t seed)
{
    rng_state = seed ? seed : 0x9e3779b97f4a7c15ull;
}

uint64_t rand64(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* --- formatting: %s %c %d %i %u %x %p with l/ll, a width and 0 padding ------------------------------- */
struct out { char *buf; size_t n, len; };

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->n)
        o->buf[o->len] = c;
    o->len++;
}

static void vformat(struct out *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(o, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0')
            pad = '0', fmt++;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l')
            longs++, fmt++;
        char tmp[24];
        int len = 0;
        unsigned long v;
        int neg = 0, base = 10;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            for (int w = (int)strlen(s); w < width; w++)
                put(o, ' ');
            while (*s)
                put(o, *s++);
            continue;
        }
        case 'c':
            put(o, (char)va_arg(ap, int));
            continue;
        case 'd':
        case 'i': {
            long s = longs ? va_arg(ap, long) : va_arg(ap, int);
            neg = s < 0;
            v = neg ? -(unsigned long)s : (unsigned long)s;
            break;
        }
        case 'p':
            put(o, '0');
            put(o, 'x');
            v = (unsigned long)va_arg(ap, void *);
            base = 16;
            break;
        case 'x':
        case 'u':
            v = longs ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
            base = *fmt == 'x' ? 16 : 10;
            break;
        case '%':
            put(o, '%');
            continue;
        default:
            put(o, '?');
            continue;
        }
        do {
            tmp[len++] = "0123456789abcdef"[v % base];
            v /= base;
        } while (v);
        if (neg)
            tmp[len++] = '-';
        for (int w = len; w < width; w++)
            put(o, pad);
        while (len)
            put(o, tmp[--len]);
    }
    if (o->n)
        o->buf[o->len < o->n ? o->len : o->n - 1] = 0;
}

int ksnprintf(char *buf, size_t n, const char *fmt, ...)
{
    struct out o = {buf, n, 0};
    va_list ap;
    va_start(ap, fmt);
    vformat(&o, fmt, ap);
    va_end(ap);
    return (int)o.len;
}

static void console_write(const char *s, size_t n)
{
    HYPERCALL3(__HYPERVISOR_console_io, CONSOLEIO_write, n, s);
}

static void vprint(const char *prefix, const char *fmt, va_list ap)
{
    char line[512];
    struct out o = {line, sizeof(line) - 1, 0};
    while (*prefix)
        put(&o, *prefix++);
    vformat(&o, fmt, ap);
    size_t n = o.len < sizeof(line) - 2 ? o.len : sizeof(line) - 2;
    console_write(line, n);
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint("", fmt, ap);
    va_end(ap);
}

void note(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    struct out o = {line, sizeof(line), 0};
    vformat(&o, fmt, ap);
    va_end(ap);
    kprintf("# %s: %s\n", current_case, line);
}

/* --- checks ---------------------------------------------------------------------------------------- */
void check(const char *label, int ok, const char *why_fmt, ...)
{
    if (ok) {
        checks_passed++;
        kprintf("PASS %s.%s\n", current_case, label);
        return;
    }
    char why[400];
    va_list ap;
    va_start(ap, why_fmt);
    struct out o = {why, sizeof(why), 0};
    vformat(&o, why_fmt, ap);
    va_end(ap);
    checks_failed++;
    kprintf("FAIL %s.%s: %s\n", current_case, label, why);
}

void expect_eq(const char *label, long got, long want)
{
    check(label, got == want, "got %ld, want %ld", got, want);
}
