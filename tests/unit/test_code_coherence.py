"""Translated code stays coherent with guest memory when it is rewritten by the host (a backend filling a
page that held code) or by another vCPU of the domain (engine/tcg/smp.py, fastpath.c's code domain, the
"code-*" patches of unicorn_patches.py). QEMU by itself only sees a store made by the instance that
translated the code: without the patches each case below runs the old code."""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Iterator

import pytest
from test_engine_smp import Handler

from hyperdisco.core.memory import GuestMemory
from hyperdisco.engine.base import RAX, StopReason
from hyperdisco.engine.tcg.engine import TcgEngine, TcgVcpu
from hyperdisco.engine.tcg.uc import X

RAM = 1 << 20
VICTIM = 0x3000  # mov eax, imm32; hlt
WRITER = 0x2000  # mov byte ptr [VICTIM+1], 2; hlt   (the immediate's low byte)
TOUCH = 0x2100  # mov byte ptr [VICTIM+0x800], 7; hlt   (a data byte in the victim's page)
ALIAS = 0x40000000  # with paging on: the victim's page again, writable and not executable
ALIAS_WRITER = 0x2200  # mov byte ptr [ALIAS+1], 2; hlt
ALIAS_TOUCH = 0x2300  # mov byte ptr [ALIAS+0x800], 7; hlt
ALIAS_WRITER4 = 0x2400  # mov byte ptr [ALIAS+1], 4; hlt
PML4, PDPT, PD, PD2, PT = 0x10000, 0x11000, 0x12000, 0x13000, 0x14000
P, W, PS, NX = 1, 2, 0x80, 1 << 63


def victim(imm: int) -> bytes:
    return b"\xb8" + struct.pack("<I", imm) + b"\xf4"


def store_byte(addr: int, value: int) -> bytes:
    return b"\xc6\x04\x25" + struct.pack("<IB", addr, value) + b"\xf4"  # mov byte ptr [addr32], imm8; hlt


@pytest.fixture
def ram() -> Iterator[mmap.mmap]:
    m = mmap.mmap(-1, RAM)
    m[VICTIM:VICTIM + 6] = victim(1)
    m[WRITER:WRITER + 9] = store_byte(VICTIM + 1, 2)
    m[TOUCH:TOUCH + 9] = store_byte(VICTIM + 0x800, 7)
    m[ALIAS_WRITER:ALIAS_WRITER + 9] = store_byte(ALIAS + 1, 2)
    m[ALIAS_TOUCH:ALIAS_TOUCH + 9] = store_byte(ALIAS + 0x800, 7)
    m[ALIAS_WRITER4:ALIAS_WRITER4 + 9] = store_byte(ALIAS + 1, 4)
    # 4-level page tables: the first 2 MiB identity-mapped (executable), ALIAS -> VICTIM's page with NX
    for at, value in ((PML4, PDPT | P | W), (PDPT, PD | P | W), (PDPT + 8, PD2 | P | W), (PD, P | W | PS),
                      (PD2, PT | P | W), (PT, VICTIM | P | W | NX)):
        struct.pack_into("<Q", m, at, value)
    yield m


def paging_on(v: TcgVcpu) -> None:
    """Long mode with 4-level paging and NX (unicorn starts in 64-bit mode with paging off)."""
    v.uc.reg_write(X.UC_X86_REG_CR4, 0x20)  # PAE
    v.uc.msr_write(0xC0000080, 0x100 | 0x400 | 0x800)  # EFER: LME, LMA, NXE
    v.uc.reg_write(X.UC_X86_REG_CR3, PML4)
    v.uc.reg_write(X.UC_X86_REG_CR0, 0x80000011)  # PG, ET, PE


def vcpus(ram: mmap.mmap, n: int) -> list[TcgVcpu]:
    engine = TcgEngine()
    out: list[TcgVcpu] = []
    for i in range(n):
        v = engine.create_vcpu(i, Handler(), out[0] if out else None)
        assert isinstance(v, TcgVcpu)
        v.map_ram(0, RAM, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
        out.append(v)
    return out


def call(v: TcgVcpu, addr: int) -> int:
    """Run the vCPU from addr to its hlt; its rax."""
    v.uc.reg_write(X.UC_X86_REG_RIP, addr)
    for _ in range(100):
        r = v.run(50_000_000)
        if r.reason is StopReason.HALT:
            return v.gpr(RAX)
        assert r.reason is StopReason.SLICE_END, r
    raise AssertionError("the program did not halt")


def test_host_rewrite_of_translated_code_runs_new_code(ram: mmap.mmap) -> None:
    """One vCPU; the host (blkback refilling a page-cache page, say) rewrites a page it ran code from."""
    (v,) = vcpus(ram, 1)
    assert call(v, VICTIM) == 1
    ram[VICTIM + 1] = 2
    v.host_wrote(VICTIM + 1, 1)
    assert call(v, VICTIM) == 2
    ram[VICTIM:VICTIM + 0x1000] = victim(3).ljust(0x1000, b"\0")  # a whole page, as a disk read does
    v.host_wrote(VICTIM, 0x1000)
    assert call(v, VICTIM) == 3
    v.host_wrote(0x80000, 0x2000)  # pages without code: nothing to drop
    assert call(v, VICTIM) == 3
    assert v.counts().engine == {"code.pages_dropped": 2}  # engine.code.pages_dropped in stats
    v.close()


def test_store_by_another_vcpu_is_seen(ram: mmap.mmap) -> None:
    b, a = vcpus(ram, 2)
    assert call(b, VICTIM) == 1  # translated and cached by b
    call(a, WRITER)  # a's first access to the page: its TLB entry makes the store report itself
    assert call(b, VICTIM) == 2
    assert call(a, VICTIM) == 2
    for v in (a, b):
        v.close()


def test_store_through_an_entry_older_than_the_code(ram: mmap.mmap) -> None:
    """a holds a TLB entry that allows fast stores to the page (a non-executable alias, as the guest
    kernel's direct map of a page-cache page) from before b translated code there: when b does, a is told
    to protect it, and a store a may have made meanwhile counts as one."""
    b, a = vcpus(ram, 2)
    for v in (a, b):
        paging_on(v)
    call(a, ALIAS_TOUCH)  # a's TLB now allows fast stores to the victim's page
    assert ram[VICTIM + 0x800] == 7
    assert call(b, VICTIM) == 1
    call(a, ALIAS_WRITER)
    assert a._hv.code_protects == 1  # a found its old entry when it next ran
    assert call(b, VICTIM) == 2
    # a's store of 2 made its entry fast again (the page had no code then); b translated the page
    # anew, so a protects it again before this store
    call(a, ALIAS_WRITER4)
    assert a._hv.code_protects == 2
    assert call(b, VICTIM) == 4
    for v in (a, b):
        v.close()


def test_guest_memory_reports_every_host_write() -> None:
    mem = GuestMemory(1 << 20)
    seen: list[tuple[int, int]] = []
    mem.on_write = lambda gpa, n: seen.append((gpa, n))
    mem.write(0x1000, b"abc")
    mem.set_u8(0x2000, 1)
    mem.set_u32(0x3000, 1)
    mem.set_u32(0x3001, 1)
    mem.set_u64(0x4000, 1)
    mem.pack(struct.Struct("<HH"), 0x5000, 1, 2)
    mem.fill(0x6000, 0x1000)
    assert seen == [(0x1000, 3), (0x2000, 1), (0x3000, 4), (0x3001, 4), (0x4000, 8), (0x5000, 4),
                    (0x6000, 0x1000)]
    mem.close()


VICTIM2 = 0x5000  # mov eax, imm32; ret
READER = 0x6000
WRITER2 = 0x7000
FLAG = 0x10800
FINAL = 3000
# reader (rsi = &flag, r12 = FINAL): loops reading the flag, then calling VICTIM2; counts in r11 the
# times the code it ran was older than the flag it had read before (0 if stores to code are seen in order)
READ_LOOP = bytes.fromhex(
    "8b16"  # 1: mov edx, [rsi]
    "e8f9efffff"  # call VICTIM2 (0x5000 - 0x6007)
    "39d0"  # cmp eax, edx
    "7303"  # jae 2f
    "49ffc3"  # inc r11
    "4439e0"  # 2: cmp eax, r12d
    "75ed"  # jne 1b
    "f4"  # hlt
)
# writer (rdi = VICTIM2+1, rsi = &flag, r12 = FINAL): writes 2, 3, ... FINAL into the code, then the flag
WRITE_LOOP = bytes.fromhex(
    "b801000000"  # mov eax, 1
    "ffc0"  # 1: inc eax
    "8907"  # mov [rdi], eax      (the new code)
    "8906"  # mov [rsi], eax      (then the flag)
    "4439e0"  # cmp eax, r12d
    "75f5"  # jne 1b
    "f4"  # hlt
)


@pytest.mark.parametrize("store", [0x89, 0x87], ids=["mov", "xchg"])
def test_cross_modified_code_is_seen_in_order(ram: mmap.mmap, store: int) -> None:
    """One vCPU rewrites code that another runs in a loop, on two host threads: once the reader has seen
    the flag written after a change, it never runs the code from before that change, and it ends. The
    code is written by a plain store or by xchg (a host atomic under CF_PARALLEL: QEMU's atomic helpers,
    not its store helper)."""
    from test_engine_smp import run_all

    from hyperdisco.engine.base import R11, R12, RDI, RSI, RSP

    ram[VICTIM2:VICTIM2 + 6] = b"\xb8" + struct.pack("<I", 1) + b"\xc3"
    ram[READER:READER + len(READ_LOOP)] = READ_LOOP
    ram[WRITER2:WRITER2 + len(WRITE_LOOP)] = WRITE_LOOP
    ram[WRITER2 + 7] = store  # mov [rdi], eax  or  xchg [rdi], eax
    reader, writer = vcpus(ram, 2)
    # the reader translates VICTIM2 (imm 1) before the writer starts: to end, it must drop that code
    ram[0x8000] = 0xF4  # hlt, where VICTIM2 returns to
    struct.pack_into("<Q", ram, 0x8FF8, 0x8000)
    reader.set_gpr(RSP, 0x8FF8)
    assert call(reader, VICTIM2) == 1
    for v, start in ((reader, READER), (writer, WRITER2)):
        v.uc.reg_write(X.UC_X86_REG_RIP, start)
        v.set_gpr(RSI, FLAG)
        v.set_gpr(RDI, VICTIM2 + 1)
        v.set_gpr(R11, 0)
        v.set_gpr(R12, FINAL)
        v.set_gpr(RSP, 0x9000)
    hv = reader._hv
    ends = run_all([reader, writer], limit_s=60)
    assert ends == ["halt", "halt"]
    assert reader.gpr(R11) == 0
    assert hv.code_invalidations + hv.code_flushes > 0  # the reader did drop code the writer changed
