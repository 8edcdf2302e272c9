"""The MSR and control-register policy (platform/msr.py) and the core's own MSRs (core/msr.py), without
running guest code: which MSR is offered for which CPUID, which CR4/EFER bits, the hypercall page."""

from __future__ import annotations

import struct
from typing import Any, cast

import pytest

from hyperdisco.core.memory import GuestMemory
from hyperdisco.core.msr import LOGGED_MSRS_MAX, CoreMsrs
from hyperdisco.engine.base import MSR_RD_CORE, MSR_RD_ENGINE, MSR_WR_CORE, MSR_WR_ENGINE
from hyperdisco.platform import msr as pm
from hyperdisco.platform.cpuid import CpuidPolicy
from hyperdisco.xen.arch_x86 import VMCALL, VMMCALL, hypercall_page

Regs = tuple[int, int, int, int]


def vendor(name: bytes) -> Regs:
    b, d, c = struct.unpack("<III", name)
    return (0x16, b, c, d)


# a minimal CPU: long mode, SYSCALL, NX, PAE, PGE, PSE, TSC, MSR, APIC, SEP, MTRR, PAT, FXSR, SSE
LEAF1_EDX = sum(1 << b for b in (1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 16, 24, 25))
EXT1_EDX = sum(1 << b for b in (11, 20, 29))


def cpu(name: bytes = b"AuthenticAMD", leaf1_ecx: int = 0, leaf7: Regs = (0, 0, 0, 0),
        ext1_edx: int = EXT1_EDX, leaf1_edx: int = LEAF1_EDX) -> dict[tuple[int, int], Regs]:
    return {(0, 0): vendor(name), (1, 0): (0, 0, leaf1_ecx, leaf1_edx), (7, 0): leaf7,
            (0x80000001, 0): (0, 0, 0, ext1_edx), (0x80000008, 0): (0x3028, 0, 0, 0)}


def test_long_mode_and_syscall_msrs_are_held_by_the_engine() -> None:
    rules = pm.msr_rules(pm.Features(cpu()))
    for m in (pm.EFER, pm.STAR, pm.LSTAR, pm.CSTAR, pm.SFMASK, pm.FS_BASE, pm.GS_BASE, pm.KERNEL_GS_BASE,
              pm.SYSENTER_CS, pm.SYSENTER_ESP, pm.SYSENTER_EIP, pm.PAT):
        assert rules[m].flags & (MSR_RD_ENGINE | MSR_WR_ENGINE) == MSR_RD_ENGINE | MSR_WR_ENGINE, hex(m)
    assert rules[pm.XEN_HYPERCALL_PAGE].flags == MSR_RD_CORE | MSR_WR_CORE
    assert rules[pm.SFMASK].reserved == pm.UPPER32


def test_an_msr_is_offered_only_with_its_cpuid_feature() -> None:
    plain = pm.msr_rules(pm.Features(cpu()))
    assert pm.TSC_AUX not in plain  # neither RDTSCP nor RDPID
    with_rdtscp = pm.msr_rules(pm.Features(cpu(ext1_edx=EXT1_EDX | 1 << 27)))
    assert with_rdtscp[pm.TSC_AUX].reserved == pm.UPPER32
    no_syscall = pm.msr_rules(pm.Features(cpu(ext1_edx=1 << 29)))
    assert pm.LSTAR not in no_syscall and pm.STAR not in no_syscall
    no_mtrr = pm.msr_rules(pm.Features(cpu(leaf1_edx=LEAF1_EDX & ~(1 << 12))))
    assert pm.MTRRCAP not in no_mtrr and pm.MTRR_DEF_TYPE not in no_mtrr
    assert pm.MTRRCAP in plain and plain[pm.MTRRCAP].flags == MSR_RD_ENGINE  # read-only
    # the x2APIC range is never offered (CPUID never offers x2APIC: platform/cpuid.py)
    assert not any(0x800 <= m <= 0x8FF for m in plain)
    # nor the Xen range beyond the hypercall page, nor SVM's MSRs (no nested virtualisation)
    assert not any(0x40000001 <= m <= 0x400002FF or 0xC0010114 <= m <= 0xC0010117 for m in plain)


def test_vendor_specific_msrs_follow_the_vendor() -> None:
    amd = pm.msr_rules(pm.Features(cpu(b"AuthenticAMD")))
    intel = pm.msr_rules(pm.Features(cpu(b"GenuineIntel")))
    assert pm.MISC_ENABLE not in amd and intel[pm.MISC_ENABLE].flags == MSR_RD_ENGINE
    assert pm.K8_HWCR in amd and pm.K8_HWCR not in intel
    assert pm.AMD64_DE_CFG in amd and pm.AMD64_DE_CFG not in intel
    assert amd[pm.UCODE_REV].flags == MSR_RD_ENGINE  # AMD: read-only
    assert intel[pm.UCODE_REV].reserved == (1 << 64) - 1  # Intel: only 0 may be written


def test_cr4_valid_bits_follow_xens_hvm_cr4_guest_valid_bits() -> None:
    f = pm.Features(cpu())
    valid = pm.cr4_valid_bits(f)
    for bit in (pm.CR4_PAE, pm.CR4_PGE, pm.CR4_PSE, pm.CR4_TSD, pm.CR4_DE, pm.CR4_PCE, pm.CR4_OSFXSR,
                pm.CR4_OSXMMEXCPT, pm.CR4_VME):
        assert valid & bit, hex(bit)
    for bit in (pm.CR4_VMXE, pm.CR4_SMEP, pm.CR4_SMAP, pm.CR4_PCIDE, pm.CR4_OSXSAVE, pm.CR4_FSGSBASE,
                pm.CR4_UMIP, pm.CR4_LA57, pm.CR4_PKE, pm.CR4_MCE, 1 << 25, 1 << 32):
        assert not valid & bit, hex(bit)
    rich = pm.Features(cpu(leaf1_ecx=1 << 17 | 1 << 26 | 1 << 5, leaf7=(0, 1 | 1 << 7 | 1 << 20, 1 << 2, 0)))
    valid = pm.cr4_valid_bits(rich)
    for bit in (pm.CR4_PCIDE, pm.CR4_OSXSAVE, pm.CR4_FSGSBASE, pm.CR4_SMEP, pm.CR4_SMAP, pm.CR4_UMIP):
        assert valid & bit, hex(bit)
    assert not valid & pm.CR4_VMXE  # VMX offered (leaf 1 ECX bit 5) but no nested virtualisation


def test_efer_valid_bits_follow_hvm_efer_valid() -> None:
    assert pm.efer_valid_bits(pm.Features(cpu())) == pm.EFER_SCE | pm.EFER_LME | pm.EFER_LMA | pm.EFER_NXE
    assert pm.efer_valid_bits(pm.Features(cpu(ext1_edx=1 << 29))) == pm.EFER_LME | pm.EFER_LMA
    assert not pm.efer_valid_bits(pm.Features(cpu(ext1_edx=EXT1_EDX | 1 << 25))) & pm.EFER_SVME


def test_control_policy_from_the_engines_cpu() -> None:
    from hyperdisco.core.hypercalls import XEN_VERSION
    from hyperdisco.engine.tcg.engine import native_cpuid_table

    table = CpuidPolicy(native_cpuid_table(), 1, XEN_VERSION, 1_000_000).table
    p = pm.control_policy(table)
    assert p.cr4_valid & pm.CR4_PAE and not p.cr4_valid & pm.CR4_VMXE
    assert p.efer_valid & pm.EFER_LME
    maxphy = table[(0x80000008, 0)][0] & 0xFF
    assert p.cr3_reserved == ((1 << 64) - 1) & ~((1 << maxphy) - 1)
    assert pm.APIC_BASE in p.msrs and pm.TSC in p.msrs


class Dom:
    def __init__(self) -> None:
        self.memory = GuestMemory(1 << 20)
        self.lines: list[str] = []

    def log(self, msg: str) -> None:
        self.lines.append(msg)


def core(name: bytes = b"AuthenticAMD") -> tuple[CoreMsrs, Dom]:
    d = Dom()
    pol = CpuidPolicy(cpu(name), 1, (4, 19), 1_000_000)
    return CoreMsrs(cast(Any, d), pol), d


@pytest.mark.parametrize(("name", "insn"), [(b"AuthenticAMD", VMMCALL), (b"GenuineIntel", VMCALL)])
def test_hypercall_page_write_fills_the_page_with_the_vendors_stubs(name: bytes, insn: bytes) -> None:
    m, d = core(name)
    assert m.wrmsr(0, pm.XEN_HYPERCALL_PAGE, 0x5000)
    page = d.memory.read(0x5000, 4096)
    assert page == hypercall_page(insn)
    assert page[0:9] == b"\xb8\x00\x00\x00\x00" + insn + b"\xc3"
    assert page[9:32] == b"\xcc" * 23  # the rest of each stub is int3
    assert page[23 * 32:23 * 32 + 2] == b"\x0f\x0b" and page[23 * 32 + 2:24 * 32] == b"\xcc" * 30
    assert page[127 * 32 + 1:127 * 32 + 5] == struct.pack("<I", 127)
    assert m.rdmsr(0, pm.XEN_HYPERCALL_PAGE) == 0


@pytest.mark.parametrize("value", [0x5001, 0x5FFF, 1 << 20, (1 << 20) + 0x1000, 1 << 63, 0xFEE00000])
def test_hypercall_page_write_refuses_what_is_not_an_own_ram_page(value: int) -> None:
    m, d = core()
    before = d.memory.read(0, 1 << 20)
    assert not m.wrmsr(0, pm.XEN_HYPERCALL_PAGE, value)
    assert d.memory.read(0, 1 << 20) == before
    assert m.hypercall_pages == [] and "not a page of this domain's RAM" in d.lines[0]


def test_hypercall_page_write_refuses_another_domains_page_mapped_in_ram() -> None:
    m, d = core()
    d.memory.foreign_ram.add(0x7000)
    assert not m.wrmsr(0, pm.XEN_HYPERCALL_PAGE, 0x7000)
    assert d.memory.read(0x7000, 4096) == bytes(4096)


def test_hypercall_page_write_refuses_a_page_given_back() -> None:
    m, d = core()
    d.memory.given_back.add(0x9)  # as release_ram_page does (XENMEM_decrease_reservation)
    assert not m.wrmsr(0, pm.XEN_HYPERCALL_PAGE, 0x9000)
    assert m.wrmsr(0, pm.XEN_HYPERCALL_PAGE, 0xA000)


def test_apic_base_reads_enabled_at_its_base_and_refuses_changes() -> None:
    m, _ = core()
    assert m.rdmsr(0, pm.APIC_BASE) == 0xFEE00000 | 1 << 11 | 1 << 8
    assert m.rdmsr(1, pm.APIC_BASE) == 0xFEE00000 | 1 << 11
    assert m.wrmsr(0, pm.APIC_BASE, 0xFEE00900)
    assert not m.wrmsr(0, pm.APIC_BASE, 0xFEE00100)  # disable
    assert not m.wrmsr(0, pm.APIC_BASE, 0xFEE00D00)  # x2APIC (EXTD): not offered
    assert not m.wrmsr(0, pm.APIC_BASE, 0xFED00900)  # move it


def test_amd_registers_xen_emulates() -> None:
    m, _ = core()
    assert m.rdmsr(0, pm.K8_HWCR) == 0
    assert m.rdmsr(0, pm.AMD64_DE_CFG) == 2
    assert m.wrmsr(0, pm.AMD64_DE_CFG, 2)
    assert m.rdmsr(0, 0x1234) is None and not m.wrmsr(0, 0x1234, 0)


def test_refused_accesses_are_logged_once_each_and_bounded() -> None:
    m, d = core()
    for _ in range(3):
        m.denied_access(0, 0xC0010000, False, 0)
    assert d.lines == ["vcpu 0: rdmsr 0xc0010000: not offered (#GP)"]
    assert m.denied[(0xC0010000, False)] == 3
    for i in range(1000):
        m.denied_access(0, 0x1000 + i, True, i)
    assert len(m.denied) == LOGGED_MSRS_MAX and len(d.lines) == LOGGED_MSRS_MAX
