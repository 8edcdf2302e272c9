"""A small local APIC model: enough registers for Linux to accept it, self-IPIs delivered, and the ICR
commands for other CPUs (fixed IPIs, NMI, INIT and STARTUP) handed to the caller to route.

With a Xen clockevent and event channels the guest uses the LAPIC little: version and ID reads, the
spurious vector, the LVT masks, EOI, self-IPIs through the ICR (irq_work), and, with several vCPUs, the
INIT/STARTUP sequence that starts a secondary CPU (a PVH Linux guest boots its APs natively: smp_ops
keeps native_cpu_up, arch/x86/xen/smp_hvm.c) and the fixed IPIs that stop the other CPUs at shutdown
(REBOOT_VECTOR, apic->send_IPI_allbutself). Register offsets: Intel SDM vol. 3, table 11-1; the ICR's
fields: SDM vol. 3, figure 11-12 (Interrupt Command Register).
"""

from __future__ import annotations

from dataclasses import dataclass

ID, VERSION, TPR, EOI, LDR, DFR, SVR, ICR_LO, ICR_HI = 0x20, 0x30, 0x80, 0xB0, 0xD0, 0xE0, 0xF0, 0x300, 0x310
LVT = (0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
TIMER_CURRENT = 0x390
# ICR delivery modes (bits 10:8)
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_STARTUP = 0, 1, 2, 4, 5, 6
# ICR destination shorthands (bits 19:18)
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0, 1, 2, 3
BROADCAST = 0xFF  # physical destination 0xFF: every CPU (xAPIC)


@dataclass(frozen=True)
class IcrCommand:
    """One write of the ICR's low word, decoded."""

    mode: int  # DM_*
    vector: int
    shorthand: int  # SH_*
    dest: int  # ICR_HI[31:24]
    logical: bool  # destination mode bit 11
    level_assert: bool  # level bit 14 (an INIT with it clear is the level de-assert, which does nothing)

    @classmethod
    def decode(cls, low: int, high: int) -> IcrCommand:
        return cls(mode=(low >> 8) & 7, vector=low & 0xFF, shorthand=(low >> 18) & 3,
                   dest=(high >> 24) & 0xFF, logical=bool(low >> 11 & 1), level_assert=bool(low >> 14 & 1))


class Lapic:
    def __init__(self, apic_id: int = 0) -> None:
        self.regs: dict[int, int] = {}
        self.pending: set[int] = set()
        self._power_on(apic_id)

    def _power_on(self, apic_id: int) -> None:
        self.regs = {ID: apic_id << 24, VERSION: 0x00050014, DFR: 0xFFFFFFFF, SVR: 0xFF}
        for r in LVT:
            self.regs[r] = 0x10000
        self.pending = set()

    def read(self, offset: int) -> int:
        return self.regs.get(offset & 0xFF0, 0)

    @property
    def apic_id(self) -> int:
        return self.regs[ID] >> 24

    def write(self, offset: int, value: int) -> IcrCommand | None:
        """A register write. A write of the ICR's low word delivers a fixed IPI addressed to this CPU
        itself here, and returns the command, which the caller routes to the other CPUs it addresses."""
        off = offset & 0xFF0
        if off in (ID, VERSION, EOI, TIMER_CURRENT):
            return None
        self.regs[off] = value & 0xFFFFFFFF
        if off != ICR_LO:
            return None
        cmd = IcrCommand.decode(value, self.regs.get(ICR_HI, 0))
        to_self = cmd.shorthand in (SH_SELF, SH_ALL) or (cmd.shorthand == SH_NONE and self.addressed(cmd))
        if cmd.mode == DM_FIXED and to_self:
            self.accept(cmd.vector)
        return cmd

    def addressed(self, cmd: IcrCommand) -> bool:
        """Whether the command's destination field names this CPU (shorthand aside): physical mode by
        APIC ID (0xFF: all), logical mode by the LDR in the flat or cluster model the DFR selects."""
        if not cmd.logical:
            return cmd.dest in (BROADCAST, self.apic_id)
        ldr = self.regs.get(LDR, 0) >> 24
        if self.regs.get(DFR, 0xFFFFFFFF) >> 28 == 0xF:  # flat: a bit per CPU
            return bool(ldr & cmd.dest)
        return ldr >> 4 == cmd.dest >> 4 and bool(ldr & cmd.dest & 0xF)  # cluster

    def accept(self, vector: int) -> None:
        """A fixed interrupt for this CPU (vectors below 16 are illegal and dropped, SDM 11.5.2)."""
        if 16 <= vector <= 0xFF:
            self.pending.add(vector)

    def reset(self) -> None:
        """INIT: the registers as at power-on, this CPU's APIC ID kept; nothing pending."""
        self._power_on(self.apic_id)

    def take_pending(self) -> int | None:
        if not self.pending:
            return None
        v = max(self.pending)
        self.pending.discard(v)
        return v
