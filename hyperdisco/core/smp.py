"""A domain's vCPUs going up and down through the hypercall interface: VCPUOP_up, VCPUOP_down and
VCPUOP_is_up, with Xen's checks (xen/common/domain.c, do_vcpu_op).

A Linux PVH guest does not start its secondary CPUs this way: it keeps the native path (ACPI's MADT lists
the CPUs, the boot CPU sends INIT and STARTUP through its local APIC, core/ipi.py and VcpuContext), and
takes a CPU offline by parking it in HLT with interrupts off (native_play_dead); xl's vcpu-set reaches it
through xenstore's cpu/N/availability (drivers/xen/cpu_hotplug.c). These operations serve guests that use
them (PV-style kernels, other operating systems). VCPUOP_initialise, whose HVM form takes a
vcpu_hvm_context, is not offered (-ENOSYS): nothing here needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..xen import abi

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

OPS = (abi.VCPUOP_up, abi.VCPUOP_down, abi.VCPUOP_is_up)


def vcpu_op(dom: Domain, ctx: VcpuContext, target: VcpuContext, cmd: int) -> int:
    if cmd == abi.VCPUOP_is_up:
        # a vCPU halted with interrupts off (a Linux guest's offline CPU) is down to Xen: hvm_hlt calls
        # hvm_vcpu_down, which sets _VPF_down (xen/arch/x86/hvm/hvm.c); xen_vcpu_restore relies on it
        return 1 if target.online else 0
    if cmd == abi.VCPUOP_up:
        if not target.initialised:  # Xen: -EINVAL unless the vCPU has a context to run
            return -abi.EINVAL
        if not target.up:
            target.up = True
            target.wake()
        return 0
    # VCPUOP_down: the last vCPU going down powers the domain off, as Xen's do_vcpu_op
    if not any(c.up for c in dom.vcpus if c is not target):
        dom.shutdown("poweroff", "VCPUOP_down of the last vCPU")
        ctx.ev.request_stop()
        return 0
    target.up = False
    if target is ctx:
        ctx.ev.request_stop()
    else:
        target.wake()  # out of guest code; its thread then parks it
    return 0
