"""The smaller hypercalls a PVH domU may make, as Xen answers them: multicall, physdev_op,
SCHEDOP_watchdog and the XENMEM sub-ops besides the reservation and physmap ones. The table of every
hypercall and sub-op, with where each answer comes from in Xen, is docs/xen-abi.md.

- multicall (xen/common/multicall.c do_multicall, arch/x86/hvm/hypercall.c hvm_do_multicall_call): each
  entry {op, result, args[6]} (64 bytes; 32 from a 32-bit vCPU) is dispatched as the hypercall it names
  with args[0..4], its result written back into the entry; a multicall inside a multicall is -EINVAL (the
  nested entry's result); a fault reading an entry or writing its result ends the call with -EFAULT, the
  entries before it done.
- physdev_op (arch/x86/hvm/hypercall.c hvm_physdev_op): a PVH domU has no PIRQs and is not the hardware
  domain, so every command is -ENOSYS except map_pirq/unmap_pirq, which reach physdev.c and are refused
  by XSM_DM_PRIV (-EPERM; -ESRCH for a domain ID that names none).
- SCHEDOP_watchdog (common/sched/core.c domain_watchdog): two timers per domain; id 0 allocates one
  (its id + 1, -ENOSPC when both are taken), id N re-arms it (timeout 0 frees it), an unknown or free id
  is -EINVAL. One that fires shuts the domain down with reason "watchdog".
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..xen import abi
from .memory import GuestFault

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

HC_MULTICALL = 13
_RESULT64, _RESULT32 = struct.Struct("<Q"), struct.Struct("<I")
_DOMID = struct.Struct("<H")
# XENMEM sub-ops a PVH domU may call that answer without doing anything here (arch/x86/mm.c, common/
# memory.c): XSM_PRIV refusals of the control domain's operations
XENMEM_machine_memory_map, XENMEM_set_pod_target, XENMEM_get_pod_target = 10, 16, 17
XENMEM_claim_pages, XENMEM_get_vnumainfo = 24, 26
XENMEM_machphys_mapping = 12
# struct xen_vnuma_topology_info {domid_t domid; uint16_t pad; uint32_t nr_vnodes, nr_vcpus, nr_vmemranges;
# three guest handles in 64-bit unions}: 40 bytes in both layouts
_VNUMA_HEAD, _VNUMA_TOPOLOGY_SIZE = struct.Struct("<HH"), 40

Invoke = Callable[["VcpuContext", int, tuple[int, int, int, int, int], bool], int]


class MiscOps:
    def __init__(self, dom: Domain, invoke: Invoke) -> None:
        self.dom = dom
        self.invoke = invoke  # Hypercalls.invoke: one hypercall by number, its result
        self._in_multicall: set[int] = set()  # vCPU indices inside a multicall now
        self._watchdogs: list[threading.Timer | None] = [None] * abi.NR_DOMAIN_WATCHDOG_TIMERS
        self._lock = threading.Lock()

    # -- multicall --------------------------------------------------------------------------------------
    def multicall(self, ctx: VcpuContext, call_list: int, nr_calls: int, *_: int) -> int:
        if ctx.index in self._in_multicall:
            return -abi.EINVAL  # "Multicall reentry is disallowed."
        nr_calls &= 0xFFFFFFFF
        compat = not ctx.ev.in_64bit_mode()
        entry = abi.MULTICALL_ENTRY_COMPAT if compat else abi.MULTICALL_ENTRY
        result = _RESULT32 if compat else _RESULT64
        mask = 0xFFFFFFFF if compat else (1 << 64) - 1
        self._in_multicall.add(ctx.index)
        try:
            for i in range(nr_calls):
                if self.dom.finished:
                    break  # shut down by an entry: Xen's mc_exit leaves the rest undone
                at = call_list + i * entry.size
                try:
                    op, _res, a0, a1, a2, a3, a4, _a5 = ctx.va.unpack(entry, at)
                except GuestFault:
                    return -abi.EFAULT
                ret = self.invoke(ctx, op, (a0, a1, a2, a3, a4), compat)
                try:
                    ctx.va.pack(result, at + result.size, ret & mask)
                except GuestFault:
                    return -abi.EFAULT
        finally:
            self._in_multicall.discard(ctx.index)
        return 0

    # -- physdev_op -------------------------------------------------------------------------------------
    def physdev_op(self, ctx: VcpuContext, cmd: int, arg: int, *_: int) -> int:
        cmd &= 0xFFFFFFFF
        if cmd not in (abi.PHYSDEVOP_map_pirq, abi.PHYSDEVOP_unmap_pirq):
            return -abi.ENOSYS
        (domid,) = ctx.va.unpack(_DOMID, arg)  # copy_from_guest first: a bad pointer is -EFAULT
        if domid != abi.DOMID_SELF and domid >= abi.DOMID_FIRST_RESERVED:
            return -abi.ESRCH
        return -abi.EPERM

    # -- SCHEDOP_watchdog -------------------------------------------------------------------------------
    def watchdog(self, ctx: VcpuContext, arg: int) -> int:
        wid, timeout = ctx.va.unpack(abi.SCHED_WATCHDOG, arg)
        if wid > abi.NR_DOMAIN_WATCHDOG_TIMERS:
            return -abi.EINVAL
        with self._lock:
            if wid == 0:
                for i, t in enumerate(self._watchdogs):
                    if t is None:
                        self._arm(i, timeout)
                        return i + 1
                return -abi.ENOSPC
            i = wid - 1
            old = self._watchdogs[i]
            if old is None:
                return -abi.EINVAL
            old.cancel()
            if timeout == 0:
                self._watchdogs[i] = None
            else:
                self._arm(i, timeout)
            return 0

    def _arm(self, i: int, timeout: int) -> None:
        t = threading.Timer(timeout, self._fired, args=(i,))
        t.daemon = True
        self._watchdogs[i] = t
        t.start()

    def _fired(self, i: int) -> None:
        with self._lock:
            if self._watchdogs[i] is None or self.dom.finished:
                return
        self.dom.log(f"watchdog timer {i + 1} fired")
        self.dom.shutdown("watchdog", "SCHEDOP_watchdog timer fired")

    def close(self) -> None:
        with self._lock:
            for t in self._watchdogs:
                if t is not None:
                    t.cancel()
            self._watchdogs = [None] * abi.NR_DOMAIN_WATCHDOG_TIMERS

    # -- XENMEM sub-ops besides the reservation ones ----------------------------------------------------
    def memory_op(self, ctx: VcpuContext, op: int, arg: int) -> int | None:
        """The answer for XENMEM sub-op `op` if this module gives it, else None."""
        if op == XENMEM_machphys_mapping:
            return -abi.ENOSYS  # hvm_memory_op: refused for HVM/PVH before do_memory_op
        if op in (XENMEM_machine_memory_map, XENMEM_claim_pages):
            return -abi.EPERM  # xsm_machine_memory_map / xsm_claim_pages (XSM_PRIV)
        if op in (XENMEM_set_pod_target, XENMEM_get_pod_target):
            # struct xen_pod_target {uint64 target_pages, tot_pages, pod_cache_pages, pod_entries;
            # domid_t domid}: the domain is looked up (-ESRCH), then XSM_PRIV refuses it
            (domid,) = ctx.va.unpack(_DOMID, arg + 32)
            if domid != abi.DOMID_SELF and domid >= abi.DOMID_FIRST_RESERVED:
                return -abi.ESRCH
            return -abi.EPERM
        if op == XENMEM_get_vnumainfo:
            # struct xen_vnuma_topology_info {domid_t domid; ...}: XSM_TARGET lets a domain ask about
            # itself; a domain built without vNUMA (every domain here) is -EOPNOTSUPP
            domid, pad = ctx.va.unpack(_VNUMA_HEAD, arg)
            ctx.va.read(arg, _VNUMA_TOPOLOGY_SIZE)  # the whole structure is copied in first
            if pad:
                return -abi.EINVAL
            if domid != abi.DOMID_SELF and domid != self.dom.domid:
                return -abi.ESRCH if domid >= abi.DOMID_FIRST_RESERVED else -abi.EPERM
            return -abi.EOPNOTSUPP
        return None
