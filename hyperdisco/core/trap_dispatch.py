"""The core's side of the engine interface for one domain: hypercalls to the handlers, port I/O to the
platform's devices (CMOS RTC, ACPI sleep and reset registers, the debug port), CPUID to the policy, MMIO
to the local APIC, unbacked memory to Xen's null handler (unbacked.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine.base import Vcpu
from ..platform import acpi, layout
from ..platform.rtc import DATA_PORT, INDEX_PORT, CmosRtc
from . import ipi
from .memory import PAGE

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

PIT_PORTS = (0x40, 0x41, 0x42, 0x43, 0x61)  # i8254 counters, control, and the port-B gate
DEBUG_PORT = 0xE9  # Bochs/QEMU debug console port: bytes written there go to the console


class TrapDispatch:
    """The core's side of the engine interface for one domain."""

    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.rtc = CmosRtc()

    def _ctx(self, vcpu: Vcpu) -> VcpuContext:
        return self.dom._ctx_by_ev[id(vcpu)]

    def hypercall(self, vcpu: Vcpu) -> None:
        self.dom.hypercalls.dispatch(self._ctx(vcpu))

    def io_in(self, vcpu: Vcpu, port: int, size: int) -> int:
        if port == DATA_PORT:
            return self.rtc.read_data()
        if port in (acpi.SLEEP_STATUS_PORT, acpi.SLEEP_CONTROL_PORT, acpi.RESET_PORT):
            return 0
        if port in PIT_PORTS:
            # There is no PIT. Its counter reading 0 rather than a floating 0xff makes Linux's
            # quick_pit_calibrate() give up at its first read instead of spinning 50 000 times waiting
            # for the all-ones MSB to change (the TSC frequency comes from pvclock instead).
            return 0
        return (1 << (8 * size)) - 1  # nothing there: the bus floats high

    def io_out(self, vcpu: Vcpu, port: int, size: int, value: int) -> None:
        dom = self.dom
        if port == DEBUG_PORT:
            dom.console_output(bytes([value & 0xFF]))
        elif port == INDEX_PORT:
            self.rtc.write_index(value)
        elif port == acpi.SLEEP_CONTROL_PORT and value & acpi.SLP_EN:
            dom.shutdown("poweroff", "ACPI S5")
            vcpu.request_stop()
        elif port == acpi.RESET_PORT and value & 0x04:
            dom.shutdown("reboot", "ACPI reset")
            vcpu.request_stop()
        elif port == 0x64 and value == 0xFE:
            dom.shutdown("reboot", "keyboard controller reset")
            vcpu.request_stop()

    def cpuid(self, vcpu: Vcpu, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return self.dom.cpuid.lookup(leaf, subleaf, vcpu.index)

    def rdmsr(self, vcpu: Vcpu, msr: int) -> int | None:
        return self.dom.msrs.rdmsr(vcpu.index, msr)

    def wrmsr(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        return self.dom.msrs.wrmsr(vcpu.index, msr, value)

    def msr_denied(self, vcpu: Vcpu, msr: int, write: bool, value: int) -> None:
        self.dom.msrs.denied_access(vcpu.index, msr, write, value)

    def mmio_read(self, vcpu: Vcpu, addr: int, size: int) -> int:
        if layout.LAPIC_BASE <= addr < layout.LAPIC_BASE + PAGE:
            return self._ctx(vcpu).lapic.read(addr - layout.LAPIC_BASE)
        return 0

    def mmio_write(self, vcpu: Vcpu, addr: int, size: int, value: int) -> None:
        if layout.LAPIC_BASE <= addr < layout.LAPIC_BASE + PAGE:
            ctx = self._ctx(vcpu)
            cmd = ctx.lapic.write(addr - layout.LAPIC_BASE, value)
            if cmd is not None:
                ipi.route(self.dom, ctx, cmd)
            if ctx.lapic.pending:
                vcpu.kick()

    def unbacked_read(self, vcpu: Vcpu, addr: int, size: int) -> int:
        return self.dom.unbacked.read(addr, size, vcpu.rip)

    def unbacked_write(self, vcpu: Vcpu, addr: int, size: int, value: int) -> None:
        self.dom.unbacked.write(addr, size, value, vcpu.rip)
