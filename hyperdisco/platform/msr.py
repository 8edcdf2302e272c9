"""MSRs and control registers as Xen presents them to a PVH guest, derived from the guest's CPUID.

The reference is Xen's own policy: xen/arch/x86/msr.c (guest_rdmsr/guest_wrmsr: MSRs by feature and
vendor, #GP for the rest), xen/arch/x86/hvm/hvm.c (hvm_msr_read_intercept/hvm_msr_write_intercept for
EFER, TSC, APIC_BASE, PAT, MTRRs; hvm_efer_valid, hvm_cr4_guest_valid_bits, hvm_set_cr0/hvm_set_cr4) and
xen/arch/x86/traps.c (guest_rdmsr_xen/guest_wrmsr_xen: the hypercall-page MSR at 0x40000000, the base
CPUID leaf 0x40000002 advertises). An MSR is offered only when the CPUID the guest sees offers its
feature, so the two never disagree; any MSR not listed raises #GP(0) on RDMSR and WRMSR, as under Xen
since 4.15 (no "msr_relaxed"). docs/x86-conformance.md has the table and what is left.
"""

from __future__ import annotations

from ..engine.base import (
    MSR_CANONICAL,
    MSR_EFER,
    MSR_PAT,
    MSR_RD_CORE,
    MSR_RD_ENGINE,
    MSR_RD_TSC,
    MSR_WR_CORE,
    MSR_WR_ENGINE,
    ControlPolicy,
    MsrRule,
)
from . import layout

Regs = tuple[int, int, int, int]

# Architectural MSR numbers (Intel SDM vol. 4, AMD APM vol. 2 appendix A; Xen's msr-index.h names)
TSC = 0x10
APIC_BASE = 0x1B
UCODE_REV = 0x8B  # AMD: PATCH_LEVEL, the same number
MTRRCAP = 0xFE
SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP = 0x174, 0x175, 0x176
MCG_CAP, MCG_STATUS, MCG_CTL = 0x179, 0x17A, 0x17B
MISC_ENABLE = 0x1A0
MTRR_PHYSBASE0 = 0x200  # .. 0x20F: base/mask pairs
MTRR_FIX = (0x250, 0x258, 0x259, *range(0x268, 0x270))
PAT = 0x277
MTRR_DEF_TYPE = 0x2FF
MC0_CTL = 0x400  # machine-check banks: CTL, STATUS, ADDR, MISC per bank
EFER, STAR, LSTAR, CSTAR, SFMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX = 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103
K8_HWCR = 0xC0010015
AMD64_DE_CFG = 0xC0011029
XEN_HYPERCALL_PAGE = 0x40000000  # CPUID 0x40000002 EBX: the base of Xen's MSRs

# EFER bits (SDM vol. 3A 2.2.1)
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME, EFER_FFXSR = 1, 1 << 8, 1 << 10, 1 << 11, 1 << 12, 1 << 14
# CR4 bits (SDM vol. 3A 2.5)
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE, CR4_MCE, CR4_PGE = (1 << i for i in range(8))
CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_UMIP, CR4_LA57 = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
CR4_VMXE, CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE = 1 << 13, 1 << 16, 1 << 17, 1 << 18
CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 20, 1 << 21, 1 << 22

APIC_BASE_BSP, APIC_BASE_ENABLE = 1 << 8, 1 << 11
UPPER32 = 0xFFFF_FFFF_0000_0000
ENGINE = MSR_RD_ENGINE | MSR_WR_ENGINE
CORE = MSR_RD_CORE | MSR_WR_CORE


def _bit(regs: Regs | None, reg: int, bit: int) -> bool:
    return regs is not None and bool((regs[reg] >> bit) & 1)


class Features:
    """The CPUID bits the MSR and CR policy depends on (SDM vol. 2A CPUID; Xen cpufeatureset.h)."""

    def __init__(self, cpuid: dict[tuple[int, int], Regs]) -> None:
        l0, l1, l7 = cpuid.get((0, 0)), cpuid.get((1, 0)), cpuid.get((7, 0))
        e1, e8 = cpuid.get((0x80000001, 0)), cpuid.get((0x80000008, 0))
        vendor = b"" if l0 is None else b"".join(r.to_bytes(4, "little") for r in (l0[1], l0[3], l0[2]))
        self.intel = vendor == b"GenuineIntel"
        self.amd = vendor in (b"AuthenticAMD", b"HygonGenuine")
        self.vme, self.de, self.pse, self.tsc = (_bit(l1, 3, b) for b in (1, 2, 3, 4))
        self.msr, self.pae, self.mce, self.apic = (_bit(l1, 3, b) for b in (5, 6, 7, 9))
        self.sep, self.mtrr, self.pge, self.mca, self.pat = (_bit(l1, 3, b) for b in (11, 12, 13, 14, 16))
        self.fxsr, self.sse = _bit(l1, 3, 24), _bit(l1, 3, 25)
        self.pcid, self.x2apic, self.xsave = _bit(l1, 2, 17), _bit(l1, 2, 21), _bit(l1, 2, 26)
        self.fsgsbase, self.smep, self.smap = _bit(l7, 1, 0), _bit(l7, 1, 7), _bit(l7, 1, 20)
        self.umip, self.pku, self.la57 = _bit(l7, 2, 2), _bit(l7, 2, 3), _bit(l7, 2, 16)
        self.rdpid = _bit(l7, 2, 22)
        self.syscall, self.nx, self.ffxsr = _bit(e1, 3, 11), _bit(e1, 3, 20), _bit(e1, 3, 25)
        self.rdtscp, self.lm = _bit(e1, 3, 27), _bit(e1, 3, 29)
        self.maxphyaddr = (e8[0] & 0xFF) if e8 is not None and e8[0] & 0xFF else 36


def cr4_valid_bits(f: Features) -> int:
    """Xen's hvm_cr4_guest_valid_bits(): the CR4 bits a guest may set, by CPUID (no nested VMX, CET,
    PKS or LASS offered here)."""
    return ((CR4_VME | CR4_PVI if f.vme else 0) | (CR4_TSD if f.tsc else 0) | (CR4_DE if f.de else 0)
            | (CR4_PSE if f.pse else 0) | (CR4_PAE if f.pae else 0) | (CR4_MCE if f.mce or f.mca else 0)
            | (CR4_PGE if f.pge else 0) | CR4_PCE | (CR4_OSFXSR if f.fxsr else 0)
            | (CR4_OSXMMEXCPT if f.sse else 0) | (CR4_UMIP if f.umip else 0) | (CR4_LA57 if f.la57 else 0)
            | (CR4_FSGSBASE if f.fsgsbase else 0) | (CR4_PCIDE if f.pcid else 0)
            | (CR4_OSXSAVE if f.xsave else 0) | (CR4_SMEP if f.smep else 0) | (CR4_SMAP if f.smap else 0)
            | (CR4_PKE if f.pku else 0))


def efer_valid_bits(f: Features) -> int:
    """Xen's hvm_efer_valid(): SCE, LME/LMA, NXE, FFXSR only with their CPUID feature; SVME never (no
    nested virtualisation)."""
    return ((EFER_SCE if f.syscall else 0) | (EFER_LME | EFER_LMA if f.lm else 0) | (EFER_NXE if f.nx else 0)
            | (EFER_FFXSR if f.ffxsr else 0))


def msr_rules(f: Features) -> dict[int, MsrRule]:
    """Every MSR a PVH guest on Xen may use with this CPUID, and how the engine treats it."""
    rules: dict[int, MsrRule] = {
        # Long mode and system calls: the engine holds them (Xen: the VMCS/VMCB does)
        EFER: MsrRule(ENGINE | MSR_EFER),
        FS_BASE: MsrRule(ENGINE | MSR_CANONICAL),
        GS_BASE: MsrRule(ENGINE | MSR_CANONICAL),
        # Hypercall page (traps.c guest_wrmsr_xen): write a page address; reads as zero (guest_rdmsr_xen)
        XEN_HYPERCALL_PAGE: MsrRule(CORE),
    }
    if f.lm:
        rules[KERNEL_GS_BASE] = MsrRule(ENGINE | MSR_CANONICAL)
    if f.syscall:
        rules[STAR] = MsrRule(ENGINE)
        rules[LSTAR] = MsrRule(ENGINE | MSR_CANONICAL)
        rules[CSTAR] = MsrRule(ENGINE | MSR_CANONICAL)
        rules[SFMASK] = MsrRule(ENGINE, reserved=UPPER32)  # SDM vol. 4: IA32_FMASK bits 63:32 reserved
    if f.sep:
        rules[SYSENTER_CS] = MsrRule(ENGINE, reserved=UPPER32)
        rules[SYSENTER_ESP] = MsrRule(ENGINE | MSR_CANONICAL)
        rules[SYSENTER_EIP] = MsrRule(ENGINE | MSR_CANONICAL)
    if f.tsc:
        # Reads give the TSC that RDTSC gives. Writes (Xen: they move the guest's TSC offset) are not
        # supported: #GP (docs/x86-conformance.md).
        rules[TSC] = MsrRule(MSR_RD_TSC)
    if f.rdtscp or f.rdpid:
        rules[TSC_AUX] = MsrRule(ENGINE, reserved=UPPER32)  # msr.c: val != (uint32_t)val -> #GP
    if f.pat:
        rules[PAT] = MsrRule(ENGINE | MSR_PAT)  # hvm.c: hvm_set_guest_pat() refuses reserved types
    if f.apic:
        rules[APIC_BASE] = MsrRule(CORE)  # vlapic.c: the LAPIC at its fixed base, enabled
    if f.mtrr:
        # hvm.c hvm_msr_{read,write}_intercept: MTRRcap read-only, the others the guest's own
        rules[MTRRCAP] = MsrRule(MSR_RD_ENGINE)
        rules[MTRR_DEF_TYPE] = MsrRule(ENGINE, reserved=~0xCFF & 0xFFFF_FFFF_FFFF_FFFF)
        for m in (*MTRR_FIX, *range(MTRR_PHYSBASE0, MTRR_PHYSBASE0 + 16)):
            rules[m] = MsrRule(ENGINE)
    if f.mce and f.mca:
        # vmce.c: MCG_CAP read-only, MCG_STATUS the guest's; MCG_CTL absent (QEMU's model has no MCG_CTL_P)
        rules[MCG_CAP] = MsrRule(MSR_RD_ENGINE)
        rules[MCG_STATUS] = MsrRule(ENGINE)
    if f.intel:
        rules[MISC_ENABLE] = MsrRule(MSR_RD_ENGINE)  # Intel only; writes are not the guest's to make
    if f.intel or f.amd:
        rules[UCODE_REV] = MsrRule(MSR_RD_ENGINE)  # msr.c: readable on Intel and AMD; Intel's write of 0
        if f.intel:
            rules[UCODE_REV] = MsrRule(ENGINE, reserved=~0 & 0xFFFF_FFFF_FFFF_FFFF)
    if f.amd:
        rules[K8_HWCR] = MsrRule(MSR_RD_CORE)  # msr.c: reads as zero on AMD
        rules[AMD64_DE_CFG] = MsrRule(CORE)  # msr.c: LFENCE_SERIALISE, writes ignored (hvm.c)
    return rules


def control_policy(cpuid: dict[tuple[int, int], Regs]) -> ControlPolicy:
    f = Features(cpuid)
    cr3_reserved = ((1 << 64) - 1) & ~((1 << f.maxphyaddr) - 1)  # bits above MAXPHYADDR, 63 (no PCID) too
    return ControlPolicy(msrs=msr_rules(f), cr4_valid=cr4_valid_bits(f), efer_valid=efer_valid_bits(f),
                         cr3_reserved=cr3_reserved)


AMD64_DE_CFG_LFENCE_SERIALISE = 1 << 1


def apic_base_value(vcpu_index: int) -> int:
    """IA32_APIC_BASE of a vCPU: the LAPIC at its fixed base, globally enabled, BSP on vCPU 0 (xAPIC
    mode; Xen vlapic.c vlapic_msr_set's reset value)."""
    return layout.LAPIC_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if vcpu_index == 0 else 0)
