"""A hostile guest can end only itself: interrupt delivery through a bogus IDT must not reach the host."""

from __future__ import annotations

import struct

from unit_support import KERNEL_PADDR, make_elf

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import parse_kernel


def test_interrupt_through_an_unmapped_idt_crashes_only_the_guest(engine: TcgEngine, clock: Clock) -> None:
    body = b"\xfb\xf4\xeb\xfd"  # sti; hlt; jmp back to hlt
    lidt_len = 7  # 0f 01 1d disp32: lidt [disp32]
    idtr_at = KERNEL_PADDR + lidt_len + len(body)
    code = b"\x0f\x01\x1d" + struct.pack("<I", idtr_at) + body + struct.pack("<HI", 0x7FF, 0xF0000000)
    dom = Domain(3, DomainConfig("hostile", parse_kernel(make_elf(code=code)), None, "", 32), engine, clock,
                 lambda _b: None, lambda _m: None)
    ctx = dom.vcpus[0]
    for _ in range(10):
        ctx.step()
        if ctx.halted:
            break
    assert ctx.halted and ctx.ev.interrupts_enabled()
    ctx.lapic.pending.add(0x40)  # an interrupt the guest cannot possibly take
    for _ in range(20):
        if dom.finished:
            break
        ctx.step()
    assert dom.outcome == "crash" and "cannot deliver interrupt" in dom.outcome_detail
    dom.close()


def test_interrupt_through_an_empty_idt_escalates_to_triple_fault(engine: TcgEngine, clock: Clock) -> None:
    body = b"\xfb\xf4\xeb\xfd"
    idtr_at = KERNEL_PADDR + 7 + len(body)
    code = b"\x0f\x01\x1d" + struct.pack("<I", idtr_at) + body + struct.pack("<HI", 0x7FF, 0x200000)
    dom = Domain(4, DomainConfig("hostile2", parse_kernel(make_elf(code=code)), None, "", 32), engine, clock,
                 lambda _b: None, lambda _m: None)
    ctx = dom.vcpus[0]
    for _ in range(10):
        ctx.step()
        if ctx.halted:
            break
    ctx.lapic.pending.add(0x40)  # its gate is not present: #GP, then #DF, then a triple fault
    for _ in range(20):
        if dom.finished:
            break
        ctx.step()
    assert dom.outcome == "crash" and "triple fault" in dom.outcome_detail
    dom.close()
