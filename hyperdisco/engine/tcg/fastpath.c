/*
 * hyperdisco tcg engine: the traps that must not cross into Python.
 *
 * unicorn never delivers exceptions through the guest IDT and replaces QEMU's SYSCALL helper by its own
 * hook dispatcher. These C hooks, registered on the uc handle that the Python binding created, deliver
 * every exception and page fault through QEMU's own x86_cpu_do_interrupt() and perform SYSCALL with the
 * long-mode semantics of the Intel SDM (RCX/R11, RFLAGS mask, flat CS/SS from STAR). Only hypercalls
 * (vmcall/vmmcall at CPL 0) call back into Python.
 *
 * Structure offsets inside unicorn 2.1.4's QEMU are passed in by qemu_state.py, which verifies them.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unicorn/unicorn.h>

extern void x86_cpu_do_interrupt_x86_64(void *cpu);
extern void do_interrupt_x86_hardirq_x86_64(void *env, int intno, int is_hw);
extern int cpu_memory_rw_debug_x86_64(void *cpu, uint64_t addr, void *ptr, size_t len, bool is_write);

typedef void (*hd_hypercall_cb)(void *opaque);
/* An MSR access the core answers (or, with HD_MSR_DENIED in `op`, one the policy refused, for its log):
 * op bit 0 = write; *value in/out. Returns 0 when done, 1 for #GP(0). */
typedef int (*hd_msr_cb)(void *opaque, uint32_t msr, uint32_t op, uint64_t *value);

/* QEMU target/i386/cpu.h: hflags bits and segment descriptor flags */
#define HF_CPL_MASK 3u
#define HF_INHIBIT_IRQ_MASK (1u << 3)
#define HF_CS32_MASK (1u << 4)
#define HF_SS32_MASK (1u << 5)
#define HF_ADDSEG_MASK (1u << 6)
#define HF_LMA_MASK (1u << 14)
#define HF_CS64_MASK (1u << 15)
#define DESC_G (1u << 23)
#define DESC_B (1u << 22)
#define DESC_L (1u << 21)
#define DESC_P (1u << 15)
#define DESC_S (1u << 12)
#define DESC_CS (1u << 11)
#define DESC_RW (1u << 9)
#define DESC_A (1u << 8)
#define DESC_DPL_SHIFT 13
#define RF_MASK (1ull << 16)
#define IF_MASK (1ull << 9)
#define R_CS 1
#define R_SS 2
#define EXCP_ILLOP 6

typedef struct hd_layout {
    int64_t env_eip, env_eflags, env_hflags, env_segs, seg_size;
    int64_t env_star, env_lstar, env_cstar, env_fmask;
    int64_t cpu_halted, cpu_exception_index;
    int64_t uc_nested_level, uc_jmp_bufs; /* unicorn's per-nesting-level sigjmp_buf array */
} hd_layout;

/* One CPUID answer; any_sub: the leaf ignores ECX. Filled by the core's CPUID policy (platform/cpuid.py). */
typedef struct hd_cpuid_entry {
    uint32_t leaf, subleaf, any_sub, eax, ebx, ecx, edx;
} hd_cpuid_entry;

struct hd_domain;
#define HD_INVAL_MAX 64 /* pages queued per vCPU before it drops all its translated code instead */

typedef struct hd_vcpu {
    uc_engine *uc;
    uint8_t *cpu;
    uint8_t *env;
    hd_layout lay;
    hd_hypercall_cb hypercall;
    void *opaque;
    /* counters, read by Python */
    uint64_t vectors[256];
    uint64_t pf_user, pf_kernel;
    uint64_t syscalls, hypercalls, bad_intno;
    uint64_t first_syscall_tsc;
    uc_hook hooks[4];
    hd_cpuid_entry *cpuid; /* NULL: CPUID is answered by the Python hook */
    uint64_t ncpuid, cpuid_count;
    /* code coherence (below): written by any thread under dom->lock, drained by the vCPU's own */
    struct hd_domain *dom;
    uint32_t protect_pending, inval_overflow;
    uint64_t ninval, inval[HD_INVAL_MAX];
    uint64_t code_invalidations, code_flushes, code_protects; /* counters, read by Python */
    int32_t pending; /* work above is queued: the patched unicorn will not start running (uc_hd_set_pending) */
    /* MSR and control-register policy (hook_rdmsr/hook_wrmsr/hook_crn below; Vcpu.load_control_policy) */
    struct hd_msr_rule *msrs; /* sorted by msr */
    uint64_t nmsrs;
    hd_msr_cb msr_cb;
    uint64_t cr4_valid, efer_valid, cr3_reserved;
    uint64_t msr_count, msr_gp, cr_gp;
    uc_hook policy_hooks[3];
} hd_vcpu;

static inline uint64_t rdtsc_(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
uint64_t hd_rdtsc(void) { return rdtsc_(); }

#define U32(v, off) (*(uint32_t *)((v)->env + (off)))
#define U64(v, off) (*(uint64_t *)((v)->env + (off)))
#define REG(v, i) (((uint64_t *)(v)->env)[i])

static inline unsigned cpl_of(hd_vcpu *v) { return U32(v, v->lay.env_hflags) & HF_CPL_MASK; }

static void hook_intr(uc_engine *uc, uint32_t intno, void *user) {
    hd_vcpu *v = user;
    (void)uc;
    if (intno > 255) { /* not an x86 vector: nothing QEMU could deliver */
        v->bad_intno++;
        uc_emu_stop(v->uc);
        return;
    }
    v->vectors[intno]++;
    if (intno == 14) {
        if (cpl_of(v) == 3) v->pf_user++; else v->pf_kernel++;
    }
    /* exception_index, error_code, is_int and next_eip are still set by raise_interrupt2() */
    x86_cpu_do_interrupt_x86_64(v->cpu);
}

/* QEMU's cpu_x86_load_seg_cache() for the long-mode case SYSCALL needs. */
static void load_seg(hd_vcpu *v, int seg, uint32_t sel, uint32_t flags) {
    uint8_t *s = v->env + v->lay.env_segs + seg * v->lay.seg_size;
    uint32_t hf = U32(v, v->lay.env_hflags);
    *(uint32_t *)(s + 0) = sel;
    *(uint64_t *)(s + 8) = 0;
    *(uint32_t *)(s + 16) = 0xffffffffu;
    *(uint32_t *)(s + 20) = flags;
    if (seg == R_CS) {
        if ((hf & HF_LMA_MASK) && (flags & DESC_L))
            hf |= HF_CS32_MASK | HF_SS32_MASK | HF_CS64_MASK;
        else
            hf = (hf & ~(HF_CS32_MASK | HF_CS64_MASK)) | ((flags & DESC_B) >> (22 - 4));
    }
    if (seg == R_SS) hf = (hf & ~HF_CPL_MASK) | ((flags >> DESC_DPL_SHIFT) & 3);
    {
        uint8_t *ss = v->env + v->lay.env_segs + R_SS * v->lay.seg_size;
        uint32_t nw = (*(uint32_t *)(ss + 20) & DESC_B) >> (22 - 5);
        hf = (hf & ~(HF_SS32_MASK | HF_ADDSEG_MASK)) | nw;
    }
    U32(v, v->lay.env_hflags) = hf;
}

static void hook_syscall(uc_engine *uc, void *user) {
    hd_vcpu *v = user;
    uint64_t star = U64(v, v->lay.env_star), fmask = U64(v, v->lay.env_fmask);
    bool from64 = U32(v, v->lay.env_hflags) & HF_CS64_MASK;
    uint64_t target = from64 ? U64(v, v->lay.env_lstar) : U64(v, v->lay.env_cstar);
    uint32_t sel = (uint32_t)(star >> 32) & 0xffff;
    uint64_t rip = U64(v, v->lay.env_eip), rfl = 0;
    v->syscalls++;
    if (!v->first_syscall_tsc) v->first_syscall_tsc = rdtsc_();
    REG(v, 1) = rip + 2;                       /* RCX: return address */
    uc_reg_read(uc, UC_X86_REG_EFLAGS, &rfl);  /* cpu_compute_eflags() */
    REG(v, 11) = rfl & ~RF_MASK;               /* R11: saved RFLAGS */
    rfl = rfl & ~(fmask | RF_MASK);
    uc_reg_write(uc, UC_X86_REG_EFLAGS, &rfl);
    load_seg(v, R_CS, sel & 0xfffc, DESC_G | DESC_P | DESC_S | DESC_CS | DESC_RW | DESC_A | DESC_L);
    load_seg(v, R_SS, (sel + 8) & 0xfffc, DESC_G | DESC_B | DESC_P | DESC_S | DESC_RW | DESC_A);
    U64(v, v->lay.env_eip) = target - 2; /* unicorn adds the instruction length after the hook */
}

static bool hook_invalid(uc_engine *uc, void *user) {
    hd_vcpu *v = user;
    uint8_t b[3] = {0, 0, 0};
    uint64_t rip = U64(v, v->lay.env_eip);
    (void)uc;
    if (cpl_of(v) == 0 && cpu_memory_rw_debug_x86_64(v->cpu, rip, b, 3, false) == 0 && b[0] == 0x0f &&
        b[1] == 0x01 && (b[2] == 0xc1 || b[2] == 0xd9)) {
        v->hypercalls++;
        U64(v, v->lay.env_eip) = rip + 3;
        v->hypercall(v->opaque);
        return true;
    }
    /* any other invalid opcode (ud2, vmcall from user space): #UD through the guest IDT */
    v->vectors[EXCP_ILLOP]++;
    x86_cpu_do_interrupt_x86_64(v->cpu);
    return true;
}

/* CPUID from the vCPU's table, without crossing into Python (glibc runs CPUID at every exec). */
static int hook_cpuid(uc_engine *uc, void *user) {
    hd_vcpu *v = user;
    uint32_t leaf = (uint32_t)REG(v, 0), sub = (uint32_t)REG(v, 1);
    uint32_t a = 0, b = 0, c = 0, d = 0;
    (void)uc;
    v->cpuid_count++;
    for (uint64_t i = 0; i < v->ncpuid; i++) {
        hd_cpuid_entry *e = &v->cpuid[i];
        if (e->leaf == leaf && (e->any_sub || e->subleaf == sub)) {
            a = e->eax; b = e->ebx; c = e->ecx; d = e->edx;
            break;
        }
    }
    REG(v, 0) = a; REG(v, 3) = b; REG(v, 1) = c; REG(v, 2) = d;
    return 1; /* answered: the instruction itself is skipped */
}

int hd_install_cpuid(hd_vcpu *v) {
    uc_err e = uc_hook_add(v->uc, &v->hooks[3], UC_HOOK_INSN, (void *)hook_cpuid, v, 1, 0, UC_X86_INS_CPUID);
    return e == UC_ERR_OK ? 0 : -(int)e;
}

int hd_install(hd_vcpu *v) {
    uc_err e;
    e = uc_hook_add(v->uc, &v->hooks[0], UC_HOOK_INTR, (void *)hook_intr, v, 1, 0);
    if (e != UC_ERR_OK) return -(int)e;
    e = uc_hook_add(v->uc, &v->hooks[1], UC_HOOK_INSN, (void *)hook_syscall, v, 1, 0, UC_X86_INS_SYSCALL);
    if (e != UC_ERR_OK) return -(int)e;
    e = uc_hook_add(v->uc, &v->hooks[2], UC_HOOK_INSN_INVALID, (void *)hook_invalid, v, 1, 0);
    if (e != UC_ERR_OK) return -(int)e;
    return 0;
}

int hd_can_inject(hd_vcpu *v) {
    return (U64(v, v->lay.env_eflags) & IF_MASK) && !(U32(v, v->lay.env_hflags) & HF_INHIBIT_IRQ_MASK);
}

/*
 * Deliver an external interrupt between slices. QEMU's delivery code ends a fault it meets (an IDT gate
 * that is not present, an unmapped stack) with cpu_loop_exit(), a siglongjmp to the jmp_buf of the
 * current emulation nesting level; outside uc_emu_start there is none, so we provide it: nesting level
 * 1, our sigsetjmp. A fault raised that way is then delivered here as cpu_exec() would (QEMU's
 * check_exception() escalates it to #DF, then to a triple fault), so the guest is ended, never the host.
 * Returns 0 when delivered, 1 when the guest has no memory under its IDT or stack, 2 on a triple fault,
 * -1 if called during emulation.
 */
int hd_inject(hd_vcpu *v, int vector) {
    uint8_t *uc = (uint8_t *)v->uc;
    int32_t *nested = (int32_t *)(uc + v->lay.uc_nested_level);
    int32_t *exc = (int32_t *)(v->cpu + v->lay.cpu_exception_index);
    sigjmp_buf *bufs = (sigjmp_buf *)(uc + v->lay.uc_jmp_bufs);
    volatile int rounds = 0;
    if (*nested != 0) return -1;
    *(uint32_t *)(v->cpu + v->lay.cpu_halted) = 0;
    *nested = 1;
    if (sigsetjmp(bufs[0], 0) == 0) {
        do_interrupt_x86_hardirq_x86_64(v->env, vector, 1);
        *nested = 0;
        return 0;
    }
    for (;;) {
        int32_t pending = *exc;
        if (pending < 0) { *nested = 0; return 1; }
        if (pending > 255 || ++rounds > 4) { *exc = -1; *nested = 0; return 2; }
        if (sigsetjmp(bufs[0], 0) == 0) {
            v->vectors[pending]++;
            x86_cpu_do_interrupt_x86_64(v->cpu);
            *exc = -1;
            *nested = 0;
            return 0;
        }
    }
}

size_t hd_sizeof_jmp_buf(void) { return sizeof(sigjmp_buf); }

size_t hd_sizeof_vcpu(void) { return sizeof(hd_vcpu); }

/* Guest-virtual to guest-physical through the guest's own page tables; -1 when not mapped. */
extern uint64_t x86_cpu_get_phys_page_attrs_debug_x86_64(void *cpu, uint64_t addr, void *attrs);

int64_t hd_translate(hd_vcpu *v, uint64_t va) {
    uint64_t attrs[2] = {0, 0};
    uint64_t page = x86_cpu_get_phys_page_attrs_debug_x86_64(v->cpu, va & ~0xfffull, attrs);
    if (page == (uint64_t)-1) return -1;
    return (int64_t)(page + (va & 0xfff));
}

/*
 * Coherent translated code across the vCPUs (unicorn instances) of a domain and writes by the host
 * (docs/smp-atomicity.md). QEMU invalidates translated code only in the instance whose store hits it. The
 * patched unicorn (unicorn_patches.py "code-*") shares one byte per guest-physical page between the
 * domain's instances, set when an instance translates its first block from the page (code_added), and
 * makes every instance's stores to a marked page take its notdirty path, which reports them
 * (code_written). Either side queues work for the other vCPUs and kicks them; a vCPU drains its queue on
 * its own thread, between uc_emu_start calls (hd_drain: before every run and every interrupt injection):
 *   - protect: a page got marked; its TLB entries for marked pages that still allow fast stores are made
 *     notdirty, and since it may have stored to such a page after the other instance read it, the page is
 *     treated as written (the translator drops and retranslates it once);
 *   - invalidate: drop its translated code from the queued pages (all of it if the queue overflowed).
 * A page's mark is cleared when it is written: its code is then being dropped by every vCPU, the writer
 * included, so that a clear mark means no vCPU holds code from the page once its queue is drained.
 */
extern int hd_tlb_protect_marked(void *cpu, void (*found)(void *opaque, uint64_t gpa), void *opaque);
extern void hd_invalidate_gpa_page(uc_engine *uc, uint64_t gpa);
extern void uc_hd_set_pending(uc_engine *uc, int *pending);
extern void uc_hd_set_code_map(uc_engine *uc, uint8_t *map, uint64_t pages,
                               void (*added)(void *, uint64_t), void (*written)(void *, uint64_t),
                               void *opaque);

#define HD_MAX_VCPUS 128

typedef struct hd_domain {
    pthread_mutex_t lock;
    uint8_t *map; /* one byte per guest-physical page, mmap'd: untouched parts cost nothing */
    uint64_t pages;
    hd_vcpu *vcpus[HD_MAX_VCPUS];
    int nvcpus;
    uint64_t host_writes_hit, cross_writes_hit, pages_marked; /* counters */
} hd_domain;

hd_domain *hd_dom_new(uint64_t pages) {
    hd_domain *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->map = mmap(NULL, pages, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (d->map == MAP_FAILED) { free(d); return NULL; }
    d->pages = pages;
    pthread_mutex_init(&d->lock, NULL);
    return d;
}

void hd_dom_free(hd_domain *d) {
    munmap(d->map, d->pages);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* under d->lock */
static void queue_inval(hd_vcpu *o, uint64_t gpa) {
    for (uint64_t i = 0; i < o->ninval; i++)
        if (o->inval[i] == gpa) return;
    if (o->ninval < HD_INVAL_MAX) o->inval[o->ninval++] = gpa;
    else o->inval_overflow = 1;
    __atomic_store_n(&o->pending, 1, __ATOMIC_SEQ_CST);
}

/* under d->lock: every vCPU drops its code from the page before it runs on. The writer too: QEMU drops
   only its blocks that overlap the bytes stored, and a page whose mark is cleared must hold none. */
static void broadcast_inval(hd_domain *d, uint64_t gpa) {
    for (int i = 0; i < d->nvcpus; i++) {
        hd_vcpu *o = d->vcpus[i];
        queue_inval(o, gpa);
        uc_emu_stop(o->uc);
    }
}

static void code_added(void *opaque, uint64_t gpa) {
    hd_vcpu *v = opaque;
    hd_domain *d = v->dom;
    uint64_t p = gpa >> 12;
    if (p >= d->pages || __atomic_load_n(&d->map[p], __ATOMIC_ACQUIRE)) return; /* at every translation */
    pthread_mutex_lock(&d->lock);
    if (!d->map[p]) {
        __atomic_store_n(&d->map[p], 1, __ATOMIC_SEQ_CST);
        d->pages_marked++;
        for (int i = 0; i < d->nvcpus; i++) {
            hd_vcpu *o = d->vcpus[i];
            if (o == v) continue;
            o->protect_pending = 1;
            __atomic_store_n(&o->pending, 1, __ATOMIC_SEQ_CST);
            uc_emu_stop(o->uc);
        }
    }
    pthread_mutex_unlock(&d->lock);
}

static void written(hd_domain *d, hd_vcpu *self, uint64_t gpa) {
    uint64_t p = gpa >> 12;
    if (p >= d->pages || !__atomic_load_n(&d->map[p], __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&d->lock);
    if (d->map[p]) {
        __atomic_store_n(&d->map[p], 0, __ATOMIC_SEQ_CST);
        broadcast_inval(d, gpa & ~0xfffull);
        if (self) d->cross_writes_hit++; else d->host_writes_hit++;
    }
    pthread_mutex_unlock(&d->lock);
}

static void code_written(void *opaque, uint64_t gpa) {
    hd_vcpu *v = opaque;
    written(v->dom, v, gpa);
}

/* found by hd_tlb_protect_marked: this vCPU could have stored to the page unseen */
static void protect_found(void *opaque, uint64_t gpa) {
    hd_vcpu *v = opaque;
    v->code_protects++;
    written(v->dom, v, gpa);
}

int hd_dom_join(hd_domain *d, hd_vcpu *v) {
    pthread_mutex_lock(&d->lock);
    if (d->nvcpus == HD_MAX_VCPUS) { pthread_mutex_unlock(&d->lock); return -1; }
    d->vcpus[d->nvcpus++] = v;
    v->dom = d;
    v->protect_pending = 1; /* pages marked before it joined */
    v->pending = 1;
    pthread_mutex_unlock(&d->lock);
    uc_hd_set_code_map(v->uc, d->map, d->pages, code_added, code_written, v);
    uc_hd_set_pending(v->uc, &v->pending);
    return 0;
}

void hd_dom_leave(hd_domain *d, hd_vcpu *v) {
    pthread_mutex_lock(&d->lock);
    for (int i = 0; i < d->nvcpus; i++) {
        if (d->vcpus[i] == v) {
            d->vcpus[i] = d->vcpus[--d->nvcpus];
            break;
        }
    }
    v->dom = NULL;
    v->pending = 0;
    pthread_mutex_unlock(&d->lock);
    uc_hd_set_code_map(v->uc, NULL, 0, NULL, NULL, NULL);
    uc_hd_set_pending(v->uc, NULL);
}

/* The host (a backend, the loader, a grant copy) wrote guest-physical [gpa, gpa+len). Any thread. */
void hd_dom_host_written(hd_domain *d, uint64_t gpa, uint64_t len) {
    if (len == 0) return;
    for (uint64_t p = gpa >> 12, last = (gpa + len - 1) >> 12; p <= last && p < d->pages; p++)
        written(d, NULL, p << 12);
}

/* On the vCPU's own thread, outside uc_emu_start: apply what other threads queued. Returns 1 if there was
   anything to do. */
int hd_drain(hd_vcpu *v) {
    hd_domain *d = v->dom;
    uint64_t pages[HD_INVAL_MAX];
    uint64_t n;
    uint32_t protect, overflow;
    if (!d) return 0;
    if (!__atomic_load_n(&v->pending, __ATOMIC_ACQUIRE)) return 0;
    pthread_mutex_lock(&d->lock);
    protect = v->protect_pending;
    overflow = v->inval_overflow;
    n = v->ninval;
    memcpy(pages, v->inval, n * sizeof pages[0]);
    v->protect_pending = v->inval_overflow = 0;
    v->ninval = 0;
    __atomic_store_n(&v->pending, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&d->lock);
    if (protect) hd_tlb_protect_marked(v->cpu, protect_found, v);
    if (overflow) {
        uc_ctl(v->uc, UC_CTL_WRITE(UC_CTL_TB_FLUSH, 0));
        v->code_flushes++;
    } else {
        for (uint64_t i = 0; i < n; i++) hd_invalidate_gpa_page(v->uc, pages[i]);
        v->code_invalidations += n;
    }
    return 1;
}

uint8_t *hd_dom_map(hd_domain *d) { return d->map; }

/*
 * MSR and control-register policy (issue 13). With the project's patched unicorn (unicorn_patches.py:
 * "msr-hooks", "cr-write-hook"), RDMSR/WRMSR and MOV to CR0/CR3/CR4/CR8 reach these hooks before QEMU
 * performs them; a hook returns 0 to let QEMU do it, 1 when it did it itself, 2 for #GP(0) at the
 * instruction. The rules come from platform/msr.py, which derives them from the domain's CPUID and
 * follows Xen (xen/arch/x86/msr.c guest_rdmsr/guest_wrmsr, hvm/hvm.c hvm_msr_{read,write}_intercept,
 * hvm_set_cr0/hvm_set_cr4/hvm_set_efer/hvm_efer_valid).
 */
#define HD_MSR_RD_ENGINE 0x01u /* QEMU holds the MSR: it reads it */
#define HD_MSR_WR_ENGINE 0x02u /* ... and writes it, after the checks below */
#define HD_MSR_RD_CORE 0x04u   /* the core answers reads (msr_cb) */
#define HD_MSR_WR_CORE 0x08u   /* the core performs writes (msr_cb) */
#define HD_MSR_CANONICAL 0x10u /* a write must be a canonical address */
#define HD_MSR_PAT 0x20u       /* a write must hold 8 valid memory types */
#define HD_MSR_RD_TSC 0x40u    /* reads return the TSC, as RDTSC does on this engine */
#define HD_MSR_EFER 0x80u      /* EFER: valid bits, LME fixed while paging is on */
#define HD_MSR_DENIED 2u

#define CR0_PE (1ull << 0)
#define CR0_NW (1ull << 29)
#define CR0_CD (1ull << 30)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define CR4_PCIDE (1ull << 17)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define MSR_EFER_ 0xc0000080u

typedef struct hd_msr_rule {
    uint32_t msr, flags;
    uint64_t reserved; /* bits a write may not set */
} hd_msr_rule;

static hd_msr_rule *find_msr(hd_vcpu *v, uint32_t msr) {
    uint64_t lo = 0, hi = v->nmsrs;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (v->msrs[mid].msr == msr) return &v->msrs[mid];
        if (v->msrs[mid].msr < msr) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

static int msr_denied(hd_vcpu *v, uint32_t msr, uint32_t write, uint64_t val) {
    v->msr_gp++;
    if (v->msr_cb) v->msr_cb(v->opaque, msr, write | HD_MSR_DENIED, &val);
    return 2;
}

static inline bool canonical(uint64_t a) { return (uint64_t)(((int64_t)a << 16) >> 16) == a; }

static bool pat_valid(uint64_t val) {
    for (int i = 0; i < 8; i++) {
        unsigned t = (val >> (8 * i)) & 0xff;
        if (t == 2 || t == 3 || t > 7) return false; /* SDM vol. 3A 11.12.2: 2, 3, 8-255 reserved */
    }
    return true;
}

static uint64_t read_reg(uc_engine *uc, int reg) {
    uint64_t x = 0;
    uc_reg_read(uc, reg, &x);
    return x;
}

static uint64_t read_efer(uc_engine *uc) {
    uc_x86_msr m = {MSR_EFER_, 0};
    uc_reg_read(uc, UC_X86_REG_MSR, &m); /* the patched library reads it without the hooks */
    return m.value;
}

static int hook_rdmsr(uc_engine *uc, void *user) {
    hd_vcpu *v = user;
    uint32_t msr = (uint32_t)REG(v, 1);
    hd_msr_rule *r = find_msr(v, msr);
    uint64_t val = 0;
    (void)uc;
    v->msr_count++;
    if (r == NULL) return msr_denied(v, msr, 0, 0);
    if (r->flags & HD_MSR_RD_ENGINE) return 0;
    if (r->flags & HD_MSR_RD_TSC) val = rdtsc_();
    else if (!(r->flags & HD_MSR_RD_CORE) || v->msr_cb(v->opaque, msr, 0, &val) != 0) {
        v->msr_gp++;
        return 2;
    }
    REG(v, 0) = (uint32_t)val;
    REG(v, 2) = (uint32_t)(val >> 32);
    return 1;
}

static int hook_wrmsr(uc_engine *uc, void *user) {
    hd_vcpu *v = user;
    uint32_t msr = (uint32_t)REG(v, 1);
    uint64_t val = (uint32_t)REG(v, 0) | ((uint64_t)(uint32_t)REG(v, 2) << 32);
    hd_msr_rule *r = find_msr(v, msr);
    v->msr_count++;
    if (r == NULL) return msr_denied(v, msr, 1, val);
    if (r->flags & HD_MSR_WR_ENGINE) {
        if (r->flags & HD_MSR_EFER) {
            /* Xen hvm_set_efer: LMA is not written; unknown or unoffered bits and changing LME while
             * paging is on raise #GP */
            uint64_t cur = read_efer(uc);
            val &= ~EFER_LMA;
            if ((val & ~v->efer_valid) ||
                (((val ^ cur) & EFER_LME) && (read_reg(uc, UC_X86_REG_CR0) & CR0_PG)))
                goto gp;
        }
        if ((val & r->reserved) || ((r->flags & HD_MSR_CANONICAL) && !canonical(val)) ||
            ((r->flags & HD_MSR_PAT) && !pat_valid(val)))
            goto gp;
        return 0;
    }
    if ((r->flags & HD_MSR_WR_CORE) && !(val & r->reserved) && v->msr_cb(v->opaque, msr, 1, &val) == 0)
        return 1;
gp:
    v->msr_gp++;
    return 2;
}

/* MOV to CR0/CR3/CR4/CR8 (and LMSW): the checks of Xen's hvm_set_cr0/hvm_set_cr4 and of the Intel SDM
 * vol. 2B MOV (control registers) that QEMU leaves out (it truncates or masks instead). */
static int hook_crn(uc_engine *uc, uint32_t cr, uint64_t val, void *user) {
    hd_vcpu *v = user;
    uint64_t cr0 = read_reg(uc, UC_X86_REG_CR0), efer = read_efer(uc);
    uint64_t cr4 = read_reg(uc, UC_X86_REG_CR4);
    switch (cr) {
    case 0:
        if ((val >> 32) || ((val & CR0_PG) && !(val & CR0_PE)) || ((val & CR0_NW) && !(val & CR0_CD)))
            goto gp;
        if ((val & CR0_PG) && !(cr0 & CR0_PG) && (efer & EFER_LME) && !(cr4 & CR4_PAE)) goto gp;
        if (!(val & CR0_PG) && (cr0 & CR0_PG) && (cr4 & CR4_PCIDE)) goto gp;
        return 0;
    case 3:
        if ((efer & EFER_LMA) && (val & v->cr3_reserved)) goto gp;
        return 0;
    case 4:
        if (val & ~v->cr4_valid) goto gp;
        if (!(val & CR4_PAE) && (efer & EFER_LMA)) goto gp;
        if ((val & CR4_PCIDE) && !(cr4 & CR4_PCIDE) &&
            (!(efer & EFER_LMA) || (read_reg(uc, UC_X86_REG_CR3) & 0xfff)))
            goto gp;
        return 0;
    case 8:
        if (val & ~0xfull) goto gp;
        return 0;
    default:
        return 0;
    }
gp:
    v->cr_gp++;
    return 2;
}

/* Returns 0, or -UC_ERR_HOOK when this unicorn does not pass RDMSR/WRMSR/MOV CR to hooks (not the
 * project's patched build). */
int hd_install_policy(hd_vcpu *v) {
    uc_err e;
    if (v->policy_hooks[0]) return 0;
    e = uc_hook_add(v->uc, &v->policy_hooks[0], UC_HOOK_INSN, (void *)hook_rdmsr, v, 1, 0, UC_X86_INS_RDMSR);
    if (e != UC_ERR_OK) return -(int)e;
    e = uc_hook_add(v->uc, &v->policy_hooks[1], UC_HOOK_INSN, (void *)hook_wrmsr, v, 1, 0, UC_X86_INS_WRMSR);
    if (e != UC_ERR_OK) return -(int)e;
    e = uc_hook_add(v->uc, &v->policy_hooks[2], UC_HOOK_INSN, (void *)hook_crn, v, 1, 0, UC_X86_INS_MOV);
    if (e != UC_ERR_OK) return -(int)e;
    return 0;
}
