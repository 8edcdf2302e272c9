"""A small local APIC model: enough registers for Linux to accept it, and self-IPIs delivered.

With a Xen clockevent and event channels the guest uses the LAPIC little: version and ID reads, the
spurious vector, the LVT masks, EOI, and self-IPIs through the ICR (irq_work). Register offsets: Intel SDM
vol. 3, table 11-1.
"""

from __future__ import annotations

ID, VERSION, TPR, EOI, LDR, DFR, SVR, ICR_LO, ICR_HI = 0x20, 0x30, 0x80, 0xB0, 0xD0, 0xE0, 0xF0, 0x300, 0x310
LVT = (0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
TIMER_CURRENT = 0x390


class Lapic:
    def __init__(self, apic_id: int = 0) -> None:
        self.regs: dict[int, int] = {ID: apic_id << 24, VERSION: 0x00050014, DFR: 0xFFFFFFFF, SVR: 0xFF}
        for r in LVT:
            self.regs[r] = 0x10000
        self.pending: set[int] = set()

    def read(self, offset: int) -> int:
        return self.regs.get(offset & 0xFF0, 0)

    def write(self, offset: int, value: int) -> None:
        off = offset & 0xFF0
        if off in (ID, VERSION, EOI, TIMER_CURRENT):
            return
        self.regs[off] = value & 0xFFFFFFFF
        if off == ICR_LO:
            vector, mode, shorthand = value & 0xFF, (value >> 8) & 7, (value >> 18) & 3
            dest = self.regs.get(ICR_HI, 0) >> 24
            to_self = shorthand in (1, 2) or (shorthand == 0 and dest == self.regs[ID] >> 24)
            if mode == 0 and to_self and vector >= 16:
                self.pending.add(vector)

    def take_pending(self) -> int | None:
        if not self.pending:
            return None
        v = max(self.pending)
        self.pending.discard(v)
        return v
