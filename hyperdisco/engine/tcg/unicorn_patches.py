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
New fields of `struct uc_struct` go at its end (after `hd_step`), never before: qemu_state.py reaches
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
            "};"
        ),
        why="state of the hyperdisco patches, at the end of uc_struct so qemu_state.py's offsets hold",
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
        "UNICORN_EXPORT int uc_hd_get_step(uc_engine *uc) { return uc->hd_step; }\n",
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
