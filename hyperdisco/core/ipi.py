"""Inter-processor interrupts through the local APIC's ICR, routed between a domain's vCPUs.

A Linux PVH guest sends its everyday IPIs (reschedule, call-function, TLB shootdowns) through event
channels (EVTCHNOP_bind_ipi and EVTCHNOP_send: arch/x86/xen/smp.c), but starts its secondary CPUs with
the native INIT / STARTUP sequence (arch/x86/kernel/smpboot.c, wakeup_secondary_cpu_via_init) and stops
them at shutdown with a fixed IPI to all but itself (native_stop_other_cpus: REBOOT_VECTOR). The sender's
own LAPIC takes what is addressed to itself (platform/lapic.py); this module hands the rest to the
addressed vCPUs, which act on it on their own threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..platform.lapic import (
    DM_FIXED,
    DM_INIT,
    DM_LOWEST,
    DM_NMI,
    DM_STARTUP,
    SH_ALL,
    SH_NONE,
    SH_OTHERS,
    IcrCommand,
)

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

NMI_VECTOR = 2


def targets(dom: Domain, src: VcpuContext, cmd: IcrCommand) -> list[VcpuContext]:
    """The vCPUs other than the sender that `cmd` addresses."""
    others = [c for c in dom.vcpus if c is not src]
    if cmd.shorthand in (SH_ALL, SH_OTHERS):
        return others
    if cmd.shorthand == SH_NONE:
        return [c for c in others if c.lapic.addressed(cmd)]
    return []  # SH_SELF: the sender's LAPIC took it


def route(dom: Domain, src: VcpuContext, cmd: IcrCommand) -> None:
    """Deliver `cmd` (written to `src`'s ICR) to the other vCPUs it addresses. Lowest-priority delivery
    goes to the first of them, as an arbitration that always picks the lowest APIC ID would."""
    dest = targets(dom, src, cmd)
    if cmd.mode == DM_LOWEST:
        dest = dest[:1]
    for t in dest:
        if cmd.mode in (DM_FIXED, DM_LOWEST):
            t.lapic.accept(cmd.vector)
            t.wake()
        elif cmd.mode == DM_NMI:
            t.lapic.pending.add(NMI_VECTOR)  # through the IDT's vector 2, once interrupts are on
            t.wake()
        elif cmd.mode == DM_INIT and cmd.level_assert:
            t.request_init()
        elif cmd.mode == DM_STARTUP:
            t.request_sipi(cmd.vector)
    if dest:
        dom.stats[f"ipi.{_MODES.get(cmd.mode, 'other')}"] += len(dest)


_MODES = {DM_FIXED: "fixed", DM_LOWEST: "fixed", DM_NMI: "nmi", DM_INIT: "init", DM_STARTUP: "startup"}
