"""A hostile guest can end only itself: interrupt delivery through a bogus IDT must not reach the host."""

from __future__ import annotations

import struct

from unit_support import KERNEL_PADDR, make_elf

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import parse_kernel


def halted_with_idt_at(idt_base: int, engine: TcgEngine, clock: Clock) -> Domain:
    """A guest that loads an IDT at `idt_base` (limit 0x7ff), enables interrupts and halts."""
    body = b"\xfb\xf4\xeb\xfd"  # sti; hlt; jmp back to hlt
    lidt_len = 7  # 0f 01 1d disp32: lidt [disp32]
    idtr_at = KERNEL_PADDR + lidt_len + len(body)
    code = b"\x0f\x01\x1d" + struct.pack("<I", idtr_at) + body + struct.pack("<HI", 0x7FF, idt_base)
    dom = Domain(3, DomainConfig("hostile", parse_kernel(make_elf(code=code)), None, "", 32), engine, clock,
                 lambda _b: None, lambda _m: None)
    ctx = dom.vcpus[0]
    for _ in range(10):
        ctx.step()
        if ctx.halted:
            break
    assert ctx.halted and ctx.ev.interrupts_enabled()
    return dom


def interrupt_until_it_ends(dom: Domain) -> None:
    ctx = dom.vcpus[0]
    ctx.lapic.pending.add(0x40)
    for _ in range(20):
        if dom.finished:
            break
        ctx.step()


def test_interrupt_through_an_unmapped_idt_crashes_only_the_guest(engine: TcgEngine, clock: Clock) -> None:
    dom = halted_with_idt_at(0xF0000000, engine, clock)  # no guest memory there at all
    interrupt_until_it_ends(dom)
    assert dom.outcome == "crash" and "cannot deliver interrupt" in dom.outcome_detail
    dom.close()


def test_interrupt_through_an_empty_idt_escalates_to_triple_fault(engine: TcgEngine, clock: Clock) -> None:
    dom = halted_with_idt_at(0x200000, engine, clock)  # RAM of zeros: the gate is not present
    interrupt_until_it_ends(dom)  # #GP, then #DF, then a triple fault
    assert dom.outcome == "crash" and "triple fault" in dom.outcome_detail
    dom.close()
