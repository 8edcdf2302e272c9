"""Hypercall dispatch and the hypercalls a PVH Linux guest makes to boot and run.

Arguments arrive in RDI, RSI, RDX, R10, R8 with the number in RAX (xen/include/public/arch-x86/xen-x86_64.h),
or from a vCPU outside 64-bit mode in EBX, ECX, EDX, ESI, EDI with compat structures (compat32.py);
the result goes back in RAX as a value or a negated Xen errno. Every pointer is a guest-virtual address
and is read through `VirtualAccess`, which faults (-EFAULT) on anything the guest does not own. Every
index and count is checked before use. What is not built yet answers -ENOSYS and is logged once. The
guest decides how often these lines happen, so they go through a rate limiter (core/ratelimit.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..xen import abi
from . import compat32, evtchn_ops, gnttab_ops, misc_ops, runstate, shared_info, smp
from .evtchn_abi import EvtchnError
from .memory import PAGE, GuestFault
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

MAX_CONSOLE_WRITE = 16 * 1024
GRANT_FRAMES_MAX = 32
MAX_GRANT_OPS = 1 << 16  # ops in one GNTTABOP_map/unmap_grant_ref call
XEN_VERSION = (4, 17)
_U64 = struct.Struct("<Q")
# hvm/params.h HVM_PARAM_IOREQ_PFN, BUFIOREQ_PFN, BUFIOREQ_EVTCHN: the device model's, never the guest's
# (xen/arch/x86/hvm/hvm.c hvm_allow_get_param: -EPERM when the domain asks about itself)
DM_ONLY_PARAMS = frozenset({5, 6, 26})
_DOMID = struct.Struct("<H")
Handler = Callable[["VcpuContext", int, int, int, int, int], int]


class Hypercalls:
    def __init__(self, domain: Domain) -> None:
        self.dom = domain
        self.table: dict[int, Handler] = {
            17: self.xen_version, 18: self.console_io, 12: self.memory_op, 34: self.hvm_op,
            24: self.vcpu_op, 32: self.event_channel_op, 29: self.sched_op, 20: self.grant_table_op,
            15: self.set_timer_op, 21: self.vm_assist,
        }
        self.misc = misc_ops.MiscOps(domain, self.invoke)  # multicall, physdev_op, watchdog, XENMEM extras
        self.table.update({13: self.misc.multicall, 33: self.misc.physdev_op})
        self.unknown_logged: set[tuple[int, int]] = set()
        self.limit = RateLimiter()  # this domain's log lines, by kind

    def dispatch(self, ctx: VcpuContext) -> None:
        ev = ctx.ev
        nr, args, compat = compat32.registers(ev)  # the 32-bit ABI outside a 64-bit code segment
        ret = self.invoke(ctx, nr, args, compat)
        ev.set_gpr(0, ret & 0xFFFFFFFF if compat else ret)

    def invoke(self, ctx: VcpuContext, nr: int, args: tuple[int, int, int, int, int], compat: bool) -> int:
        """Hypercall `nr` with `args` (from the registers, or a multicall entry): its result."""
        name = abi.HYPERCALLS.get(nr, "unknown")  # never key state by a guest-chosen number
        self.dom.stats[f"hypercall.{name}"] += 1
        fn = self.table.get(nr)
        if fn is None:
            return self.unimplemented(nr, args[0])
        try:
            return compat32.call(ctx, nr, args, fn) if compat else fn(ctx, *args)
        except GuestFault as exc:
            self.limit.log(self.dom.log, "bad buffer", f"{name}: bad guest buffer: {exc}")
            return -abi.EFAULT
        except EvtchnError as exc:
            return -exc.errno

    def unimplemented(self, nr: int, cmd: int) -> int:
        key = (nr, cmd & 0xFFFF) if nr in abi.HYPERCALLS and cmd < 64 else (-1, -1)
        if key not in self.unknown_logged:
            self.unknown_logged.add(key)
            self.limit.log(self.dom.log, "unimplemented",
                           f"hypercall {abi.HYPERCALLS.get(nr, nr)} cmd {cmd} not implemented (-ENOSYS)")
        return -abi.ENOSYS

    def _own_domid(self, domid: int) -> bool:
        return domid in (abi.DOMID_SELF, self.dom.domid)

    # -- xen_version ------------------------------------------------------------------------------------
    def xen_version(self, ctx: VcpuContext, cmd: int, arg: int, *_: int) -> int:
        va = ctx.va
        if cmd == abi.XENVER_version:
            return (XEN_VERSION[0] << 16) | XEN_VERSION[1]
        if cmd == abi.XENVER_extraversion:
            va.write(arg, b"-hyperdisco".ljust(16, b"\0"))
        elif cmd == abi.XENVER_capabilities:
            va.write(arg, b"hvm-3.0-x86_64".ljust(1024, b"\0"))
        elif cmd == abi.XENVER_changeset:
            va.write(arg, b"hyperdisco".ljust(64, b"\0"))
        elif cmd == abi.XENVER_compile_info:
            va.write(arg, b"\0" * (64 + 16 + 32 + 32))
        elif cmd == abi.XENVER_get_features:
            (idx,) = va.unpack(abi.EVTCHN_PORT, arg)
            if idx != 0:  # xen/common/kernel.c: one submap (XENFEAT_NR_SUBMAPS), any other is -EINVAL
                return -abi.EINVAL
            bits = (1 << abi.XENFEAT_writable_page_tables | 1 << abi.XENFEAT_auto_translated_physmap
                    | 1 << abi.XENFEAT_hvm_callback_vector | 1 << abi.XENFEAT_hvm_safe_pvclock)
            va.pack(abi.EVTCHN_PORT, arg + 4, bits)
        elif cmd == abi.XENVER_pagesize:
            return -abi.EINVAL if arg else PAGE  # kernel.c: a non-null handle is -EINVAL
        elif cmd == abi.XENVER_platform_parameters:
            va.write(arg, bytes(8))  # xen/common/kernel.c: virt_start is 0 for an HVM/PVH vCPU
        elif cmd == abi.XENVER_guest_handle:
            va.write(arg, self.dom.uuid)
        elif cmd == abi.XENVER_commandline:
            va.write(arg, b"\0" * 1024)
        else:
            return self.unimplemented(17, cmd)
        return 0

    # -- console_io -------------------------------------------------------------------------------------
    def console_io(self, ctx: VcpuContext, cmd: int, count: int, buf: int, *_: int) -> int:
        if cmd == abi.CONSOLEIO_write:
            count &= 0xFFFFFFFF
            if count > MAX_CONSOLE_WRITE:
                return -abi.EINVAL
            self.dom.console_output(ctx.va.read(buf, count))
            return count
        if cmd == abi.CONSOLEIO_read:
            return 0
        return -abi.ENOSYS  # xen/drivers/char/console.c do_console_io: an unknown command

    # -- memory_op --------------------------------------------------------------------------------------
    def memory_op(self, ctx: VcpuContext, cmd: int, arg: int, *_: int) -> int:
        dom, va = self.dom, ctx.va
        op = cmd & 0x3F  # bits above MEMOP_CMD_MASK carry continuation state
        if op == abi.XENMEM_add_to_physmap:
            domid, size, space, idx, gpfn = va.unpack(abi.ADD_TO_PHYSMAP, arg)
            if not self._own_domid(domid):
                return -abi.EPERM
            if space == abi.XENMAPSPACE_shared_info:
                if idx != 0 or not dom.is_ram(gpfn << 12):
                    return -abi.EINVAL
                shared_info.map_shared_info(dom, gpfn << 12)
                return 0
            if space == abi.XENMAPSPACE_grant_table:
                if idx >= GRANT_FRAMES_MAX or gpfn >= 1 << 40:
                    return -abi.EINVAL
                return dom.grants.map_frame(idx, gpfn << 12, ctx)
            return -abi.EOPNOTSUPP
        if op == abi.XENMEM_memory_map:
            nr, buf = va.unpack(abi.MEMORY_MAP, arg)
            # xen/arch/x86/mm.c: as many entries as the caller's buffer holds, nr_entries says how many
            entries = dom.e820()[:nr]
            va.write(buf, b"".join(abi.E820_ENTRY.pack(a, s, t) for a, s, t in entries))
            va.pack(abi.EVTCHN_PORT, arg, len(entries))
            return 0
        if op in (abi.XENMEM_increase_reservation, abi.XENMEM_decrease_reservation,
                  abi.XENMEM_populate_physmap):
            return dom.reservation.memory_op(va, cmd, arg)  # core/reservation.py
        if op in (abi.XENMEM_current_reservation, abi.XENMEM_maximum_reservation):
            (domid,) = va.unpack(_DOMID, arg)
            if not self._own_domid(domid):
                return -abi.EPERM
            r = dom.reservation
            return r.tot_pages if op == abi.XENMEM_current_reservation else r.max_pages
        if op in (abi.XENMEM_maximum_ram_page, abi.XENMEM_maximum_gpfn):
            return dom.memory.ram_bytes // PAGE - 1
        ret = self.misc.memory_op(ctx, op, arg)  # core/misc_ops.py
        return self.unimplemented(12, op) if ret is None else ret

    # -- hvm_op -----------------------------------------------------------------------------------------
    def hvm_op(self, ctx: VcpuContext, cmd: int, arg: int, *_: int) -> int:
        dom, va = self.dom, ctx.va
        if cmd in (abi.HVMOP_set_param, abi.HVMOP_get_param):
            domid, index, value = va.unpack(abi.HVM_PARAM, arg)
            if not self._own_domid(domid):
                return -abi.EPERM
            if index >= abi.HVM_NR_PARAMS:
                return -abi.EINVAL
            if cmd == abi.HVMOP_set_param:
                if index != abi.HVM_PARAM_CALLBACK_IRQ:
                    return -abi.EPERM  # the other parameters are the toolstack's to set
                kind, vector = value >> 56, value & 0xFF
                if value and (kind != abi.HVM_PARAM_CALLBACK_TYPE_VECTOR or vector < 0x10):
                    return -abi.EINVAL
                dom.callback_vector = vector if value else None
                dom.params[index] = value
                compat32.latch(ctx)  # hvm.c: the shared_info layout follows the caller's mode
                return 0
            if index in DM_ONLY_PARAMS:
                return -abi.EPERM
            va.pack(abi.HVM_PARAM, arg, domid, index, dom.params.get(index, 0))
            return 0
        if cmd == abi.HVMOP_pagetable_dying:
            return 0
        return self.unimplemented(34, cmd)

    # -- vm_assist --------------------------------------------------------------------------------------
    def vm_assist(self, ctx: VcpuContext, cmd: int, kind: int, *_: int) -> int:
        return runstate.vm_assist(self.dom, cmd & 0xFFFFFFFF, kind & 0xFFFFFFFF)

    # -- vcpu_op ----------------------------------------------------------------------------------------
    def vcpu_op(self, ctx: VcpuContext, cmd: int, vcpuid: int, arg: int, *_: int) -> int:
        dom, va = self.dom, ctx.va
        vcpuid &= 0xFFFFFFFF
        if vcpuid >= len(dom.vcpus):
            return -abi.ENOENT  # xen/common/domain.c do_vcpu_op: no such vCPU (domain_vcpu() is NULL)
        target = dom.vcpus[vcpuid]
        if cmd in smp.OPS:
            return smp.vcpu_op(dom, ctx, target, cmd)
        if cmd == abi.VCPUOP_register_vcpu_info:
            mfn, offset, _rsvd = va.unpack(abi.REGISTER_VCPU_INFO, arg)
            gpa = (mfn << 12) + offset
            # Xen's map_vcpu_info: inside the page, once per vCPU, on itself or on a vCPU that is down;
            # 8-byte aligned (the event words in it are changed atomically: core/atomic.py)
            if offset + abi.VCPU_INFO_SIZE > PAGE or offset % 8 or not dom.is_ram(gpa):
                return -abi.EINVAL
            # (down: also halted with interrupts off, as hvm_hlt takes such a vCPU down in Xen)
            if target.vcpu_info_registered or (target is not ctx and target.online):
                return -abi.EINVAL
            shared_info.move_vcpu_info(dom, vcpuid, gpa)
            target.vcpu_info_registered = True
            return 0
        if cmd == abi.VCPUOP_register_runstate_memory_area:
            (addr,) = va.unpack(abi.REGISTER_RUNSTATE_AREA, arg)
            return runstate.register(ctx, target, addr & (0xFFFFFFFF if dom.evtchn.compat_shinfo else -1))
        if cmd == abi.VCPUOP_get_runstate_info:
            fmt = abi.RUNSTATE_INFO if ctx.ev.in_64bit_mode() else abi.COMPAT_RUNSTATE_INFO
            va.pack(fmt, arg, *runstate.get_info(target))
            return 0
        if cmd in (abi.VCPUOP_set_singleshot_timer, abi.VCPUOP_stop_singleshot_timer) and target is not ctx:
            return -abi.EINVAL  # Xen: a vCPU's single-shot timer is its own to set
        if cmd == abi.VCPUOP_set_singleshot_timer:
            timeout, flags = va.unpack(abi.SINGLESHOT_TIMER, arg)
            if flags & abi.VCPU_SSHOTTMR_future and timeout < dom.clock.now_ns():
                return -abi.ETIME
            ctx.set_timer(timeout)
            return 0
        if cmd == abi.VCPUOP_stop_singleshot_timer:
            ctx.set_timer(None)
            return 0
        if cmd == abi.VCPUOP_set_periodic_timer:
            (period,) = va.unpack(_U64, arg)
            if period < 1_000_000:
                return -abi.EINVAL
            target.periodic_ns = period
            target.periodic_next = dom.clock.now_ns() + period
            return 0
        if cmd == abi.VCPUOP_stop_periodic_timer:
            target.periodic_ns = None
            return 0
        return self.unimplemented(24, cmd)

    # -- event_channel_op -------------------------------------------------------------------------------
    def event_channel_op(self, ctx: VcpuContext, cmd: int, arg: int, *_: int) -> int:
        return evtchn_ops.event_channel_op(self.dom, ctx, cmd, arg)

    # -- sched_op ---------------------------------------------------------------------------------------
    def sched_op(self, ctx: VcpuContext, cmd: int, arg: int, *_: int) -> int:
        dom, va = self.dom, ctx.va
        if cmd == abi.SCHEDOP_yield:
            ctx.ev.kick()
            return 0
        if cmd == abi.SCHEDOP_block:
            ctx.block()
            return 0
        if cmd == abi.SCHEDOP_shutdown:
            (reason,) = va.unpack(abi.EVTCHN_PORT, arg)
            if reason not in abi.SHUTDOWN_NAMES:
                return -abi.EINVAL
            if reason == abi.SHUTDOWN_suspend and dom.on_suspend is not None:
                return dom.on_suspend(ctx)  # save -c: a checkpoint, the domain carries on
            dom.shutdown(abi.SHUTDOWN_NAMES[reason], "SCHEDOP_shutdown")
            ctx.ev.request_stop()
            return 0
        if cmd == abi.SCHEDOP_poll:
            ports_va, nr, timeout = va.unpack(abi.SCHED_POLL, arg)
            if nr > 128:
                return -abi.EINVAL
            ports = [int.from_bytes(va.read(ports_va + 4 * i, 4), "little") for i in range(nr)]
            if not all(dom.evtchn.valid(p) for p in ports):
                return -abi.EINVAL  # sched/core.c do_poll -> evtchn_port_poll: port >= max_evtchns
            if dom.evtchn.any_pending(ports):
                return 0
            ctx.block(poll=ports, timeout_ns=timeout or None)
            return 0
        if cmd == abi.SCHEDOP_shutdown_code:
            return 0
        if cmd == abi.SCHEDOP_watchdog:
            return self.misc.watchdog(ctx, arg)
        if cmd == abi.SCHEDOP_remote_shutdown:
            (target,) = va.unpack(_DOMID, arg)
            # sched/core.c: no such domain is -ESRCH (DOMID_SELF and the other reserved IDs name none),
            # any other is refused by xsm_schedop_shutdown(XSM_DM_PRIV): a guest is nobody's device model
            return -abi.ESRCH if target >= abi.DOMID_FIRST_RESERVED else -abi.EPERM
        return self.unimplemented(29, cmd)

    # -- grant_table_op ---------------------------------------------------------------------------------
    def grant_table_op(self, ctx: VcpuContext, cmd: int, arg: int, count: int, *_: int) -> int:
        va = ctx.va
        if count != 1 and cmd in (abi.GNTTABOP_query_size, abi.GNTTABOP_setup_table):
            return -abi.EINVAL
        if cmd == abi.GNTTABOP_query_size:
            d, _nr, _max, _st = va.unpack(abi.GNTTAB_QUERY_SIZE, arg)
            if not self._own_domid(d):
                # grant_table.c gnttab_query_size: another domain that exists (domain 0 always does) is
                # refused by xsm_grant_query_size(XSM_TARGET); one that does not is bad_domain
                status = abi.GNTST_permission_denied if d == 0 else abi.GNTST_bad_domain
                va.pack(abi.GNTTAB_QUERY_SIZE, arg, d, 0, 0, status)
                return 0
            nr_frames = len(self.dom.grant_frames)
            va.pack(abi.GNTTAB_QUERY_SIZE, arg, d, nr_frames, GRANT_FRAMES_MAX, abi.GNTST_okay)
            return 0
        if cmd in gnttab_ops.OPS:
            return gnttab_ops.grant_table_op(self.dom, ctx, cmd, arg, count)  # core/gnttab_ops.py
        if cmd == abi.GNTTABOP_map_grant_ref:
            return self._map_grant_refs(ctx, arg, count)
        if cmd == abi.GNTTABOP_unmap_grant_ref:
            return self._unmap_grant_refs(ctx, arg, count)
        return self.unimplemented(20, cmd)

    def _map_grant_refs(self, ctx: VcpuContext, arg: int, count: int) -> int:
        """GNTTABOP_map_grant_ref (grant_table.h): each op maps another domain's granted page at the guest
        physical address host_addr (GNTMAP_host_map; an auto-translated guest never passes a PTE), status
        and handle written back per op. Only other domain processes' grants (through domain 0)."""
        va, remote = ctx.va, self.dom.remote_grants
        count &= 0xFFFFFFFF
        if count > MAX_GRANT_OPS:
            return -abi.EINVAL
        for i in range(count):
            at = arg + i * abi.GNTTAB_MAP_GRANT_REF.size
            host_addr, flags, ref, d, _st, _h, _bus = va.unpack(abi.GNTTAB_MAP_GRANT_REF, at)
            handle = 0
            if not flags & (abi.GNTMAP_host_map | abi.GNTMAP_device_map):
                status = abi.GNTST_bad_gntref  # grant_table.c map_grant_ref: "Bad flags in grant map op"
            elif flags & (abi.GNTMAP_device_map | abi.GNTMAP_application_map | abi.GNTMAP_contains_pte):
                status = abi.GNTST_general_error  # ...then, for an HVM/PVH domain, no device mapping
            elif remote is None or self._own_domid(d) or d >= abi.DOMID_FIRST_RESERVED:
                status = abi.GNTST_bad_domain
            elif d == 0:
                # domain 0 exists but grants nothing (its backends map, never lend): as Xen answers for a
                # one-frame table with no entry granted (grant_table.c map_grant_ref)
                status = abi.GNTST_bad_gntref if ref >= abi.ENTRIES_PER_FRAME else abi.GNTST_general_error
            else:
                status, handle = remote.map(ctx, d, ref, flags, host_addr)
            va.pack(abi.GNTTAB_MAP_GRANT_REF, at, host_addr, flags, ref, d, status, handle, 0)
        return 0

    def _unmap_grant_refs(self, ctx: VcpuContext, arg: int, count: int) -> int:
        """GNTTABOP_unmap_grant_ref (grant_table.h): ends mappings by handle (host_addr checked if not 0)."""
        va, remote = ctx.va, self.dom.remote_grants
        count &= 0xFFFFFFFF
        if count > MAX_GRANT_OPS:
            return -abi.EINVAL
        for i in range(count):
            at = arg + i * abi.GNTTAB_UNMAP_GRANT_REF.size
            host_addr, bus, handle, _st = va.unpack(abi.GNTTAB_UNMAP_GRANT_REF, at)
            status = abi.GNTST_bad_handle if remote is None else remote.unmap(ctx, handle, host_addr)
            va.pack(abi.GNTTAB_UNMAP_GRANT_REF, at, host_addr, bus, handle, status)
        return 0

    # -- set_timer_op -----------------------------------------------------------------------------------
    def set_timer_op(self, ctx: VcpuContext, timeout: int, *_: int) -> int:
        ctx.set_timer(timeout or None)
        return 0
