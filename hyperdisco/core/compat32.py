"""The 32-bit hypercall ABI: a PVH vCPU that is not in a 64-bit code segment when it makes the call.

Xen picks the ABI per call from the vCPU's mode (docs/guest-guide/x86/hypercall-abi.rst: "The ABI for an
HVM guest depends on whether the vCPU is operating in a 64bit segment or not"; xen/arch/x86/hvm/
hypercall.c hvm_hypercall, hvm_guest_x86_mode() != 8): the number in EAX, arguments in EBX, ECX, EDX, ESI,
EDI (xen/include/public/arch-x86/xen-x86_32.h), the result in EAX, and every structure in its compat
layout (Xen's compat headers, generated from the public ones with the i386 ABI: `long`, pointers and guest
handles are 4 bytes, a uint64_t is aligned to 4).

Most structures the basic calls pass are the same in both layouts (console_io's buffer, sched_op
shutdown's reason, xen_version's strings and features, every event_channel_op structure, hvm_op's
xen_hvm_param, vcpu_op's register_vcpu_info and set_singleshot_timer, grant_table_op's map/unmap entries):
those go to the native handlers as they are. The ones that differ are translated the way Xen's compat
layer does, through a translation area (Xen's per-vCPU "xlat" area): the compat structure is read from
the guest, written in native layout to a buffer the native handler reads at XLAT_VA (an address no 32-bit
guest can name), and any output copied back in compat layout:

- XENMEM_add_to_physmap: {u16 domid, u16 size, u32 space, u32 idx, u32 gpfn} (xen_ulong_t, xen_pfn_t);
- XENMEM_memory_map: {u32 nr_entries, u32 buffer} (nr_entries is written back);
- SCHEDOP_poll: {u32 ports, u32 nr_ports, u64 timeout at offset 8};
- set_timer_op: the 64-bit timeout comes in two registers, low half first (compat set_timer_op(lo, hi));
- XENVER_platform_parameters: {u32 virt_start}, 0 for an HVM vCPU (xen/common/kernel.c);
- XENMEM_increase/decrease_reservation, populate_physmap: core/reservation.py reads the compat
  reservation and its 32-bit extent list itself.

Setting HVM_PARAM_CALLBACK_IRQ latches the domain's shared_info and vcpu_info into the layout of the
caller's mode, as Xen's hvm_latch_shinfo_size (`latch`; core/evtchn_2l.py and shared_info.py follow it).

The runstate area follows the latched layout (core/runstate.py). GNTTABOP_setup_table and copy, and
multicall entries, read their compat layouts themselves (core/gnttab_ops.py, core/misc_ops.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..engine.base import R8, R10, RAX, RBX, RCX, RDI, RDX, RSI, Vcpu
from ..xen import abi
from . import shared_info
from .memory import GuestFault, VirtualAccess

if TYPE_CHECKING:
    from .vcpu import VcpuContext

XLAT_VA = 1 << 63  # non-canonical: a 32-bit guest's arguments are below 4 GiB
XLAT_SIZE = 4096
M32 = 0xFFFFFFFF

COMPAT_ADD_TO_PHYSMAP = struct.Struct("<HHIII")
COMPAT_MEMORY_MAP = struct.Struct("<II")
COMPAT_SCHED_POLL = struct.Struct("<IIQ")
_U32 = struct.Struct("<I")

HC_SET_TIMER_OP, HC_MEMORY_OP, HC_XEN_VERSION, HC_SCHED_OP = 15, 12, 17, 29


def registers(ev: Vcpu) -> tuple[int, tuple[int, int, int, int, int], bool]:
    """(number, five arguments, compat) of the hypercall the vCPU is making now."""
    if ev.in_64bit_mode():
        # 64-bit mode: all of RAX is the number (xen/arch/x86/hvm/hypercall.c): 2^32 + 17 is none
        return ev.gpr(RAX), (ev.gpr(RDI), ev.gpr(RSI), ev.gpr(RDX), ev.gpr(R10), ev.gpr(R8)), False
    regs = (ev.gpr(RBX), ev.gpr(RCX), ev.gpr(RDX), ev.gpr(RSI), ev.gpr(RDI))
    a, b, c, d, e = (r & M32 for r in regs)
    return ev.gpr(RAX) & M32, (a, b, c, d, e), True


class XlatAccess(VirtualAccess):
    """The vCPU's guest-virtual access, plus the translation area at XLAT_VA."""

    def __init__(self, real: VirtualAccess, data: bytes) -> None:
        super().__init__(real.mem, real.translate, real.may_write)
        self.buf = bytearray(data.ljust(XLAT_SIZE, b"\0"))

    def _in_xlat(self, va: int, n: int) -> bool:
        if XLAT_VA <= va < XLAT_VA + XLAT_SIZE:
            if n < 0 or va + n > XLAT_VA + XLAT_SIZE:
                raise GuestFault("translated argument out of range")
            return True
        return False

    def read(self, va: int, n: int) -> bytes:
        if self._in_xlat(va, n):
            return bytes(self.buf[va - XLAT_VA:va - XLAT_VA + n])
        return super().read(va, n)

    def write(self, va: int, data: bytes) -> None:
        if self._in_xlat(va, len(data)):
            self.buf[va - XLAT_VA:va - XLAT_VA + len(data)] = data
        else:
            super().write(va, data)


Native = Callable[..., int]


def call(ctx: VcpuContext, nr: int, args: tuple[int, int, int, int, int], native: Native) -> int:
    """Run hypercall `nr` of a 32-bit vCPU through `native` (the 64-bit handler), translating the
    structures whose compat layout differs."""
    cmd, arg = args[0], args[1]
    va = ctx.va
    if nr == HC_SET_TIMER_OP:
        return native(ctx, args[0] | args[1] << 32, 0, 0, 0, 0)
    if nr == HC_XEN_VERSION and cmd == abi.XENVER_platform_parameters:
        va.pack(_U32, arg, 0)
        return 0
    if nr == HC_MEMORY_OP and cmd & 0x3F == abi.XENMEM_add_to_physmap:
        domid, size, space, idx, gpfn = va.unpack(COMPAT_ADD_TO_PHYSMAP, arg)
        return _via_xlat(ctx, native, args, abi.ADD_TO_PHYSMAP.pack(domid, size, space, idx, gpfn))
    if nr == HC_MEMORY_OP and cmd & 0x3F == abi.XENMEM_memory_map:
        nr_entries, buffer = va.unpack(COMPAT_MEMORY_MAP, arg)
        xlat = XlatAccess(va, abi.MEMORY_MAP.pack(nr_entries, buffer))
        ret = _run(ctx, native, args, xlat)
        va.pack(_U32, arg, abi.MEMORY_MAP.unpack_from(xlat.buf)[0])  # the count written back
        return ret
    if nr == HC_MEMORY_OP and cmd & 0x3F in (abi.XENMEM_increase_reservation, abi.XENMEM_decrease_reservation,
                                             abi.XENMEM_populate_physmap):
        return ctx.dom.reservation.memory_op(va, cmd, arg, compat=True)  # its own compat layouts
    if nr == HC_SCHED_OP and cmd == abi.SCHEDOP_poll:
        ports, nr_ports, timeout = va.unpack(COMPAT_SCHED_POLL, arg)
        return _via_xlat(ctx, native, args, abi.SCHED_POLL.pack(ports, nr_ports, timeout))
    return native(ctx, *args)


def latch(ctx: VcpuContext) -> None:
    """hvm.c's hvm_latch_shinfo_size, called as the guest sets HVM_PARAM_CALLBACK_IRQ: the domain's
    shared_info and vcpu_info take the layout of the caller's mode (32-bit: 2-level event words of 32
    bits, 1024 ports, the selector at offset 4, the wallclock at 2304), and the wallclock is rewritten in
    it when that changes."""
    ec = ctx.dom.evtchn
    compat = not ctx.ev.in_64bit_mode()
    if ec.compat_shinfo != compat:
        ec.compat_shinfo = compat
        shared_info.write_wallclock(ctx.dom)


def _via_xlat(ctx: VcpuContext, native: Native, args: tuple[int, ...], data: bytes) -> int:
    return _run(ctx, native, args, XlatAccess(ctx.va, data))


def _run(ctx: VcpuContext, native: Native, args: tuple[int, ...], xlat: XlatAccess) -> int:
    real = ctx.va
    ctx.va = xlat  # the native handler reads its argument at XLAT_VA, and the guest's buffers as usual
    try:
        return native(ctx, args[0], XLAT_VA, *args[2:])
    finally:
        ctx.va = real
