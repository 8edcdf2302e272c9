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
New fields of `struct uc_struct` go at its end (after `hd_pending`), never before: qemu_state.py reaches
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


# -- issue 13: MSRs, control registers and exception delivery as Xen presents them to a PVH guest ---------
# The policy itself (which MSR, which bit) lives in fastpath.c and platform/msr.py; these patches only give
# the engine the interception points QEMU/unicorn lack, and fix exception delivery where TCG departs from
# the architecture. docs/x86-conformance.md lists them with their references.
def _insn_hooks_fn(name: str, params: str, insn: str, types: str, args: str, stop_request: bool) -> str:
    """The C of a dispatcher to UC_HOOK_INSN hooks, the shape of unicorn's own (uc.c's hook loops): each
    live hook bound to EIP whose insn is `insn` is called in turn, as int cb(uc, `types`... user_data) with
    `args`, until one returns non-zero, which the function returns (0: none did); `stop_request`: the loop
    also ends at a uc_emu_stop."""
    stop = "        if (env->uc->stop_request)\n            break;\n" if stop_request else ""
    return (f"static int {name}(CPUX86State *env, {params})\n{{\n"
            "    uc_engine *uc = env->uc;\n    struct hook *hook;\n    int r = 0;\n\n"
            "    HOOK_FOREACH_VAR_DECLARE;\n    HOOK_FOREACH(env->uc, hook, UC_HOOK_INSN) {\n"
            "        if (hook->to_delete)\n            continue;\n"
            "        if (!HOOK_BOUND_CHECK(hook, env->eip))\n            continue;\n"
            f"        if (hook->insn == {insn}) {{\n"
            f"            JIT_CALLBACK_GUARD_VAR(r, ((int (*)(uc_engine *, {types}void *))hook->callback)(\n"
            f"                env->uc, {args}hook->user_data));\n"
            "            if (r)\n                break;\n        }\n"
            f"{stop}    }}\n    return r;\n}}\n")


def _msr_helper(op: str, svm_write: int) -> str:
    """QEMU's helper_wrmsr/helper_rdmsr (`op` "wr"/"rd") with the hooks first: #GP(0) when a hook returns
    2, QEMU's own access (hd_*msr_nohook) when none took it."""
    return (f"void helper_{op}msr(CPUX86State *env)\n{{\n    int r;\n\n"
            f"    cpu_svm_check_intercept_param(env, SVM_EXIT_MSR, {svm_write}, GETPC());\n"
            f"    r = hd_msr_hooks(env, UC_X86_INS_{op.upper()}MSR);\n"
            "    if (r == 2) {\n        raise_exception_err_ra(env, EXCP0D_GPF, 0, GETPC());\n    }\n"
            f"    if (r == 0) {{\n        hd_{op}msr_nohook(env);\n    }}\n}}\n")


_MSR_HOOKS_FN = ("""/*
 * hyperdisco: RDMSR/WRMSR reach UC_HOOK_INSN hooks registered for UC_X86_INS_RDMSR/UC_X86_INS_WRMSR,
 * callback int cb(uc_engine *uc, void *user_data), ECX/EAX/EDX in the registers. It returns
 * 0: QEMU emulates the access itself, 1: the hook performed it (for RDMSR it set EDX:EAX),
 * 2: the access raises #GP(0) at the instruction.
 */
""" + _insn_hooks_fn("hd_msr_hooks", "int insn", "insn", "", "", stop_request=True)
                 + "\n" + _msr_helper("wr", 1) + "\n" + _msr_helper("rd", 0)
                 + "\nstatic void do_pause(X86CPU *cpu)")

_CR_HOOK_FN = ("""/*
 * hyperdisco: MOV to CR0/CR3/CR4/CR8 (and LMSW) reach UC_HOOK_INSN hooks registered for UC_X86_INS_MOV,
 * callback int cb(uc_engine *uc, uint32_t cr, uint64_t value, void *user_data), before QEMU applies
 * (and silently truncates or masks) the value. It returns 0 to let the write happen, 2 for #GP(0).
 */
""" + _insn_hooks_fn("hd_crn_hooks", "int reg, target_ulong t0", "UC_X86_INS_MOV", "uint32_t, uint64_t, ",
                     "(uint32_t)reg, (uint64_t)t0, ", stop_request=False)
               + """
static void hd_write_crN(CPUX86State *env, int reg, target_ulong t0, uintptr_t ra)
{
    cpu_svm_check_intercept_param(env, SVM_EXIT_WRITE_CR0 + reg, 0, ra);
    if (hd_crn_hooks(env, reg, t0) == 2) {
        raise_exception_err_ra(env, EXCP0D_GPF, 0, ra);
    }
""")

X86_CONFORMANCE_PATCHES: tuple[Patch, ...] = (
    # -- RDMSR/WRMSR interception ------------------------------------------------------------------------
    Patch(
        "msr-hooks", "qemu/target/i386/misc_helper.c",
        old=("void helper_wrmsr(CPUX86State *env)\n{\n    uint64_t val;\n\n"
             "    cpu_svm_check_intercept_param(env, SVM_EXIT_MSR, 1, GETPC());\n"),
        new=("/* QEMU's own WRMSR, without hooks (also what uc_reg_write(UC_X86_REG_MSR) runs) */\n"
             "void hd_wrmsr_nohook(CPUX86State *env)\n{\n    uint64_t val;\n"),
        why=("unicorn 2.1.4 has UC_X86_INS_RDMSR/WRMSR in its enum but never calls hooks for them and "
             "silently ignores unknown MSRs ('XXX: exception?'); the body becomes the hook-free path"),
    ),
    Patch(
        "msr-hooks", "qemu/target/i386/misc_helper.c",
        old=("void helper_rdmsr(CPUX86State *env)\n{\n    X86CPU *x86_cpu = env_archcpu(env);\n"
             "    uint64_t val;\n\n    cpu_svm_check_intercept_param(env, SVM_EXIT_MSR, 0, GETPC());\n"),
        new=("/* QEMU's own RDMSR, without hooks (also what uc_reg_read(UC_X86_REG_MSR) runs) */\n"
             "void hd_rdmsr_nohook(CPUX86State *env)\n{\n    X86CPU *x86_cpu = env_archcpu(env);\n"
             "    uint64_t val;\n"),
        why="as for WRMSR: unknown MSRs read as 0 instead of #GP",
    ),
    Patch(
        "msr-hooks", "qemu/target/i386/misc_helper.c",
        old="static void do_pause(X86CPU *cpu)",
        new=_MSR_HOOKS_FN,
        why=("the engine's MSR policy decides every guest RDMSR/WRMSR: QEMU performs it, the hook does, or "
             "#GP(0) at the instruction (Intel SDM vol. 2B RDMSR/WRMSR: '#GP(0) if the value in ECX "
             "specifies a reserved or unimplemented MSR address'; Xen msr.c guest_rdmsr/guest_wrmsr)"),
    ),
    Patch(
        "msr-hooks", "qemu/target/i386/cpu.h",
        old="void cpu_x86_update_cr4(CPUX86State *env, uint32_t new_cr4);",
        new=("void cpu_x86_update_cr4(CPUX86State *env, uint32_t new_cr4);\n"
             "/* hyperdisco: QEMU's RDMSR/WRMSR without the UC_HOOK_INSN hooks (misc_helper.c) */\n"
             "void hd_wrmsr_nohook(CPUX86State *env);\nvoid hd_rdmsr_nohook(CPUX86State *env);\n"
             "/* hyperdisco: EXT bit source while an event is delivered (excp_helper.c) */\n"
             "extern __thread int hd_delivery_ext;"),
        why="declarations of the functions and state the patches below add",
    ),
    Patch(
        "msr-hooks", "qemu/target/i386/unicorn.c",
        old=("extern void helper_wrmsr(CPUX86State *env);\n"
             "extern void helper_rdmsr(CPUX86State *env);"),
        new=("extern void hd_wrmsr_nohook(CPUX86State *env);\n"
             "extern void hd_rdmsr_nohook(CPUX86State *env);"),
        why=("uc_reg_read/uc_reg_write of UC_X86_REG_MSR (the engine's own set-up and its hooks reading "
             "EFER) must not run the guest's MSR policy: outside guest code a #GP has nowhere to go"),
    ),
    Patch("msr-hooks", "qemu/target/i386/unicorn.c", old="    helper_rdmsr(env);",
          new="    hd_rdmsr_nohook(env);", why="see above"),
    Patch("msr-hooks", "qemu/target/i386/unicorn.c", old="    helper_wrmsr(env);",
          new="    hd_wrmsr_nohook(env);", why="see above"),
    Patch(
        "msr-hooks", "qemu/target/i386/unicorn.c",
        old="        insn_enum != UC_X86_INS_RDTSCP) {",
        new=("        insn_enum != UC_X86_INS_RDTSCP && insn_enum != UC_X86_INS_RDMSR &&\n"
             "        insn_enum != UC_X86_INS_WRMSR && insn_enum != UC_X86_INS_MOV) {"),
        why="uc_hook_add accepts hooks on RDMSR, WRMSR and MOV to a control register",
    ),
    # -- MOV to CR0/CR3/CR4/CR8 ---------------------------------------------------------------------------
    Patch(
        "cr-write-hook", "qemu/target/i386/misc_helper.c",
        old=("void helper_write_crN(CPUX86State *env, int reg, target_ulong t0)\n{\n"
             "    cpu_svm_check_intercept_param(env, SVM_EXIT_WRITE_CR0 + reg, 0, GETPC());\n"),
        new=_CR_HOOK_FN,
        why=("QEMU truncates CR0/CR4 to 32 bits and masks CR4 bits by its own CPU model instead of raising "
             "#GP; the engine checks each write against the guest's CPUID first (Intel SDM vol. 3A 2.5: "
             "'setting a reserved bit ... generates #GP(0)'; vol. 2B MOV to CR; Xen hvm_set_cr0/cr4)"),
    ),
    Patch(
        "cr-write-hook", "qemu/target/i386/misc_helper.c",
        old=("void helper_lmsw(CPUX86State *env, target_ulong t0)\n{\n"
             "    /* only 4 lower bits of CR0 are modified. PE cannot be set to zero\n"
             "       if already set to one. */\n"
             "    t0 = (env->cr[0] & ~0xe) | (t0 & 0xf);\n"
             "    helper_write_crN(env, 0, t0);\n}"),
        new=("void helper_write_crN(CPUX86State *env, int reg, target_ulong t0)\n{\n"
             "    hd_write_crN(env, reg, t0, GETPC());\n}\n\n"
             "void helper_lmsw(CPUX86State *env, target_ulong t0)\n{\n"
             "    /* only 4 lower bits of CR0 are modified. PE cannot be set to zero\n"
             "       if already set to one. */\n"
             "    t0 = (env->cr[0] & ~0xe) | (t0 & 0xf);\n"
             "    hd_write_crN(env, 0, t0, GETPC());\n}"),
        why="LMSW goes through the same check, with its own return address for the #GP",
    ),
    # -- exception delivery -------------------------------------------------------------------------------
    Patch(
        "int-n-rip", "qemu/accel/tcg/cpu-exec.c",
        old=("#if defined(TARGET_X86_64)\n        CPUArchState *env = cpu->env_ptr;\n"
             "        if (env->exception_is_int) {\n"
             "            // point EIP to the next instruction after INT\n"
             "            env->eip = env->exception_next_eip;\n        }\n#endif"),
        new=("#if defined(TARGET_X86_64)\n"
             "        /* hyperdisco: EIP stays at the INT instruction; x86_cpu_do_interrupt() pushes\n"
             "         * exception_next_eip as the return address, and a fault while delivering it reports\n"
             "         * the INT instruction itself */\n#endif"),
        why=("unicorn moved EIP past INT n/INT3/INTO before the interrupt hook, so a fault raised while "
             "delivering it (a not-present gate, a gate DPL below CPL) saved the address after the INT; "
             "Intel SDM vol. 3A 6.5: a fault's saved CS:EIP points to the faulting instruction"),
    ),
    Patch(
        "idt-error-code", "qemu/target/i386/seg_helper.c",
        old=("    dt = &env->idt;\n    if (intno * 16 + 15 > dt->limit) {\n"
             "        raise_exception_err(env, EXCP0D_GPF, intno * 16 + 2);\n    }"),
        new=("    dt = &env->idt;\n    if (intno * 16 + 15 > dt->limit) {\n"
             "        raise_exception_err(env, EXCP0D_GPF, intno * 8 + 2);\n    }"),
        why=("an IDT-referencing error code holds the vector in bits 15:3 with IDT = 1 (Intel SDM vol. 3A "
             "6.13, figure 6-6), in long mode too: QEMU put vector * 16 (the gate's byte offset)"),
    ),
    Patch(
        "idt-error-code", "qemu/target/i386/seg_helper.c",
        old=("    default:\n        raise_exception_err(env, EXCP0D_GPF, intno * 16 + 2);\n        break;\n"
             "    }\n    dpl = (e2 >> DESC_DPL_SHIFT) & 3;\n    cpl = env->hflags & HF_CPL_MASK;\n"
             "    /* check privilege if software int */\n    if (is_int && dpl < cpl) {\n"
             "        raise_exception_err(env, EXCP0D_GPF, intno * 16 + 2);\n    }\n"
             "    /* check valid bit */\n    if (!(e2 & DESC_P_MASK)) {\n"
             "        raise_exception_err(env, EXCP0B_NOSEG, intno * 16 + 2);\n    }"),
        new=("    default:\n        raise_exception_err(env, EXCP0D_GPF, intno * 8 + 2);\n        break;\n"
             "    }\n    dpl = (e2 >> DESC_DPL_SHIFT) & 3;\n    cpl = env->hflags & HF_CPL_MASK;\n"
             "    /* check privilege if software int (not INT1/ICEBP, is_int == 2) */\n"
             "    if (is_int == 1 && dpl < cpl) {\n"
             "        raise_exception_err(env, EXCP0D_GPF, intno * 8 + 2);\n    }\n"
             "    /* check valid bit */\n    if (!(e2 & DESC_P_MASK)) {\n"
             "        raise_exception_err(env, EXCP0B_NOSEG, intno * 8 + 2);\n    }"),
        why=("the same error-code fix for a bad gate type, gate DPL and a not-present gate in long mode; "
             "INT1 has no gate DPL check (Intel SDM vol. 3A 6.12.1.1: only INT n, INT3 and INTO)"),
    ),
    Patch(
        "idt-error-code", "qemu/target/i386/seg_helper.c",
        old="    /* check privilege if software int */\n    if (is_int && dpl < cpl) {",
        new=("    /* check privilege if software int (not INT1/ICEBP, is_int == 2) */\n"
             "    if (is_int == 1 && dpl < cpl) {"),
        why="protected mode: INT1 has no gate DPL check either",
    ),
    Patch(
        "ext-bit", "qemu/target/i386/seg_helper.c",
        old=("static void do_interrupt_all(X86CPU *cpu, int intno, int is_int,\n"
             "                             int error_code, target_ulong next_eip, int is_hw)\n{\n"
             "    CPUX86State *env = &cpu->env;\n"),
        new=("static void do_interrupt_all(X86CPU *cpu, int intno, int is_int,\n"
             "                             int error_code, target_ulong next_eip, int is_hw)\n{\n"
             "    CPUX86State *env = &cpu->env;\n\n"
             "    /* hyperdisco: the EXT bit of error codes raised while delivering this event */\n"
             "    hd_delivery_ext = (is_int == 1) ? 1 : 2;\n"),
        why=("a #TS/#NP/#SS/#GP raised while delivering an exception, an external interrupt or INT1 has "
             "EXT = 1 in its error code (Intel SDM vol. 3A 6.13: 'EXT ... the exception occurred during "
             "delivery of an event external to the program'); QEMU never set it"),
    ),
    Patch(
        "ext-bit", "qemu/target/i386/seg_helper.c",
        old=("        x86_stl_phys(cs,\n"
             "                 env->vm_vmcb + offsetof(struct vmcb, control.event_inj),\n"
             "                 event_inj & ~SVM_EVTINJ_VALID);\n    }\n}"),
        new=("        x86_stl_phys(cs,\n"
             "                 env->vm_vmcb + offsetof(struct vmcb, control.event_inj),\n"
             "                 event_inj & ~SVM_EVTINJ_VALID);\n    }\n    hd_delivery_ext = 0;\n}"),
        why="delivered: no event in flight any more",
    ),
    Patch(
        "ext-bit", "qemu/target/i386/excp_helper.c",
        old=("    if (!is_int) {\n"
             "        cpu_svm_check_intercept_param(env, SVM_EXIT_EXCP_BASE + intno,\n"
             "                                      error_code, retaddr);\n"
             "        intno = check_exception(env, intno, &error_code, retaddr);\n"),
        new=("    if (!is_int) {\n"
             "        cpu_svm_check_intercept_param(env, SVM_EXIT_EXCP_BASE + intno,\n"
             "                                      error_code, retaddr);\n"
             "        if (hd_delivery_ext && intno >= EXCP0A_TSS && intno <= EXCP0D_GPF) {\n"
             "            error_code = (error_code & ~1) | (hd_delivery_ext == 2);\n"
             "        }\n"
             "        hd_delivery_ext = 0;\n"
             "        intno = check_exception(env, intno, &error_code, retaddr);\n"),
        why="the EXT bit applied where every exception is raised (a per-thread flag: one vCPU per thread)",
    ),
    Patch(
        "icebp", "qemu/target/i386/excp_helper.c",
        old=("void helper_raise_exception(CPUX86State *env, int exception_index)\n{\n"
             "    raise_exception(env, exception_index);\n}\n"),
        new=("void helper_raise_exception(CPUX86State *env, int exception_index)\n{\n"
             "    raise_exception(env, exception_index);\n}\n\n"
             "/* hyperdisco: ICEBP (INT1) is a #DB trap travelling as is_int == 2: return address after it, "
             "no\n"
             " * gate DPL check, EXT = 1 */\n"
             "void helper_icebp(CPUX86State *env, int next_eip_addend)\n{\n"
             "    raise_interrupt(env, EXCP01_DB, 2, 0, next_eip_addend);\n}\n\n"
             "/* hyperdisco: while an event is delivered, 1: INT n/INT3/INTO, 2: an exception, an external\n"
             " * interrupt or INT1 (sets EXT in error codes), 0: none */\n"
             "__thread int hd_delivery_ext;\n"),
        why=("Intel SDM vol. 2A INT n/INTO/INT3/INT1: 'INT1 ... generates a debug exception' (#DB, trap-like,"
             " delivered as a hardware exception); QEMU compiled ICEBP only under WANT_ICEBP, so it was #UD"),
    ),
    Patch("icebp", "qemu/target/i386/helper.h",
          old="DEF_HELPER_3(raise_interrupt, void, env, int, int)\n",
          new="DEF_HELPER_3(raise_interrupt, void, env, int, int)\nDEF_HELPER_2(icebp, void, env, int)\n",
          why="the ICEBP helper's declaration"),
    Patch(
        "icebp", "qemu/target/i386/translate.c",
        old=("#ifdef WANT_ICEBP\n    case 0xf1: /* icebp (undocumented, exits to external debugger) */\n"
             "        gen_svm_check_intercept(s, pc_start, SVM_EXIT_ICEBP);\n"
             "        gen_debug(s, pc_start - s->cs_base);\n        break;\n#endif"),
        new=("    case 0xf1: /* icebp (INT1): a #DB trap, see helper_icebp */\n"
             "        gen_svm_check_intercept(s, pc_start, SVM_EXIT_ICEBP);\n"
             "        gen_update_cc_op(s);\n        gen_jmp_im(s, pc_start - s->cs_base);\n"
             "        gen_helper_icebp(tcg_ctx, tcg_ctx->cpu_env, "
             "tcg_const_i32(tcg_ctx, s->pc - pc_start));\n"
             "        s->base.is_jmp = DISAS_NORETURN;\n        break;"),
        why="0xF1 decodes as ICEBP and raises #DB after the instruction",
    ),
    Patch(
        "mmx-em-ud", "qemu/target/i386/translate.c",
        old=("    /* simple MMX/SSE operation */\n    if (s->flags & HF_TS_MASK) {\n"
             "        gen_exception(s, EXCP07_PREX, pc_start - s->cs_base);\n        return;\n    }\n"
             "    if (s->flags & HF_EM_MASK) {\n    illegal_op:\n        gen_illegal_opcode(s);\n"
             "        return;\n    }"),
        new=("    /* simple MMX/SSE operation; hyperdisco: CR0.EM (#UD) before CR0.TS (#NM) */\n"
             "    if (s->flags & HF_EM_MASK) {\n    illegal_op:\n        gen_illegal_opcode(s);\n"
             "        return;\n    }\n    if (s->flags & HF_TS_MASK) {\n"
             "        gen_exception(s, EXCP07_PREX, pc_start - s->cs_base);\n        return;\n    }"),
        why=("MMX and SSE instructions raise #UD when CR0.EM = 1 whatever CR0.TS is, #NM only with EM = 0 "
             "and TS = 1 (Intel SDM vol. 3A 2.5 table 2-2; vol. 1 12.x); QEMU tested TS first"),
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/cpu.h",
        old=(
            "extern __thread int hd_delivery_ext;"
        ),
        new=(
            "extern __thread int hd_delivery_ext;\n"
            "/* hyperdisco: a non-canonical address faulted in the page walk (excp_helper.c, translate.c) *"
            "/\n"
            "extern __thread int hd_noncanonical;\n"
            "extern __thread uint64_t hd_noncanonical_addr;"
        ),
        why="declarations of the non-canonical fault state (excp_helper.c)",
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/excp_helper.c",
        old=(
            "            sext = la57 ? (int64_t)addr >> 56 : (int64_t)addr >> 47;\n"
            "            if (sext != 0 && sext != -1) {\n"
            "                env->error_code = 0;\n"
            "                cs->exception_index = EXCP0D_GPF;\n"
            "                return 1;\n"
            "            }"
        ),
        new=(
            "            sext = la57 ? (int64_t)addr >> 56 : (int64_t)addr >> 47;\n"
            "            if (sext != 0 && sext != -1) {\n"
            "                env->error_code = 0;\n"
            "                cs->exception_index = EXCP0D_GPF;\n"
            "                hd_noncanonical = 1; /* hyperdisco: #SS if a stack access (restore_state_to_op"
            "c) */\n"
            "                hd_noncanonical_addr = addr;\n"
            "                return 1;\n"
            "            }"
        ),
        why=("the page walk raises #GP(0) for any non-canonical address (it cannot know the segment): "
             "it records that it did, and where, for restore_state_to_opc"),
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/excp_helper.c",
        old=(
            "__thread int hd_delivery_ext;\n"
        ),
        new=(
            "__thread int hd_delivery_ext;\n"
            "\n"
            "/* hyperdisco: the last page-walk fault was a non-canonical address, at this address */\n"
            "__thread int hd_noncanonical;\n"
            "__thread uint64_t hd_noncanonical_addr;\n"
        ),
        why="the per-thread state of the last non-canonical fault (one vCPU per thread)",
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/excp_helper.c",
        old=(
            "    cs->exception_index = intno;\n"
            "    env->error_code = error_code;\n"
            "    env->exception_is_int = is_int;\n"
            "    env->exception_next_eip = env->eip + next_eip_addend;\n"
            "    cpu_loop_exit_restore(cs, retaddr);"
        ),
        new=(
            "    cs->exception_index = intno;\n"
            "    env->error_code = error_code;\n"
            "    env->exception_is_int = is_int;\n"
            "    env->exception_next_eip = env->eip + next_eip_addend;\n"
            "    if (!retaddr) {\n"
            "        hd_noncanonical = 0; /* hyperdisco: no instruction to restore, so no segment to ask */"
            "\n"
            "    }\n"
            "    cpu_loop_exit_restore(cs, retaddr);"
        ),
        why="an exception raised with no instruction to restore cannot be a stack access",
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/translate.c",
        old=(
            "    struct uc_struct *uc;\n"
            "    target_ulong prev_pc; /* save address of the previous instruction */\n"
            "} DisasContext;"
        ),
        new=(
            "    struct uc_struct *uc;\n"
            "    target_ulong prev_pc; /* save address of the previous instruction */\n"
            "    /* hyperdisco: this instruction's insn_start op, its cc_op there, and the kinds of segment"
            " its memory\n"
            "       accesses use (1: SS, 2: another), recorded in the op's second word (restore_state_to_op"
            "c) */\n"
            "    TCGOp *hd_insn_start;\n"
            "    int hd_start_cc_op, hd_seg_kind;\n"
            "} DisasContext;"
        ),
        why="each instruction remembers its insn_start op and the segments of its memory accesses",
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/translate.c",
        old=(
            "static void gen_lea_v_seg(DisasContext *s, MemOp aflag, TCGv a0,\n"
            "                          int def_seg, int ovr_seg)\n"
            "{\n"
            "    TCGContext *tcg_ctx = s->uc->tcg_ctx;\n"
        ),
        new=(
            "/* hyperdisco: note that the current instruction accesses memory through segment `seg` (< 0: n"
            "one) */\n"
            "static void hd_mark_seg(DisasContext *s, int seg)\n"
            "{\n"
            "    int kind = seg == R_SS ? 1 : 2;\n"
            "\n"
            "    if (seg < 0 || s->hd_insn_start == NULL || (s->hd_seg_kind & kind)) {\n"
            "        return;\n"
            "    }\n"
            "    s->hd_seg_kind |= kind;\n"
            "    tcg_set_insn_start_param(s->hd_insn_start, 1,\n"
            "                             (target_ulong)(uint32_t)s->hd_start_cc_op | (target_ulong)s->hd_s"
            "eg_kind << 16);\n"
            "}\n"
            "\n"
            "static void gen_lea_v_seg(DisasContext *s, MemOp aflag, TCGv a0,\n"
            "                          int def_seg, int ovr_seg)\n"
            "{\n"
            "    TCGContext *tcg_ctx = s->uc->tcg_ctx;\n"
            "\n"
            "    hd_mark_seg(s, ovr_seg >= 0 ? ovr_seg : def_seg);\n"
        ),
        why=("every memory access computed through gen_lea_v_seg records its segment in the "
             "instruction's insn_start data (translation time only: no run-time cost)"),
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/translate.c",
        old=(
            "    int size = 1 << d_ot;\n"
            "    TCGv new_esp = s->A0;\n"
            "\n"
            "    tcg_gen_subi_tl(tcg_ctx, s->A0, tcg_ctx->cpu_regs[R_ESP], size);\n"
        ),
        new=(
            "    int size = 1 << d_ot;\n"
            "    TCGv new_esp = s->A0;\n"
            "\n"
            "    hd_mark_seg(s, R_SS); /* hyperdisco: in 64-bit mode the push below skips gen_lea_v_seg */"
            "\n"
            "    tcg_gen_subi_tl(tcg_ctx, s->A0, tcg_ctx->cpu_regs[R_ESP], size);\n"
        ),
        why="64-bit pushes (push, call) skip gen_lea_v_seg: they record SS themselves",
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/translate.c",
        old=(
            "    dc->prev_pc = dc->base.pc_next - dc->cs_base;\n"
            "    tcg_gen_insn_start(tcg_ctx, dc->base.pc_next, dc->cc_op);\n"
            "}"
        ),
        new=(
            "    dc->prev_pc = dc->base.pc_next - dc->cs_base;\n"
            "    tcg_gen_insn_start(tcg_ctx, dc->base.pc_next, dc->cc_op);\n"
            "    dc->hd_insn_start = tcg_last_op(tcg_ctx);\n"
            "    dc->hd_start_cc_op = dc->cc_op;\n"
            "    dc->hd_seg_kind = 0;\n"
            "}"
        ),
        why="the insn_start op of the instruction being translated",
    ),
    Patch(
        "noncanonical-ss", "qemu/target/i386/translate.c",
        old=(
            "void restore_state_to_opc(CPUX86State *env, TranslationBlock *tb,\n"
            "                          target_ulong *data)\n"
            "{\n"
            "    int cc_op = data[1];\n"
            "    env->eip = data[0] - tb->cs_base;"
        ),
        new=(
            "void restore_state_to_opc(CPUX86State *env, TranslationBlock *tb,\n"
            "                          target_ulong *data)\n"
            "{\n"
            "    int cc_op = data[1] & 0xffff;\n"
            "    int seg_kind = (data[1] >> 16) & 3;\n"
            "    env->eip = data[0] - tb->cs_base;\n"
            "    /* hyperdisco: a non-canonical address raised #GP(0) in the page walk, which does not know"
            " the\n"
            "       segment; it is #SS(0) when the access was a stack one (Intel SDM vol. 3A 6.15, interrup"
            "t 12: \"a\n"
            "       memory operand effective address ... using the SS segment ... is in a non-canonical for"
            "m\") */\n"
            "    if (hd_noncanonical) {\n"
            "        CPUState *cs = env_cpu(env);\n"
            "        uint64_t off = (uint64_t)hd_noncanonical_addr - (uint64_t)env->regs[R_ESP] + 16;\n"
            "\n"
            "        hd_noncanonical = 0;\n"
            "        if (cs->exception_index == EXCP0D_GPF &&\n"
            "            (seg_kind == 1 || (seg_kind == 3 && off < 32))) {\n"
            "            cs->exception_index = EXCP0C_STACK;\n"
            "            if (env->old_exception == EXCP0D_GPF) {\n"
            "                env->old_exception = EXCP0C_STACK;\n"
            "            }\n"
            "        }\n"
            "    }"
        ),
        why=("a non-canonical stack access is #SS(0), not #GP(0) (Intel SDM vol. 3A 6.15, interrupt 12 "
             "and interrupt 13; vol. 2 PUSH/POP/MOV 64-bit mode exceptions): decided when the faulting "
             "instruction's state is restored, from its segment record; an instruction with both kinds "
             "of access (push/pop/call with a memory operand) counts the fault as a stack one when its "
             "address is within 16 bytes of RSP"),
    ),
)


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
            "    int *hd_pending;          /* the engine queued work for this instance (fastpath.c) */\n"
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
        "protect-code-tlb", "qemu/accel/tcg/cputlb.c",
        old=(
            "    cpu_physical_memory_test_and_clear_dirty(ram_addr, TARGET_PAGE_SIZE,\n"
            "                                             DIRTY_MEMORY_CODE);\n"
            "}\n"
        ),
        new=(
            "    cpu_physical_memory_test_and_clear_dirty(ram_addr, TARGET_PAGE_SIZE,\n"
            "                                             DIRTY_MEMORY_CODE);\n"
            "    /* hyperdisco: what QEMU's dirty bitmap does and unicorn's stub does not: entries that\n"
            "       already allow fast stores to the page (another virtual alias) take notdirty again */\n"
            "    tlb_reset_dirty(uc->cpu, (ram_addr_t)(uintptr_t)qemu_map_ram_ptr(uc, NULL, ram_addr),\n"
            "                    TARGET_PAGE_SIZE);\n"
            "}\n"
        ),
        why=(
            "unicorn stubs the dirty bitmap, so making a page's first block does not reset TLB entries "
            "that already allow fast stores to it through another alias (the kernel's direct map): the "
            "guest's own copy into a page that holds code (blkfront's copy out of a persistent grant, "
            "then exec) left the old code running even with one vCPU"
        ),
    ),
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
        why="the check after the store that pairs with code-mark-first (stores through probe_access "
            "helpers keep only the check before it, in code-written)",
    ),
    Patch(
        "code-pending", "qemu/softmmu/cpus.c",
        old="            uc->quit_request = false;\n            uc->size_recur_mem = 0;\n",
        new=(
            "            uc->quit_request = false;\n            uc->size_recur_mem = 0;\n"
            "            if (uc->hd_pending) { /* hyperdisco: work queued before this uc_emu_start began */\n"
            "                __atomic_thread_fence(__ATOMIC_SEQ_CST);\n"
            "                if (__atomic_load_n(uc->hd_pending, __ATOMIC_SEQ_CST)) {\n"
            "                    finish = true;\n"
            "                    break;\n"
            "                }\n"
            "            }\n"
        ),
        why=(
            "uc_emu_start clears a stop request as it begins, so a kick sent between the engine's drain "
            "and uc_emu_start was lost and the vCPU ran stale code for the rest of its slice"
        ),
    ),
    Patch(
        "code-stored-atomic", "qemu/accel/tcg/cputlb.c",
        old="#define ATOMIC_MMU_CLEANUP\n",
        new=(
            "/* hyperdisco: code-stored for the atomic helpers, after their operation */\n"
            "static inline void hd_atomic_stored(CPUArchState *env, target_ulong addr, TCGMemOpIdx oi)\n"
            "{\n"
            "    struct uc_struct *uc = env_cpu(env)->uc;\n"
            "    if (uc->hd_code_written) {\n"
            "        CPUTLBEntry *e = tlb_entry(env, get_mmuidx(oi), addr);\n"
            "        if ((e->addr_write & TARGET_PAGE_MASK) == (addr & TARGET_PAGE_MASK)) {\n"
            "            hd_code_stored(uc, e->paddr);\n"
            "        }\n"
            "    }\n"
            "}\n"
            "#define ATOMIC_MMU_CLEANUP hd_atomic_stored(env, addr, oi)\n"
        ),
        why="locked read-modify-writes under CF_PARALLEL store through atomic_mmu_lookup, not store_helper",
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
        "}\n"
        "UNICORN_EXPORT void uc_hd_set_pending(uc_engine *uc, int *pending) { uc->hd_pending = pending; }\n",
        "the engine's handles on the fields above",
        name="uc-exports",
    ),
    *X86_CONFORMANCE_PATCHES,
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

