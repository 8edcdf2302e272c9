"""MSRs, control registers and exception delivery on the tcg engine, with real x86 code (issue 13).

Each test runs a few hand-assembled 64-bit instructions on a TcgVcpu in long mode (identity-mapped 4 MiB,
an IDT whose every vector records vector, error code and saved RIP, then halts), with the domain's real
MSR/CR policy (platform/msr.py) and the core's MSR handler (core/msr.py). Encodings were checked with
GNU as; docs/x86-conformance.md says which architectural rule each test holds the engine to.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, cast

import pytest
from unit_support import QuietTraps

from hyperdisco.core.hypercalls import XEN_VERSION
from hyperdisco.core.memory import GuestMemory
from hyperdisco.core.msr import CoreMsrs
from hyperdisco.engine.base import RAX, RSP, StopReason, Vcpu
from hyperdisco.engine.tcg.engine import TcgVcpu, native_cpuid_table
from hyperdisco.engine.tcg.uc import X
from hyperdisco.platform.cpuid import CpuidPolicy
from hyperdisco.platform.msr import control_policy
from hyperdisco.xen.arch_x86 import VMCALL, VMMCALL, hypercall_page

RAM = 4 << 20
GDT, PML4, PDPT, PD, IDT, COMMON, STUBS = 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000, 0x8000
RESULT, STACK, ENTRY32, CODE = 0x9000, 0x80000, 0x100000, 0x100010
TSS, IST_STACK = 0xA000, 0x70000  # a 64-bit TSS whose IST1 the `ist` vectors' gates use
RSP0, USER_STACK = 0x78000, 0x60000  # the TSS's ring-0 stack, and a stack for CPL 3 code
USER_CS, USER_SS = 0x3B, 0x33  # GDT entries 7 and 6 with RPL 3
NO_VECTOR = 0xDEAD
ERROR_CODE_VECTORS = (8, 10, 11, 12, 13, 14, 17, 21, 29, 30)

# The handler every stub jumps to: pop rax (vector); pop rbx (error code); mov rcx,[rsp] (saved RIP);
# mov [RESULT],rax; mov [RESULT+8],rbx; mov [RESULT+16],rcx; hlt
COMMON_CODE = bytes.fromhex("58 5b 48 8b 0c 24 48 89 04 25 00 90 00 00 48 89 1c 25 08 90 00 00"
                            "48 89 0c 25 10 90 00 00 f4")


def u32(x: int) -> bytes:
    return struct.pack("<I", x & 0xFFFFFFFF)


class Dom:
    """What CoreMsrs uses of a Domain: its memory and its log."""

    def __init__(self) -> None:
        self.memory = GuestMemory(RAM)
        self.lines: list[str] = []

    def log(self, msg: str) -> None:
        self.lines.append(msg)


class Handler(QuietTraps):
    def __init__(self, msrs: CoreMsrs) -> None:
        self.msrs = msrs
        self.hypercalls: list[int] = []
        self.denied: list[tuple[int, bool]] = []

    def hypercall(self, vcpu: Vcpu) -> None:
        self.hypercalls.append(vcpu.gpr(RAX))

    def rdmsr(self, vcpu: Vcpu, msr: int) -> int | None:
        return self.msrs.rdmsr(vcpu.index, msr)

    def wrmsr(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        return self.msrs.wrmsr(vcpu.index, msr, value)

    def msr_denied(self, vcpu: Vcpu, msr: int, write: bool, value: int) -> None:
        self.denied.append((msr, write))
        self.msrs.denied_access(vcpu.index, msr, write, value)


class Guest:
    def __init__(self, code: bytes, absent: tuple[int, ...] = (), ist: tuple[int, ...] = ()) -> None:
        self.dom = Dom()
        cpuid = CpuidPolicy(native_cpuid_table(), 1, XEN_VERSION, 1_000_000)
        self.msrs = CoreMsrs(cast(Any, self.dom), cpuid)
        self.h = Handler(self.msrs)
        mem = self.dom.memory
        v = TcgVcpu(0, self.h)
        self.v = v
        v.map_ram(0, RAM, mem.regions[0].host_address)
        v.load_control_policy(control_policy(cpuid.table))
        # GDT: null, 32-bit code, data, 64-bit code, 64-bit TSS (available, limit 0x67), user data, user
        # 64-bit code
        tss_lo = 0x67 | (TSS & 0xFFFFFF) << 16 | 0x89 << 40 | (TSS >> 24 & 0xFF) << 56
        mem.write(GDT, struct.pack("<QQQQQQQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00AF9A000000FFFF,
                                   tss_lo, TSS >> 32, 0x00CFF2000000FFFF, 0x00AFFA000000FFFF))
        mem.write(TSS + 4, struct.pack("<Q", RSP0))
        mem.write(TSS + 0x24, struct.pack("<Q", IST_STACK))  # IST1
        # identity map of 4 MiB with two 2 MiB pages, user-accessible too
        mem.write(PML4, struct.pack("<Q", PDPT | 7))
        mem.write(PDPT, struct.pack("<Q", PD | 7))
        mem.write(PD, struct.pack("<QQ", 0x87, 0x200000 | 0x87))
        mem.write(COMMON, COMMON_CODE)
        for vec in range(256):
            stub = STUBS + 16 * vec
            body = (b"" if vec in ERROR_CODE_VECTORS else b"\x6a\x00") + b"\x68" + u32(vec)
            body += b"\xe9" + u32(COMMON - (stub + len(body) + 5))
            mem.write(stub, body)
            gate = (stub & 0xFFFF) | 0x18 << 16 | (0x8E if vec not in absent else 0x0E) << 40
            gate |= ((stub >> 16) & 0xFFFF) << 48 | (1 << 32 if vec in ist else 0)
            mem.write(IDT + 16 * vec, struct.pack("<QQ", gate, stub >> 32))
        mem.write(RESULT, struct.pack("<QQQ", NO_VECTOR, 0, 0))
        mem.write(ENTRY32, b"\xea" + u32(CODE) + b"\x18\x00")  # ljmp 0x18:CODE (compatibility -> 64-bit)
        mem.write(CODE, code)
        v.set_pvh_entry(ENTRY32, 0, 0x1000)
        uc = v.uc
        uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, 8 * 8 - 1, 0))
        uc.reg_write(X.UC_X86_REG_TR, (0x20, TSS, 0x67, 0x8900))  # present (QEMU's DESC_P), type 9
        uc.reg_write(X.UC_X86_REG_IDTR, (0, IDT, 256 * 16 - 1, 0))
        uc.reg_write(X.UC_X86_REG_CR3, PML4)
        uc.reg_write(X.UC_X86_REG_CR4, 0x20)  # PAE
        uc.msr_write(0xC0000080, 0x100)  # EFER.LME
        uc.reg_write(X.UC_X86_REG_CR0, 0x80000011)  # PG: long mode, compatibility until the ljmp
        v.set_gpr(RSP, STACK)

    def run(self) -> StopReason:
        return self.v.run(2_000_000_000).reason

    def result(self) -> tuple[int, int, int]:
        vec, err, rip = struct.unpack("<QQQ", self.dom.memory.read(RESULT, 24))
        return vec, err, rip

    def u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.dom.memory.read(gpa, 8))[0])


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    made: list[Guest] = []
    yield made
    for g in made:
        g.v.close()
        g.dom.memory.close()


def run(guests: list[Guest], code: bytes, absent: tuple[int, ...] = (), ist: tuple[int, ...] = ()) -> Guest:
    g = Guest(code, absent, ist)
    guests.append(g)
    assert g.run() is StopReason.HALT
    return g


def mov_ecx(x: int) -> bytes:
    return b"\xb9" + u32(x)


def mov_eax(x: int) -> bytes:
    return b"\xb8" + u32(x)


def mov_edx(x: int) -> bytes:
    return b"\xba" + u32(x)


WRMSR, RDMSR, HLT = b"\x0f\x30", b"\x0f\x32", b"\xf4"
STORE_RAX, STORE_RDX = b"\x48\x89\x04\x25" + u32(RESULT + 24), b"\x48\x89\x14\x25" + u32(RESULT + 32)
MOV_RAX_CR0, MOV_CR0_RAX = b"\x0f\x20\xc0", b"\x0f\x22\xc0"
MOV_RAX_CR3, MOV_CR3_RAX = b"\x0f\x20\xd8", b"\x0f\x22\xd8"
MOV_RAX_CR4, MOV_CR4_RAX = b"\x0f\x20\xe0", b"\x0f\x22\xe0"


def test_the_harness_reaches_long_mode_and_records_a_fault(guests: list[Guest]) -> None:
    g = run(guests, b"\x0f\x0b")  # ud2
    assert g.result() == (6, 0, CODE)


def test_wrmsr_and_rdmsr_of_an_unknown_msr_raise_gp_at_the_instruction(guests: list[Guest]) -> None:
    code = mov_ecx(0x1234) + WRMSR + HLT
    g = run(guests, code)
    assert g.result() == (13, 0, CODE + 5)
    assert g.h.denied == [(0x1234, True)]
    assert any("wrmsr 0x1234" in line for line in g.dom.lines)
    g = run(guests, mov_ecx(0xC0010114) + RDMSR + HLT)  # an AMD SVM MSR: not offered
    assert g.result() == (13, 0, CODE + 5)
    c = g.v.counts()
    assert c.msr == 1 and c.msr_gp == 1


def test_known_msrs_behave_and_check_their_values(guests: list[Guest]) -> None:
    lstar = mov_ecx(0xC0000082) + mov_eax(0x12345678) + mov_edx(0xFFFF8000) + WRMSR
    g = run(guests, lstar + RDMSR + STORE_RAX + STORE_RDX + HLT)
    assert g.result()[0] == NO_VECTOR
    assert (g.u64(RESULT + 24), g.u64(RESULT + 32)) == (0x12345678, 0xFFFF8000)
    # a non-canonical LSTAR is refused (SDM vol. 4: WRMSR of a non-canonical address: #GP)
    bad = mov_ecx(0xC0000082) + mov_eax(0) + mov_edx(0x00008000) + WRMSR + HLT
    assert run(guests, bad).result() == (13, 0, CODE + 15)
    # EFER reads back long mode; setting SVME (not offered: no nested virtualisation) is #GP
    efer = mov_ecx(0xC0000080) + RDMSR + STORE_RAX + b"\x0d\x00\x10\x00\x00" + WRMSR + HLT
    g = run(guests, efer)
    assert g.u64(RESULT + 24) & 0x500 == 0x500  # LME | LMA
    assert g.result() == (13, 0, CODE + 5 + 2 + 8 + 5)
    # PAT with a reserved memory type (2) is #GP
    pat = mov_ecx(0x277) + mov_eax(0x02) + mov_edx(0) + WRMSR + HLT
    assert run(guests, pat).result() == (13, 0, CODE + 15)


def test_hypercall_page_msr_fills_the_page_with_xens_stubs(guests: list[Guest]) -> None:
    page = 0x20000
    code = (mov_ecx(0x40000000) + mov_eax(page) + mov_edx(0) + WRMSR
            + mov_eax(page + 32 * 17) + b"\xff\xd0"  # call rax: hypercall 17 through its stub
            + STORE_RAX + HLT)
    g = run(guests, code)
    assert g.result()[0] == NO_VECTOR
    stubs = g.dom.memory.read(page, 4096)
    assert stubs in (hypercall_page(VMCALL), hypercall_page(VMMCALL))
    assert stubs[17 * 32:17 * 32 + 9] in (b"\xb8\x11\x00\x00\x00" + VMCALL + b"\xc3",
                                          b"\xb8\x11\x00\x00\x00" + VMMCALL + b"\xc3")
    assert stubs[23 * 32:23 * 32 + 2] == b"\x0f\x0b"  # HYPERVISOR_iret: ud2
    assert g.h.hypercalls == [17]
    assert g.msrs.hypercall_pages == [page]
    # reading it gives zero (traps.c guest_rdmsr_xen)
    g = run(guests, mov_ecx(0x40000000) + RDMSR + STORE_RAX + HLT)
    assert g.result()[0] == NO_VECTOR and g.u64(RESULT + 24) == 0


@pytest.mark.parametrize("value", [0x20010, RAM, 0x1_0000_0000])
def test_hypercall_page_msr_refuses_what_is_not_a_ram_page(guests: list[Guest], value: int) -> None:
    code = mov_ecx(0x40000000) + mov_eax(value) + mov_edx(value >> 32) + WRMSR + HLT
    g = run(guests, code)
    assert g.result() == (13, 0, CODE + 15)
    assert g.msrs.hypercall_pages == []


def test_hypercall_page_msr_refuses_a_foreign_page(guests: list[Guest]) -> None:
    g = Guest(mov_ecx(0x40000000) + mov_eax(0x30000) + mov_edx(0) + WRMSR + HLT)
    guests.append(g)
    g.dom.memory.foreign_ram.add(0x30000)  # as map_foreign_page does for a grant mapped over RAM
    assert g.run() is StopReason.HALT
    assert g.result() == (13, 0, CODE + 15)


@pytest.mark.parametrize(("name", "code", "at"), [
    # CR4.VMXE: VMX is not offered (hvm_cr4_guest_valid_bits)
    ("cr4-vmxe", MOV_RAX_CR4 + b"\x48\x0d\x00\x20\x00\x00" + MOV_CR4_RAX, 9),
    # a bit no CPU defines (CR4 bit 25)
    ("cr4-reserved", MOV_RAX_CR4 + b"\x48\x0d\x00\x00\x00\x02" + MOV_CR4_RAX, 9),
    # clearing CR4.PAE in long mode (hvm_set_cr4)
    ("cr4-pae-off", MOV_RAX_CR4 + b"\x83\xe0\xdf" + MOV_CR4_RAX, 6),
    # CR0 bit 32 (hvm_set_cr0: upper 32 bits)
    ("cr0-upper", MOV_RAX_CR0 + b"\x48\x0f\xba\xe8\x20" + MOV_CR0_RAX, 8),
    # CR0.NW without CR0.CD (SDM vol. 2B MOV CR)
    ("cr0-nw", MOV_RAX_CR0 + b"\x0d\x00\x00\x00\x20" + MOV_CR0_RAX, 8),
    # CR3 bit 63 without PCIDE: above MAXPHYADDR
    ("cr3-reserved", MOV_RAX_CR3 + b"\x48\x0f\xba\xe8\x3f" + MOV_CR3_RAX, 8),
    # CR8 bits 63:4
    ("cr8-reserved", mov_eax(0x10) + b"\x44\x0f\x22\xc0", 5),
])
def test_control_register_writes_with_reserved_bits_raise_gp(guests: list[Guest], name: str, code: bytes,
                                                             at: int) -> None:
    g = run(guests, code + HLT)
    assert g.result() == (13, 0, CODE + at), name
    assert g.v.counts().cr_gp == 1


def test_allowed_control_register_writes_still_work(guests: list[Guest]) -> None:
    # CR4.PGE (offered) on, read back; CR8 = 15
    code = (MOV_RAX_CR4 + b"\x48\x0d\x80\x00\x00\x00" + MOV_CR4_RAX + MOV_RAX_CR4 + STORE_RAX
            + mov_eax(15) + b"\x44\x0f\x22\xc0" + HLT)
    g = run(guests, code)
    assert g.result()[0] == NO_VECTOR
    assert g.u64(RESULT + 24) == 0xA0


def test_icebp_raises_db_as_a_trap(guests: list[Guest]) -> None:
    g = run(guests, b"\x90\xf1" + HLT)  # nop; icebp
    assert g.result() == (1, 0, CODE + 2)  # #DB, no error code, RIP after the instruction


def test_fault_while_delivering_int_n_reports_the_int_and_the_idt_vector(guests: list[Guest]) -> None:
    g = run(guests, b"\x90\xcd\x80" + HLT, absent=(0x80,))  # nop; int 0x80 through a not-present gate
    # #NP, error code = vector << 3 | IDT (SDM vol. 3A 6.13; not vector * 16 as QEMU pushed), EXT = 0
    # for a software interrupt; the saved RIP is the int instruction (6.5), not the one after it
    assert g.result() == (11, 0x80 << 3 | 2, CODE + 1)


def test_exception_through_an_absent_gate_sets_ext(guests: list[Guest]) -> None:
    g = run(guests, b"\x0f\x0b", absent=(6,))  # ud2; the #UD gate is not present
    assert g.result() == (11, 6 << 3 | 2 | 1, CODE)  # EXT: delivering an exception (SDM vol. 3A 6.13)


def test_mmx_with_cr0_em_is_ud_not_nm(guests: list[Guest]) -> None:
    # CR0.EM and CR0.TS on, then paddb mm0, mm1: #UD (EM wins for MMX/SSE, SDM vol. 3A table 2-2)
    code = MOV_RAX_CR0 + b"\x0d\x0c\x00\x00\x00" + MOV_CR0_RAX + b"\x0f\xfc\xc1" + HLT
    g = run(guests, code)
    assert g.result() == (6, 0, CODE + 11)


def test_sse_with_only_cr0_ts_is_still_nm(guests: list[Guest]) -> None:
    code = MOV_RAX_CR0 + b"\x0d\x08\x00\x00\x00" + MOV_CR0_RAX + b"\x0f\xfc\xc1" + HLT
    g = run(guests, code)
    assert g.result() == (7, 0, CODE + 11)


def test_the_policy_runs_without_python_for_native_msrs(guests: list[Guest]) -> None:
    # FS_BASE written and read 1000 times: all in C, no call into the core
    loop = (mov_ecx(0xC0000100) + mov_edx(0) + b"\xbe\xe8\x03\x00\x00"  # mov esi, 1000
            + b"\x89\xf0" + WRMSR + RDMSR + b"\xff\xce" + b"\x75\xf6" + HLT)  # mov eax,esi; ...; dec esi; jnz
    g = run(guests, loop)
    assert g.result()[0] == NO_VECTOR
    assert g.v.counts().msr == 2000 and g.h.denied == []


NONCANONICAL = 0x0000_8000_0000_0010
STACK_FAULTS = (8, 12, 13)  # delivered on IST1: the faulting stack cannot take the exception frame


def mov_imm64(reg: int, x: int) -> bytes:
    return bytes([0x48, 0xB8 + reg]) + struct.pack("<Q", x)


def test_non_canonical_stack_accesses_raise_ss_not_gp(guests: list[Guest]) -> None:
    # mov rsp, NONCANONICAL; push rax: #SS(0) (SDM vol. 3A 6.15, interrupt 12), RIP at the push
    g = run(guests, mov_imm64(4, NONCANONICAL) + b"\x50" + HLT, ist=STACK_FAULTS)
    assert g.result() == (12, 0, CODE + 10)
    # an RBP-based operand is an SS access too: mov rbp, NONCANONICAL; mov rax, [rbp]
    g = run(guests, mov_imm64(5, NONCANONICAL) + b"\x48\x8b\x45\x00" + HLT, ist=STACK_FAULTS)
    assert g.result() == (12, 0, CODE + 10)
    # call with a non-canonical RSP: its push is the stack access
    g = run(guests, mov_imm64(4, NONCANONICAL) + b"\xe8\x00\x00\x00\x00" + HLT, ist=STACK_FAULTS)
    assert g.result() == (12, 0, CODE + 10)


def test_non_canonical_data_accesses_stay_gp(guests: list[Guest]) -> None:
    # mov rax, NONCANONICAL; mov rax, [rax]: a DS access, #GP(0)
    g = run(guests, mov_imm64(0, NONCANONICAL) + b"\x48\x8b\x00" + HLT, ist=STACK_FAULTS)
    assert g.result() == (13, 0, CODE + 10)
    # push qword [rax] with RAX non-canonical and a good stack: the DS read faults, #GP
    g = run(guests, mov_imm64(0, NONCANONICAL) + b"\xff\x30" + HLT, ist=STACK_FAULTS)
    assert g.result() == (13, 0, CODE + 10)
    # ... and with a good RAX and a non-canonical RSP it is the push: #SS
    g = run(guests, mov_imm64(0, 0x9000) + mov_imm64(4, NONCANONICAL) + b"\xff\x30" + HLT, ist=STACK_FAULTS)
    assert g.result() == (12, 0, CODE + 20)
    # an FS-relative access stays #GP: mov rax, fs:[rax]
    g = run(guests, mov_imm64(0, NONCANONICAL) + b"\x64\x48\x8b\x00" + HLT, ist=STACK_FAULTS)
    assert g.result() == (13, 0, CODE + 10)


# iretq to CPL 3 at the next instruction: push ss, rsp, rflags, cs, rip
TO_USER = (b"\x6a" + bytes([USER_SS]) + b"\x68" + u32(USER_STACK) + b"\x6a\x02" + b"\x6a" + bytes([USER_CS])
           + b"\x68" + u32(CODE + 18) + b"\x48\xcf")
assert len(TO_USER) == 18


def test_int_n_from_user_mode_through_a_kernel_gate_is_gp_at_the_int(guests: list[Guest]) -> None:
    # the usual case of the RIP fix: int 0x80 at CPL 3, gate DPL 0: #GP(0x80 << 3 | IDT) at the int
    g = run(guests, TO_USER + b"\xcd\x80" + HLT)
    assert g.result() == (13, 0x80 << 3 | 2, CODE + 18)
    g = run(guests, TO_USER + b"\x90\xcc" + HLT)  # int3: the same DPL check
    assert g.result() == (13, 3 << 3 | 2, CODE + 19)


def test_icebp_from_user_mode_ignores_the_gate_dpl(guests: list[Guest]) -> None:
    g = run(guests, TO_USER + b"\xf1" + HLT)  # INT1 has no gate DPL check: #DB, RIP after it
    assert g.result() == (1, 0, CODE + 19)
