"""A domain built around the real tcg engine: construction, trap glue, timers and one scheduling step.

The synthetic kernels are a few 32-bit instructions at the PVH entry, so the few tests that do run guest
code finish in milliseconds.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest
from unit_support import KERNEL_PADDR, SCRATCH_VA, DomainHarness, make_elf

from hyperdisco.core import shared_info
from hyperdisco.core import vcpu as vcpu_mod
from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.core.trap_dispatch import DEBUG_PORT
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import parse_kernel
from hyperdisco.platform import acpi, layout
from hyperdisco.platform.cpuid import XEN_BASE
from hyperdisco.platform.lapic import ICR_LO, ID
from hyperdisco.platform.rtc import DATA_PORT, INDEX_PORT, CmosRtc
from hyperdisco.xen import abi


def test_construction(dh: DomainHarness) -> None:
    dom = dh.dom
    assert dom.memory.ram_bytes == 32 << 20
    assert dom.special.gpa == layout.SPECIAL_BASE
    cport = dom.console_port
    assert cport in dom.evtchn.ports and cport in dom.reserved_ports
    assert dom.evtchn.ports[cport].state == abi.EVTCHNSTAT_interdomain
    assert dom.params[abi.HVM_PARAM_CONSOLE_EVTCHN] == cport
    assert dom.params[abi.HVM_PARAM_CONSOLE_PFN] == layout.SPECIAL_BASE >> 12
    assert dom.memory.read(KERNEL_PADDR, 16) == b"\xf4" * 16
    assert dom.memory.u32(layout.START_INFO) == abi.HVM_START_MAGIC
    assert dh.ctx.ev.gpr(3) == layout.START_INFO  # EBX at the PVH entry
    assert dh.ctx.up and not dh.ctx.blocked and dh.ctx.timer_ns is None


def test_vcpus(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=3)
    assert [c.index for c in dh.dom.vcpus] == [0, 1, 2]
    assert [c.up for c in dh.dom.vcpus] == [True, False, False]
    assert [c.lapic.read(ID) >> 24 for c in dh.dom.vcpus] == [0, 1, 2]


def test_is_ram(dh: DomainHarness) -> None:
    dom = dh.dom
    assert dom.is_ram(0) and dom.is_ram(0x9EFFF) and dom.is_ram(0x100000) and dom.is_ram((32 << 20) - 1)
    for gpa in (0x9F000, 0xA0000, layout.ACPI_BASE, 0xFFFFF, 32 << 20, layout.SPECIAL_BASE, -1, 1 << 60):
        assert not dom.is_ram(gpa), hex(gpa)


def test_translate_is_identity_at_pvh_entry(dh: DomainHarness) -> None:
    ev = dh.ctx.ev
    for va in (0, 0x1000, KERNEL_PADDR, SCRATCH_VA + 123):
        assert ev.translate(va) == va
    dh.dom.memory.write(SCRATCH_VA, b"through va")
    assert dh.ctx.va.read(SCRATCH_VA, 10) == b"through va"


# -- trap glue ------------------------------------------------------------------------------------------
def glue(dh: DomainHarness):  # noqa: ANN201 - the domain's TrapHandler
    return dh.ctx.ev.handler  # type: ignore[attr-defined]


def test_debug_port_output(dh: DomainHarness) -> None:
    for b in b"ok\n":
        glue(dh).io_out(dh.ctx.ev, DEBUG_PORT, 1, b | 0x100)
    assert b"".join(dh.output) == b"ok\n"


@pytest.mark.parametrize(("port", "value", "outcome"), [
    (acpi.SLEEP_CONTROL_PORT, (5 << 2) | acpi.SLP_EN, "poweroff"),
    (acpi.RESET_PORT, acpi.RESET_VALUE, "reboot"),
    (0x64, 0xFE, "reboot"),
])
def test_power_ports(dh: DomainHarness, port: int, value: int, outcome: str) -> None:
    glue(dh).io_out(dh.ctx.ev, port, 1, value)
    assert dh.dom.finished and dh.dom.outcome == outcome


@pytest.mark.parametrize(("port", "value"), [(acpi.SLEEP_CONTROL_PORT, 5 << 2), (acpi.RESET_PORT, 0x02),
                                             (0x64, 0xFD), (0x80, 0xFF)])
def test_harmless_port_writes(dh: DomainHarness, port: int, value: int) -> None:
    glue(dh).io_out(dh.ctx.ev, port, 1, value)
    assert not dh.dom.finished


def test_port_reads(dh: DomainHarness) -> None:
    g = glue(dh)
    assert g.io_in(dh.ctx.ev, 0x1234, 1) == 0xFF
    assert g.io_in(dh.ctx.ev, 0x1234, 2) == 0xFFFF
    assert g.io_in(dh.ctx.ev, 0x1234, 4) == 0xFFFFFFFF
    assert g.io_in(dh.ctx.ev, acpi.SLEEP_STATUS_PORT, 1) == 0
    g.io_out(dh.ctx.ev, INDEX_PORT, 1, 0x80 | 0x0D)
    assert g.io_in(dh.ctx.ev, DATA_PORT, 1) == 0x80
    assert g.io_in(dh.ctx.ev, 0x42, 1) == 0  # no PIT: Linux's quick calibration gives up at once


def test_cpuid_through_glue(dh: DomainHarness) -> None:
    g = glue(dh)
    a, b, c, d = g.cpuid(dh.ctx.ev, XEN_BASE, 0)
    assert struct.pack("<III", b, c, d) == b"XenVMMXenVMM"
    assert g.cpuid(dh.ctx.ev, XEN_BASE + 4, 0)[2] == dh.dom.domid
    assert g.cpuid(dh.ctx.ev, 1, 0)[2] >> 31 & 1
    assert not g.cpuid(dh.ctx.ev, 1, 0)[2] >> 21 & 1


def test_lapic_mmio_through_glue(dh: DomainHarness) -> None:
    g = glue(dh)
    assert g.mmio_read(dh.ctx.ev, layout.LAPIC_BASE + ID, 4) == 0
    g.mmio_write(dh.ctx.ev, layout.LAPIC_BASE + ICR_LO, 4, 1 << 18 | 0xEC)
    assert dh.ctx.lapic.pending == {0xEC}
    assert g.mmio_read(dh.ctx.ev, layout.LAPIC_BASE - 4, 4) == 0


def test_rtc_reads_bcd_time() -> None:
    rtc = CmosRtc()
    regs = {}
    for r in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32, 0x0A, 0x0B):
        rtc.write_index(r)
        regs[r] = rtc.read_data()
    for v in regs.values():
        assert v >> 4 <= 9 and v & 0xF <= 9 or v in (0x26,)
    assert not regs[0x0A] & 0x80  # no update in progress
    t = time.gmtime()
    assert (regs[0x32] >> 4) * 1000 + (regs[0x32] & 0xF) * 100 + (regs[0x09] >> 4) * 10 + (regs[0x09] & 0xF) \
        == t.tm_year
    rtc.write_index(0x7F)
    assert rtc.read_data() == 0


# -- timers and delivery --------------------------------------------------------------------------------
def _setup_events(dh: DomainHarness) -> int:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, 0x300, at=SCRATCH_VA)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    arg = dh.put(abi.EVTCHN_BIND_VIRQ, abi.VIRQ_TIMER, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg) == 0
    return dh.dom.memory.u32(arg + 8)


def test_singleshot_timer_fires_timer_virq(dh: DomainHarness) -> None:
    port = _setup_events(dh)
    ctx, ec = dh.ctx, dh.dom.evtchn
    now = dh.dom.clock.now_ns()
    ctx.timer_ns = now + 10**9
    ctx._fire_timers(now)
    assert not ec.any_pending([port]) and ctx.timer_ns is not None
    ctx._fire_timers(now + 10**9)
    assert ec.any_pending([port]) and ec.upcall_pending(0)
    assert ctx.timer_ns is None and dh.dom.stats["timer.fired"] == 1


def test_periodic_timer_rearms(dh: DomainHarness) -> None:
    port = _setup_events(dh)
    ctx = dh.ctx
    ctx.periodic_ns, ctx.periodic_next = 5_000_000, 1000
    ctx._fire_timers(2000)
    assert dh.dom.evtchn.any_pending([port])
    assert ctx.periodic_next == 2000 + 5_000_000


def test_blocked_vcpu_waits_for_its_timer(dh: DomainHarness) -> None:
    ctx = dh.ctx
    ctx.blocked = True
    assert ctx.step() == float("inf")
    ctx.timer_ns = dh.dom.clock.now_ns() + 10**9
    wake = ctx.step()
    assert wake is not None and time.monotonic() + 0.5 < wake < time.monotonic() + 1.5
    assert ctx.blocked


def test_notify_from_backend_unblocks_via_upcall(dh: DomainHarness) -> None:
    _setup_events(dh)
    dom, ctx = dh.dom, dh.ctx
    dom.callback_vector = 0xF3
    ctx.blocked = True
    assert ctx.step() == float("inf")
    dom.evtchn.notify(dom.console_port)
    assert dom.evtchn.has_queued()
    # the vCPU's own step applies the notification; the upcall wakes it (interrupts are off at the
    # PVH entry, so the vector is not injected yet and the vCPU runs its slice)
    ctx.step()
    assert not dom.evtchn.has_queued()
    assert dom.evtchn.upcall_pending(0)
    assert not ctx.blocked


def test_update_time_versions_are_even(dh: DomainHarness) -> None:
    _setup_events(dh)
    vi = dh.dom.evtchn.vcpu_info[0]
    v1 = dh.dom.memory.u32(vi + abi.VI_TIME)
    shared_info.update_time(dh.dom, dh.ctx)
    v2 = dh.dom.memory.u32(vi + abi.VI_TIME)
    assert v1 % 2 == 0 and v2 % 2 == 0 and v2 > v1


# -- running a few guest instructions -------------------------------------------------------------------
def _domain_running(code: bytes, kernel_engine: TcgEngine, clock: Clock) -> tuple[Domain, list[bytes]]:
    out: list[bytes] = []
    k = parse_kernel(make_elf(code=code))
    dom = Domain(2, DomainConfig("run", k, None, "", 32), kernel_engine, clock, out.append, lambda _m: None)
    for _ in range(50):
        if dom.finished:
            break
        dom.vcpus[0].step()
    return dom, out


def test_guest_code_reaches_debug_port_and_powers_off(engine: TcgEngine, clock: Clock) -> None:
    code = (b"\xb0A\xe6\xe9"  # mov al,'A'; out 0xe9,al
            b"\xb0\x20\x66\xba\x00\x06\xee"  # mov al,SLP_EN; mov dx,0x600; out dx,al
            b"\xf4")
    dom, out = _domain_running(code, engine, clock)
    assert b"".join(out) == b"A"
    assert dom.outcome == "poweroff" and dom.outcome_detail == "ACPI S5"
    assert dom.traps()["io"] >= 2
    dom.close()


def test_guest_vmcall_reaches_hypercalls(engine: TcgEngine, clock: Clock) -> None:
    code = (b"\xb8\x11\x00\x00\x00"  # mov eax, 17 (xen_version)
            b"\x31\xdb"  # xor ebx, ebx (XENVER_version: 32-bit code, so the 32-bit ABI's first argument)
            b"\x0f\x01\xc1"  # vmcall
            b"\xe6\xe9"  # out 0xe9, al: the low byte of the result
            b"\xb0\x20\x66\xba\x00\x06\xee\xf4")
    dom, out = _domain_running(code, engine, clock)
    assert b"".join(out) == bytes([((4 << 16) | 17) & 0xFF])
    assert dom.stats["hypercall.xen_version"] == 1
    assert dom.outcome == "poweroff"
    dom.close()


def test_hlt_with_interrupts_off_crashes_the_domain(engine: TcgEngine, clock: Clock) -> None:
    dom, _ = _domain_running(b"\xf4", engine, clock)
    assert dom.outcome == "crash" and "interrupts disabled" in dom.outcome_detail
    dom.close()


def test_triple_fault_crashes_the_domain(engine: TcgEngine, clock: Clock) -> None:
    dom, _ = _domain_running(b"\x0f\x0b", engine, clock)  # ud2 with no IDT
    assert dom.outcome == "crash"
    dom.close()


def test_guest_cpuid_answered_in_the_engine_from_the_policy(engine: TcgEngine, clock: Clock) -> None:
    out_ebx = b"\xe6\xe9\xc1\xe8\x08" * 3 + b"\xe6\xe9"  # out 0xe9, al; shr eax, 8 (x3); out 0xe9, al
    code = (b"\xb8\x00\x00\x00\x40"  # mov eax, 0x40000000
            b"\x0f\xa2"  # cpuid
            b"\x89\xd8" + out_ebx  # mov eax, ebx: the signature's first four bytes to the debug port
            + b"\xb0\x20\x66\xba\x00\x06\xee\xf4")  # power off
    dom, out = _domain_running(code, engine, clock)
    assert b"".join(out) == b"XenV"
    assert dom.traps()["cpuid"] == 1
    dom.close()


def test_describe_says_where_a_vcpu_is(dh: DomainHarness) -> None:
    ctx = dh.ctx
    line = ctx.describe()
    assert line.startswith("vcpu0 runnable rip=0x") and "no timer" in line
    ctx.halted = True
    ctx.timer_ns = dh.dom.clock.now_ns() + 5_000_000
    line = ctx.describe()
    assert "vcpu0 halted" in line and "timer in " in line and " ms" in line


def test_a_timer_due_before_the_slice_ends_ends_the_slice(dh: DomainHarness) -> None:
    ctx = dh.ctx
    stops: list[str] = []
    ctx.ev.request_stop = lambda: stops.append("stop")  # type: ignore[method-assign]
    now = dh.dom.clock.now_ns()
    ctx.slice_end_ns = now + 10_000_000  # a 10 ms slice is running
    ctx.set_timer(now + 20_000_000)  # after it: the slice runs on
    assert stops == [] and ctx.timer_ns == now + 20_000_000
    ctx.set_timer(now + 1_000_000)  # before its end: the slice ends when the hypercall returns
    assert stops == ["stop"] and ctx.timer_ns == now + 1_000_000


def test_an_event_the_guest_cannot_take_yet_is_retried_soon(dh: DomainHarness) -> None:
    """Interrupts are off at the PVH entry: the pending upcall is not injected, and the next slice is
    short so that it is delivered soon after the guest turns interrupts on."""
    _setup_events(dh)
    dom, ctx = dh.dom, dh.ctx
    dom.callback_vector = 0xF3
    dom.evtchn.notify(dom.console_port)
    slices: list[int] = []
    real_run = ctx.ev.run

    def run(slice_ns: int) -> object:
        slices.append(slice_ns)
        return real_run(50_000)

    ctx.ev.run = run  # type: ignore[method-assign]
    ctx.step()
    assert ctx.undelivered and slices == [vcpu_mod.DELIVERY_RETRY_NS]
