"""The changes hyperdisco makes to unicorn 2.1.4's sources, as data (unicorn_build.py applies and builds).

Each `Patch` names a file of the sdist (relative to its `src/` directory), the exact text it replaces, the
new text and why. Applying a patch asserts that its old text occurs exactly once in the file as the earlier
patches left it, so a patch can never apply to code it was not written against, and a later patch may
anchor on text an earlier one added. `append(file, text, why)` adds text at the end of a file (new exported
functions go at the end of `uc.c`, which includes every header they need).

**Adding a patch** is a few lines at the end of PATCHES::

    Patch("msr-intercept", "qemu/target/i386/misc_helper.c",
          old="void helper_wrmsr(CPUX86State *env)\\n{\\n",
          new="void helper_wrmsr(CPUX86State *env)\\n{\\n    if (hd_wrmsr_hook(env)) return;\\n",
          why="WRMSR goes to the engine's MSR policy first (issue 13)"),
    append("uc.c", "UNICORN_EXPORT void uc_hd_something(uc_engine *uc) { ... }\\n", "why"),

Nothing else changes: the patch set's digest (the library's cache key, and the string the built library
returns from its exported `uc_hd_patch_set()`, which the engine checks at start-up) covers every patch, so
the next start-up (or `scripts/setup.sh`) builds the new library and fastpath.c is recompiled against it.
New fields of `struct uc_struct` go at its end (after `hd_code_opaque`), never before: qemu_state.py reaches
fields at fixed offsets. Exported functions are named `uc_hd_*`.

Rules of the patched library the engine relies on (docs/smp-atomicity.md has the reasoning):
- `uc_hd_set_cflags(uc, CF_PARALLEL)`: from the next translation on, this instance translates locked
  instructions into host atomics (QEMU's parallel TCG mode), per instance. The caller flushes the
  instance's translated code when it switches (old, non-atomic blocks stay chained to each other).
- a locked access that is misaligned or on MMIO (QEMU's EXCP_ATOMIC) ends `uc_emu_start` with
  `uc_hd_take_atomic(uc)` = 1 and the vCPU at that instruction, instead of re-executing it for ever; the
  engine stops the domain's other vCPUs and runs it with `uc_hd_set_step(uc, 1)`: exactly one instruction,
  translated without CF_PARALLEL, then `uc_emu_start` returns (`uc_hd_get_step(uc)` = 0 when it ran).
- the `xchg` helper is a real atomic exchange.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

UNICORN_VERSION = "2.1.4"  # the sdist the patches are written against (pyproject.toml pins the binding)
CF_PARALLEL = 0x00080000  # QEMU include/exec/exec-all.h: TB_CFLAGS parallel translation


@dataclass(frozen=True)
class Patch:
    name: str  # short, shared by the parts of one change
    file: str  # relative to the sdist's src/
    old: str  # exact text, present once; "" appends `new` at the end of the file
    new: str
    why: str


def append(file: str, text: str, why: str, name: str = "") -> Patch:
    """A patch that adds `text` at the end of `file`."""
    return Patch(name or f"append-{file}", file, "", text, why)


PATCHES: tuple[Patch, ...] = (
    # -- per-instance translation flags: CF_PARALLEL for SMP domains --------------------------------------
    Patch(
        "uc-fields", "include/uc_priv.h",
        old="    bool skip_sync_pc_on_exit;\n};",
        new=(
            "    bool skip_sync_pc_on_exit;\n"
            "    /* hyperdisco (engine/tcg/unicorn_patches.py); new fields go after these */\n"
            "    uint32_t hd_cflags;       /* curr_cflags() of this instance: 0 or CF_PARALLEL */\n"
            "    int hd_atomic_pending;    /* cpu_exec ended with EXCP_ATOMIC */\n"
            "    int hd_step;              /* 1: run one instruction without CF_PARALLEL; 2: it ran */\n"
            "    /* code coherence across the instances of a domain and host writes (fastpath.c) */\n"
            "    uint8_t *hd_code_map;     /* per guest-physical page, shared: 1 = someone translated it */\n"
            "    uint64_t hd_code_pages;\n"
            "    void (*hd_code_added)(void *opaque, uint64_t gpa);   /* first block on a page */\n"
            "    void (*hd_code_written)(void *opaque, uint64_t gpa); /* a store to a marked page */\n"
            "    void *hd_code_opaque;\n"
            "};\n"
            "\n"
            "/* hyperdisco: does some instance of this domain hold translated code from gpa's page? */\n"
            "static inline bool hd_code_marked(struct uc_struct *uc, uint64_t gpa)\n"
            "{\n"
            "    uint64_t p = gpa >> 12;\n"
            "    return uc->hd_code_map && p < uc->hd_code_pages &&\n"
            "           __atomic_load_n(&uc->hd_code_map[p], __ATOMIC_ACQUIRE);\n"
            "}\n"
            "/* hyperdisco: after a store through a notdirty entry (a fence, then the check: a translation\n"
            "   that marked the page before reading it either sees the store or is reported) */\n"
            "static inline void hd_code_stored(struct uc_struct *uc, uint64_t gpa)\n"
            "{\n"
            "    if (uc->hd_code_written) {\n"
            "        __atomic_thread_fence(__ATOMIC_SEQ_CST);\n"
            "        if (hd_code_marked(uc, gpa)) {\n"
            "            uc->hd_code_written(uc->hd_code_opaque, gpa);\n"
            "        }\n"
            "    }\n"
            "}\n"
            "uint64_t hd_ram_addr_to_gpa(struct uc_struct *uc, uint64_t ram_addr);"
        ),
        why="state of the hyperdisco patches, at the end of uc_struct so qemu_state.py's offsets hold",
    ),
    # -- coherent translated code (docs/smp-atomicity.md "Coherent translated code") -----------------------
    Patch(
        "code-added", "qemu/accel/tcg/translate-all.c",
        old="    if (!page_already_protected) {\n        tlb_protect_code(uc, page_addr);\n    }\n",
        new=(
            "    if (!page_already_protected) {\n"
            "        tlb_protect_code(uc, page_addr);\n"
            "        if (uc->hd_code_added) { /* hyperdisco: the other instances protect it too */\n"
            "            uc->hd_code_added(uc->hd_code_opaque, hd_ram_addr_to_gpa(uc, page_addr));\n"
            "        }\n"
            "    }\n"
        ),
        why="QEMU protects a page with translated code only in the translating instance's TLB",
    ),
    Patch(
        "code-mark-first", "qemu/accel/tcg/translate-all.c",
        old="    if (phys_pc == -1) {\n        /* Generate a temporary TB; do not cache */\n",
        new=(
            "    if (phys_pc != -1 && cpu->uc->hd_code_added) { /* hyperdisco: mark, then read the code */\n"
            "        cpu->uc->hd_code_added(cpu->uc->hd_code_opaque, hd_ram_addr_to_gpa(cpu->uc, phys_pc));\n"
            "    }\n"
            "    if (phys_pc == -1) {\n        /* Generate a temporary TB; do not cache */\n"
        ),
        why=(
            "marking the page only after translating it (tb_page_add) misses a store another vCPU makes "
            "while the bytes are read; marked first, the store's check after it (code-stored) sees the mark"
        ),
    ),
    Patch(
        "code-stored", "qemu/accel/tcg/cputlb.c",
        old="            store_memop(haddr, val, op);\n        }\n        return;\n    }\n",
        new=(
            "            store_memop(haddr, val, op);\n        }\n"
            "        if (unlikely(tlb_addr & TLB_NOTDIRTY)) {\n"
            "            hd_code_stored(env_cpu(env)->uc, entry->paddr); /* hyperdisco */\n"
            "        }\n"
            "        return;\n    }\n"
        ),
        why="the check after the store that pairs with code-mark-first (stores through helpers keep only "
            "the check before it, in code-written)",
    ),
    Patch(
        "code-notdirty", "qemu/accel/tcg/cputlb.c",
        old="            } else if (cpu_physical_memory_is_clean(iotlb)) {\n",
        new=(
            "            } else if (cpu_physical_memory_is_clean(iotlb) ||\n"
            "                       hd_code_marked(cpu->uc, paddr_page)) { /* hyperdisco */\n"
        ),
        why="stores to a page another instance of the domain translated code from take the notdirty path",
    ),
    Patch(
        "code-written", "qemu/accel/tcg/cputlb.c",
        old=(
            "    ram_addr_t ram_addr = mem_vaddr + iotlbentry->addr;\n"
            "    MemoryRegion *mr = cpu->uc->memory_mapping(cpu->uc, tlbe->paddr | "
            "(mem_vaddr & ~TARGET_PAGE_MASK));\n"
        ),
        new=(
            "    ram_addr_t ram_addr = mem_vaddr + iotlbentry->addr;\n"
            "    MemoryRegion *mr = cpu->uc->memory_mapping(cpu->uc, tlbe->paddr | "
            "(mem_vaddr & ~TARGET_PAGE_MASK));\n"
            "    if (cpu->uc->hd_code_written && hd_code_marked(cpu->uc, tlbe->paddr)) { /* hyperdisco */\n"
            "        cpu->uc->hd_code_written(cpu->uc->hd_code_opaque, tlbe->paddr);\n"
            "    }\n"
        ),
        why="a store by one instance to code another instance translated invalidates it there (fastpath.c)",
    ),
    append(
        "qemu/accel/tcg/cputlb.c",
        "\n/* hyperdisco: make this instance's fast-writable TLB entries of marked pages (hd_code_marked)\n"
        "   take the notdirty path; found() gets each such page (this instance may have written it since\n"
        "   another translated it). On the instance's own thread, outside cpu_exec. Returns how many. */\n"
        "int hd_tlb_protect_marked(CPUState *cpu, void (*found)(void *opaque, uint64_t gpa), void *opaque)\n"
        "{\n"
        "    struct uc_struct *uc = cpu->uc;\n"
        "    CPUArchState *env = cpu->env_ptr;\n"
        "    int mmu_idx, changed = 0;\n"
        "    for (mmu_idx = 0; mmu_idx < NB_MMU_MODES; mmu_idx++) {\n"
        "        CPUTLBDescFast *f = &env_tlb(env)->f[mmu_idx];\n"
        "        size_t n = tlb_n_entries(f), i;\n"
        "        for (i = 0; i < n + CPU_VTLB_SIZE; i++) {\n"
        "            CPUTLBEntry *e = i < n ? &f->table[i] : &env_tlb(env)->d[mmu_idx].vtable[i - n];\n"
        "            target_ulong a = e->addr_write;\n"
        "            if (a & (TLB_INVALID_MASK | TLB_MMIO | TLB_DISCARD_WRITE | TLB_NOTDIRTY)) {\n"
        "                continue;\n"
        "            }\n"
        "            if (!hd_code_marked(uc, e->paddr)) {\n"
        "                continue;\n"
        "            }\n"
        "            e->addr_write = a | TLB_NOTDIRTY;\n"
        "            changed++;\n"
        "            if (found) {\n"
        "                found(opaque, e->paddr & TARGET_PAGE_MASK);\n"
        "            }\n"
        "        }\n"
        "    }\n"
        "    return changed;\n"
        "}\n",
        "the other half of code-notdirty: TLB entries filled before the page got code",
        name="code-protect",
    ),
    append(
        "qemu/exec.c",
        "\n/* hyperdisco: unicorn maps each RAM region at its MemoryRegion's addr */\n"
        "uint64_t hd_ram_addr_to_gpa(struct uc_struct *uc, uint64_t ram_addr)\n"
        "{\n"
        "    RAMBlock *block = qemu_get_ram_block(uc, ram_addr);\n"
        "    return block->mr->addr + (ram_addr - block->offset);\n"
        "}\n"
        "\n"
        "/* hyperdisco: drop this instance's translated code from guest-physical page gpa (own thread) */\n"
        "void hd_invalidate_gpa_page(struct uc_struct *uc, uint64_t gpa)\n"
        "{\n"
        "    hwaddr xlat, l = TARGET_PAGE_SIZE;\n"
        "    MemoryRegion *mr = address_space_translate(uc->cpu->as, gpa & TARGET_PAGE_MASK, &xlat, &l,\n"
        "                                               false, MEMTXATTRS_UNSPECIFIED);\n"
        "    ram_addr_t ram;\n"
        "    if (!memory_region_is_ram(mr)) {\n"
        "        return;\n"
        "    }\n"
        "    ram = memory_region_get_ram_addr(mr) + xlat;\n"
        "    tb_invalidate_phys_range(uc, ram, ram + TARGET_PAGE_SIZE);\n"
        "}\n",
        "guest-physical to RAM address conversions for the coherence hooks",
        name="code-gpa",
    ),
    Patch(
        "parallel-cflags", "qemu/include/exec/exec-all.h",
        old="static inline uint32_t curr_cflags(void)\n{\n    return 0;\n}",
        new=(
            "/* hyperdisco: per instance (uc_hd_set_cflags); every caller has its CPUState `cpu` */\n"
            "#define curr_cflags() ((uint32_t)(cpu)->uc->hd_cflags)"
        ),
        why=(
            "unicorn compiles curr_cflags() to the constant 0, so locked instructions are plain load/op/"
            "store and are not atomic across vCPUs on several host threads; CF_PARALLEL makes them host "
            "atomics (tcg-op.c do_atomic_op_*)"
        ),
    ),
    Patch(
        "atomic-xchg", "qemu/accel/tcg/atomic_template.h",
        old="    ret = *haddr;\n    *haddr = val;\n",
        new="    ret = __atomic_exchange_n(haddr, val, __ATOMIC_SEQ_CST); /* hyperdisco */\n",
        why="unicorn's xchg helper reads then writes: xchg with memory is not atomic even under CF_PARALLEL",
    ),
    # -- EXCP_ATOMIC: misaligned or MMIO locked accesses --------------------------------------------------
    Patch(
        "excp-atomic", "qemu/softmmu/cpus.c",
        old="            r = cpu_exec(uc, cpu);\n",
        new=(
            "            r = cpu_exec(uc, cpu);\n"
            "            if (r == EXCP_ATOMIC) { /* hyperdisco: stepped with the other vCPUs stopped */\n"
            "                uc->hd_atomic_pending = 1;\n"
            "                finish = true;\n"
            "                break;\n"
            "            }\n"
        ),
        why=(
            "a misaligned or MMIO locked access raises EXCP_ATOMIC (cputlb.c atomic_mmu_lookup); unicorn "
            "has no cpu_exec_step_atomic and re-entered cpu_exec: the vCPU re-ran the instruction for ever"
        ),
    ),
    Patch(
        "step-one", "qemu/accel/tcg/cpu-exec.c",
        old=(
            "            if (cflags == -1) {\n"
            "                cflags = curr_cflags();\n"
            "            } else {\n"
            "                cpu->cflags_next_tb = -1;\n"
            "            }\n"
            "\n"
            "            tb = tb_find(cpu, last_tb, tb_exit, cflags);\n"
            "            if (unlikely(cpu->exit_request)) {\n"
            "                continue;\n"
            "            }\n"
        ),
        new=(
            "            if (unlikely(uc->hd_step == 2)) { /* hyperdisco: the one instruction ran */\n"
            "                uc->hd_step = 0;\n"
            "                uc->stop_request = true;\n"
            "                cpu->exit_request = 1;\n"
            "                continue;\n"
            "            }\n"
            "            if (unlikely(uc->hd_step == 1)) { /* one instruction, not parallel */\n"
            "                cflags = 1;\n"
            "                cpu->cflags_next_tb = -1;\n"
            "                last_tb = NULL; /* never chain into (or, stopping after it, from) it */\n"
            "            } else if (cflags == -1) {\n"
            "                cflags = curr_cflags();\n"
            "            } else {\n"
            "                cpu->cflags_next_tb = -1;\n"
            "            }\n"
            "\n"
            "            tb = tb_find(cpu, last_tb, tb_exit, cflags);\n"
            "            if (unlikely(cpu->exit_request)) {\n"
            "                continue;\n"
            "            }\n"
            "            if (unlikely(uc->hd_step == 1)) {\n"
            "                uc->hd_step = 2; /* also if it faults: the fault is delivered, then we stop */\n"
            "            }\n"
        ),
        why=(
            "QEMU's cpu_exec_step_atomic() for unicorn: the instruction that raised EXCP_ATOMIC runs as a "
            "one-instruction block translated without CF_PARALLEL (plain softmmu accesses, which handle "
            "misalignment and MMIO), while the engine holds the domain's other vCPUs stopped"
        ),
    ),
    append(
        "uc.c",
        "\n/* hyperdisco patches (engine/tcg/unicorn_patches.py) */\n"
        "UNICORN_EXPORT void uc_hd_set_cflags(uc_engine *uc, uint32_t cflags) { uc->hd_cflags = cflags; }\n"
        "UNICORN_EXPORT uint32_t uc_hd_get_cflags(uc_engine *uc) { return uc->hd_cflags; }\n"
        "UNICORN_EXPORT int uc_hd_take_atomic(uc_engine *uc)\n"
        "{\n    int p = uc->hd_atomic_pending;\n    uc->hd_atomic_pending = 0;\n    return p;\n}\n"
        "UNICORN_EXPORT void uc_hd_set_step(uc_engine *uc, int step) { uc->hd_step = step; }\n"
        "UNICORN_EXPORT int uc_hd_get_step(uc_engine *uc) { return uc->hd_step; }\n"
        "UNICORN_EXPORT void uc_hd_set_code_map(uc_engine *uc, uint8_t *map, uint64_t pages,\n"
        "                                       void (*added)(void *, uint64_t),\n"
        "                                       void (*written)(void *, uint64_t), void *opaque)\n"
        "{\n"
        "    uc->hd_code_map = map;\n"
        "    uc->hd_code_pages = pages;\n"
        "    uc->hd_code_added = added;\n"
        "    uc->hd_code_written = written;\n"
        "    uc->hd_code_opaque = opaque;\n"
        "}\n",
        "the engine's handles on the fields above",
        name="uc-exports",
    ),
)


def patch_set_digest(patches: tuple[Patch, ...] = PATCHES) -> str:
    """Identifies the unicorn version and every patch: the build's cache key and the marker it exports."""
    h = hashlib.sha256(UNICORN_VERSION.encode())
    for p in patches:
        for part in (p.name, p.file, p.old, p.new):
            h.update(len(part).to_bytes(8, "little") + part.encode())
    return h.hexdigest()[:16]


def marker_source(digest: str) -> str:
    """The C appended to uc.c after the patches: the exported proof of which patch set was built."""
    return (f'\nUNICORN_EXPORT const char *uc_hd_patch_set(void) {{ return "hyperdisco-{digest}"; }}\n')


class PatchError(Exception):
    pass


def apply(text: str, patch: Patch) -> str:
    """`text` with `patch` applied; PatchError unless its old text is there exactly once."""
    if patch.old == "":
        return text + patch.new
    n = text.count(patch.old)
    if n != 1:
        raise PatchError(f"patch {patch.name!r}: its old text occurs {n} times in {patch.file}, not once")
    return text.replace(patch.old, patch.new, 1)
