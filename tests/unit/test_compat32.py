"""The 32-bit hypercall ABI (core/compat32.py): a vCPU outside a 64-bit code segment passes EAX, EBX, ECX,
EDX, ESI, EDI and compat structures; the result comes back in EAX. Through the harness (as the engine
would call), and from hand-assembled 32-bit code running on the tcg engine."""

from __future__ import annotations

import struct

from unit_support import SCRATCH_VA, DomainHarness, make_elf

from hyperdisco.core.clock import Clock
from hyperdisco.core.compat32 import COMPAT_ADD_TO_PHYSMAP, COMPAT_MEMORY_MAP, COMPAT_SCHED_POLL
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import parse_kernel
from hyperdisco.xen import abi

SHINFO_GPFN = 0x300


def test_registers_and_result_width(dh: DomainHarness) -> None:
    buf = SCRATCH_VA
    dh.dom.memory.write(buf, b"hi32\n")
    # the upper halves of the registers are not part of a 32-bit call
    assert dh.call("console_io", (7 << 32) | abi.CONSOLEIO_write, (1 << 40) | 5, buf, compat=True) == 5
    assert b"".join(dh.output) == b"hi32\n"
    assert dh.call("xen_version", abi.XENVER_version, compat=True) == (4 << 16) | 17
    assert dh.call("console_io", 99, 0, 0, compat=True) == -abi.ENOSYS  # console.c: unknown command
    assert dh.ctx.ev.gpr(0) == (-abi.ENOSYS) & 0xFFFFFFFF  # EAX, zero-extended
    # the same registers from a 64-bit vCPU are not the arguments (RDI... are)
    assert dh.call("console_io", 99, 0, 0) == -abi.ENOSYS


def test_platform_parameters_is_four_bytes(dh: DomainHarness) -> None:
    at = dh.put(struct.Struct("<Q"), 0x1111111122222222)
    assert dh.call("xen_version", abi.XENVER_platform_parameters, at, compat=True) == 0
    assert dh.dom.memory.read(at, 8) == b"\0\0\0\0" + b"\x11" * 4  # virt_start 0 for HVM, 4 bytes


def test_add_to_physmap_compat_layout(dh: DomainHarness) -> None:
    arg = dh.put(COMPAT_ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, SHINFO_GPFN)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg, compat=True) == 0
    assert dh.dom.evtchn.shared_info == SHINFO_GPFN << 12
    bad = dh.put(COMPAT_ADD_TO_PHYSMAP, 7, 0, abi.XENMAPSPACE_shared_info, 0, SHINFO_GPFN, at=SCRATCH_VA + 64)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, bad, compat=True) == -abi.EPERM
    # a struct that runs off the guest's memory is -EFAULT, through the translation as natively
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, (32 << 20) - 8, compat=True) == -abi.EFAULT


def test_memory_map_compat_layout(dh: DomainHarness) -> None:
    buf = 0x210000
    arg = dh.put(COMPAT_MEMORY_MAP, 128, buf)
    assert dh.call("memory_op", abi.XENMEM_memory_map, arg, compat=True) == 0
    n = dh.dom.memory.u32(arg)
    assert n == len(dh.dom.e820())
    assert dh.dom.memory.u32(arg + 4) == buf  # the handle is left as it was
    got = [abi.E820_ENTRY.unpack(dh.dom.memory.read(buf + i * 20, 20)) for i in range(n)]
    assert got == [tuple(e) for e in dh.dom.e820()]
    dh.put(COMPAT_MEMORY_MAP, 1, buf)  # arch/x86/mm.c: a short buffer gets what it holds
    assert dh.call("memory_op", abi.XENMEM_memory_map, arg, compat=True) == 0
    assert dh.dom.memory.u32(arg) == 1


def test_event_channels_and_poll(dh: DomainHarness) -> None:
    arg = dh.put(abi.EVTCHN_ALLOC_UNBOUND, abi.DOMID_SELF, abi.DOMID_SELF, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_alloc_unbound, arg, compat=True) == 0
    port = dh.dom.memory.u32(arg + 4)
    assert port > 0
    send = dh.put(struct.Struct("<I"), port, at=SCRATCH_VA + 0x100)
    assert dh.call("event_channel_op", abi.EVTCHNOP_send, send, compat=True) == 0  # unbound: dropped
    bad = dh.put(struct.Struct("<I"), 5000, at=SCRATCH_VA + 0x100)
    assert dh.call("event_channel_op", abi.EVTCHNOP_send, bad, compat=True) == -abi.EINVAL
    # SCHEDOP_poll's compat layout: ports (4 bytes), nr_ports, then the 64-bit timeout at offset 8
    poll = dh.put(COMPAT_SCHED_POLL, SCRATCH_VA + 0x100, 200, 0, at=SCRATCH_VA + 0x200)
    assert dh.call("sched_op", abi.SCHEDOP_poll, poll, compat=True) == -abi.EINVAL  # nr_ports > 128


def test_set_timer_op_two_halves(dh: DomainHarness) -> None:
    assert dh.call("set_timer_op", 0x89ABCDEF, 0x01234567, compat=True) == 0
    assert dh.ctx.timer_ns == 0x0123456789ABCDEF


def test_shutdown_compat(dh: DomainHarness) -> None:
    arg = dh.put(struct.Struct("<I"), abi.SHUTDOWN_poweroff)
    assert dh.call("sched_op", abi.SCHEDOP_shutdown, arg, compat=True) == 0
    assert dh.dom.outcome == "poweroff"


# -- 32-bit guest code on the tcg engine ----------------------------------------------------------------
def test_32bit_guest_console_and_shutdown(engine: TcgEngine, clock: Clock) -> None:
    """Protected mode, paging off, never long mode: console_io, xen_version, add_to_physmap of the shared
    info page and SCHEDOP_shutdown, all through the 32-bit ABI and compat layouts."""
    base = 0x1000000
    msg_at, physmap_at, reason_at = base + 0x200, base + 0x240, base + 0x260
    code = (b"\xb8\x12\x00\x00\x00"  # mov eax, 18 (console_io)
            b"\x31\xdb"  # xor ebx, ebx (CONSOLEIO_write)
            b"\xb9\x0b\x00\x00\x00"  # mov ecx, 11
            b"\xba" + struct.pack("<I", msg_at)  # mov edx, msg
            + b"\x0f\x01\xc1"  # vmcall
            b"\xb8\x11\x00\x00\x00\x31\xdb\x0f\x01\xc1"  # mov eax, 17; xor ebx, ebx; vmcall (XENVER_version)
            b"\xe6\xe9"  # out 0xe9, al: its low byte
            b"\xb8\x0c\x00\x00\x00"  # mov eax, 12 (memory_op)
            b"\xbb\x07\x00\x00\x00"  # mov ebx, XENMEM_add_to_physmap
            b"\xb9" + struct.pack("<I", physmap_at)  # mov ecx, &xatp (compat layout)
            + b"\x0f\x01\xc1"
            b"\x04\x30\xe6\xe9"  # add al, '0'; out 0xe9, al: '0' when it worked
            b"\xb8\x1d\x00\x00\x00"  # mov eax, 29 (sched_op)
            b"\xbb\x02\x00\x00\x00"  # mov ebx, SCHEDOP_shutdown
            b"\xb9" + struct.pack("<I", reason_at)  # mov ecx, &reason
            + b"\x0f\x01\xc1"
            b"\xf4")
    image = code.ljust(0x200, b"\x90") + b"from 32-bit".ljust(0x40, b"\0")
    image += COMPAT_ADD_TO_PHYSMAP.pack(abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, SHINFO_GPFN)
    image = image.ljust(0x260, b"\0") + struct.pack("<I", abi.SHUTDOWN_poweroff)
    out: list[bytes] = []
    dom = Domain(2, DomainConfig("c32", parse_kernel(make_elf(code=image)), None, "", 32), engine, clock,
                 out.append, lambda _m: None)
    for _ in range(50):
        if dom.finished:
            break
        dom.vcpus[0].step()
    assert b"".join(out) == b"from 32-bit" + bytes([17]) + b"0"
    assert dom.evtchn.shared_info == SHINFO_GPFN << 12
    assert dom.stats["hypercall.console_io"] == 1 and dom.stats["hypercall.memory_op"] == 1
    assert dom.outcome == "poweroff" and dom.outcome_detail == "SCHEDOP_shutdown"
    dom.close()


# -- the 32-bit shared_info layout (hvm_latch_shinfo_size) --------------------------------------------------
def _latched_with_shared_info(dh: DomainHarness) -> int:
    arg = dh.put(COMPAT_ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, SHINFO_GPFN)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg, compat=True) == 0
    si = SHINFO_GPFN << 12
    assert dh.dom.memory.u32(si + abi.SI_WC_VERSION) == 2  # the native layout until the latch
    callback = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ,
                      abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | 0xF3, at=SCRATCH_VA + 0x300)
    assert dh.call("hvm_op", abi.HVMOP_set_param, callback, compat=True) == 0
    assert dh.dom.evtchn.compat_shinfo
    return si


def test_callback_from_32bit_code_latches_the_32bit_layout(dh: DomainHarness) -> None:
    si = _latched_with_shared_info(dh)
    version, sec, nsec = abi.COMPAT_WALLCLOCK.unpack(dh.dom.memory.read(si + abi.COMPAT_SI_WC_VERSION, 12))
    assert version == 2 and sec > 1_700_000_000 and nsec < 10**9
    assert dh.dom.evtchn.abi.max_ports == 1024
    # an IPI port of vCPU 0, and a send to it
    ipi = dh.put(abi.EVTCHN_BIND_IPI, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_ipi, ipi, compat=True) == 0
    a = dh.dom.memory.u32(ipi + 4)
    send = dh.put(struct.Struct("<I"), a, at=SCRATCH_VA + 0x80)
    assert dh.call("event_channel_op", abi.EVTCHNOP_send, send, compat=True) == 0
    word, bit = divmod(a, 32)
    assert dh.dom.memory.u32(si + abi.SI_EVTCHN_PENDING + 4 * word) == 1 << bit  # 32-bit words
    assert dh.dom.memory.u32(si + abi.COMPAT_VI_PENDING_SEL) == 1 << word  # the selector at offset 4
    assert dh.dom.memory.u8(si + abi.VI_UPCALL_PENDING) == 1
    assert dh.dom.memory.read(si + abi.VI_PENDING_SEL, 8) == bytes(8)  # nothing where a 64-bit one is
    # masking and unmasking through the 32-bit mask words
    dh.dom.memory.set_u32(si + abi.COMPAT_SI_EVTCHN_MASK + 4 * word, 1 << bit)
    assert dh.dom.evtchn.abi.is_masked(a) and dh.dom.evtchn.abi.is_pending(a)


def test_a_64bit_domain_keeps_the_native_layout(dh: DomainHarness) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, SHINFO_GPFN)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    callback = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ,
                      abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | 0xF3, at=SCRATCH_VA + 0x300)
    assert dh.call("hvm_op", abi.HVMOP_set_param, callback) == 0
    assert not dh.dom.evtchn.compat_shinfo and dh.dom.evtchn.abi.max_ports == abi.EVTCHN_2L_NR_CHANNELS


def test_a_64bit_caller_latches_back_and_platform_parameters(dh: DomainHarness) -> None:
    si = _latched_with_shared_info(dh)
    callback = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ,
                      abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | 0xF3, at=SCRATCH_VA + 0x300)
    assert dh.call("hvm_op", abi.HVMOP_set_param, callback) == 0  # from 64-bit code now
    assert not dh.dom.evtchn.compat_shinfo
    assert dh.dom.memory.u32(si + abi.SI_WC_VERSION) == 2  # the wallclock rewritten natively
    at = dh.put(struct.Struct("<Q"), 0x1111111122222222, at=SCRATCH_VA + 0x400)
    assert dh.call("xen_version", abi.XENVER_platform_parameters, at) == 0
    assert dh.dom.memory.read(at, 8) == bytes(8)  # kernel.c: 0 for an HVM vCPU
