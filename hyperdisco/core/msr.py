"""The MSRs the core itself answers for a domain (the policy in platform/msr.py gives them MSR_*_CORE):
Xen's hypercall-page MSR, IA32_APIC_BASE and the AMD registers Xen emulates; and the log of accesses the
policy refused (#GP), once per MSR, so what a guest probes is visible."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..platform import msr as pm
from ..platform.cpuid import CpuidPolicy
from ..xen.arch_x86 import VMCALL, VMMCALL, hypercall_page
from .memory import PAGE, GuestFault

if TYPE_CHECKING:
    from .domain import Domain

LOGGED_MSRS_MAX = 64  # distinct refused MSRs logged per domain (a guest probing all 2^32 is not a log)


class CoreMsrs:
    def __init__(self, dom: Domain, cpuid: CpuidPolicy) -> None:
        self.dom = dom
        amd = pm.Features(cpuid.table).amd
        self.stubs = hypercall_page(VMMCALL if amd else VMCALL, PAGE)  # the vendor's own instruction
        self.hypercall_pages: list[int] = []  # gpas filled, in order (for tests and `info`)
        self.denied: dict[tuple[int, bool], int] = {}
        self._lock = threading.Lock()

    def rdmsr(self, vcpu_index: int, msr: int) -> int | None:
        if msr == pm.XEN_HYPERCALL_PAGE:
            return 0  # traps.c guest_rdmsr_xen: "Write hypercall page MSR. Read as zero."
        if msr == pm.APIC_BASE:
            return pm.apic_base_value(vcpu_index)
        if msr == pm.K8_HWCR:
            return 0
        if msr == pm.AMD64_DE_CFG:
            return pm.AMD64_DE_CFG_LFENCE_SERIALISE
        return None

    def wrmsr(self, vcpu_index: int, msr: int, value: int) -> bool:
        if msr == pm.XEN_HYPERCALL_PAGE:
            return self.write_hypercall_page(value)
        if msr == pm.APIC_BASE:
            # Only the value it reads: the LAPIC cannot be moved, disabled or switched to x2APIC mode here
            # (x2APIC is not offered; Xen's vlapic_msr_set refuses EXTD without it as well).
            return value == pm.apic_base_value(vcpu_index)
        if msr == pm.AMD64_DE_CFG:
            return True  # Xen discards writes (LFENCE is already dispatch-serialising)
        return False

    def write_hypercall_page(self, value: int) -> bool:
        """traps.c guest_wrmsr_xen, case 0: `value` is the guest-physical address of a page of the
        domain's own RAM (an offset into the page is refused), which is filled with the stubs. False
        (#GP) for anything else."""
        gpa = value & ~(PAGE - 1)
        if value & (PAGE - 1) or not self.dom.memory.owns_ram_page(gpa):
            self.dom.log(f"hypercall page MSR: {value:#x} is not a page of this domain's RAM (#GP)")
            return False
        try:
            self.dom.memory.write(gpa, self.stubs)
        except GuestFault:
            return False
        with self._lock:
            self.hypercall_pages.append(gpa)
        return True

    def denied_access(self, vcpu_index: int, msr: int, write: bool, value: int) -> None:
        key = (msr, write)
        with self._lock:
            first = key not in self.denied and len(self.denied) < LOGGED_MSRS_MAX
            if key in self.denied or first:
                self.denied[key] = self.denied.get(key, 0) + 1
        if first:
            what = f"wrmsr {msr:#x} <- {value:#x}" if write else f"rdmsr {msr:#x}"
            self.dom.log(f"vcpu {vcpu_index}: {what}: not offered (#GP)")
