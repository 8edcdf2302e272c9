"""The pages a domain shares with the hypervisor for events and time (xen/include/public/xen.h):
struct shared_info (event-channel bits, the wallclock) and each vCPU's struct vcpu_info (upcall flags,
and the vcpu_time_info that the guest's pvclock reads: arch-x86/xen.h, "PV time")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..xen import abi

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext


def map_shared_info(dom: Domain, gpa: int) -> None:
    """XENMAPSPACE_shared_info at `gpa`: a cleared page whose vcpu_info slots become the first vCPUs'
    (until they register their own), with the wallclock at boot and every vCPU's time."""
    dom.memory.fill(gpa, abi.PAGE)
    dom.evtchn.shared_info = gpa
    for ctx in dom.vcpus:
        if ctx.index < abi.XEN_LEGACY_MAX_VCPUS and ctx.index not in dom.evtchn.vcpu_info:
            dom.evtchn.vcpu_info[ctx.index] = gpa + ctx.index * abi.VCPU_INFO_SIZE
    write_wallclock(dom)
    for ctx in dom.vcpus:
        update_time(dom, ctx)


def write_wallclock(dom: Domain) -> None:
    """The wallclock at boot in shared_info, in the layout the domain latched (64- or 32-bit)."""
    gpa = dom.evtchn.shared_info
    if gpa is None:
        return
    sec, nsec = dom.clock.wallclock_at_zero()
    if dom.evtchn.compat_shinfo:
        dom.memory.pack(abi.COMPAT_WALLCLOCK, gpa + abi.COMPAT_SI_WC_VERSION, 2, sec & 0xFFFFFFFF, nsec)
        dom.memory.set_u32(gpa + abi.COMPAT_SI_WC_SEC_HI, sec >> 32)
    else:
        dom.memory.pack(abi.WALLCLOCK, gpa + abi.SI_WC_VERSION, 2, sec & 0xFFFFFFFF, nsec, sec >> 32)


def move_vcpu_info(dom: Domain, vcpu: int, gpa: int) -> None:
    """VCPUOP_register_vcpu_info: the vCPU's vcpu_info moves to `gpa`, its content with it."""
    old = dom.evtchn.vcpu_info.get(vcpu)
    data = dom.memory.read(old, abi.VCPU_INFO_SIZE) if old is not None else bytes(abi.VCPU_INFO_SIZE)
    dom.memory.write(gpa, data)
    dom.evtchn.vcpu_info[vcpu] = gpa
    update_time(dom, dom.vcpus[vcpu])


def update_time(dom: Domain, ctx: VcpuContext) -> None:
    """Publish pvclock parameters in the vCPU's vcpu_info (version odd while updating)."""
    vi = dom.evtchn.vcpu_info.get(ctx.index)
    if vi is None:
        return
    at = vi + abi.VI_TIME
    mem = dom.memory
    ver = (mem.u32(at) + 1) | 1
    mem.set_u32(at, ver)
    tsc = dom.engine.guest_tsc()
    mem.pack(abi.VCPU_TIME_INFO, at, ver, 0, tsc, dom.clock.ns_at(tsc), dom.clock.mul, dom.clock.shift,
             pvclock_flags(dom))
    mem.set_u32(at, ver + 1)


def pvclock_flags(dom: Domain) -> int:
    """XEN_PVCLOCK_TSC_STABLE_BIT tells the guest that pvclock readings on different vCPUs never go
    backwards, so it may skip its own cross-CPU clamp (Linux's pvclock_clocksource_read keeps a shared
    last_value otherwise). A one-vCPU domain trivially has that. With several, TCG's rdtsc is an unordered
    host rdtsc (a guest lfence translates to nothing on an x86 host), and Linux's boot-time check measured
    warps of ~700 cycles between two vCPUs on this host (check_tsc_sync_source: "TSC warped randomly
    between CPUs"), so an SMP domain does not claim it, as Xen does not when it cannot guarantee it."""
    return abi.XEN_PVCLOCK_TSC_STABLE_BIT if len(dom.vcpus) == 1 else 0
