"""SMP pieces on their own (issue 9): ICR decoding and routing between vCPUs (INIT, STARTUP, fixed IPIs),
start-up on the vCPU's own thread, VCPUOP_up/down/is_up and the per-vCPU checks of vcpu_op, the
availability nodes and CPU lists of vcpu-set / vcpu-pin, and one-thread-per-vCPU scheduling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from unit_support import SCRATCH_VA, DomainHarness

from hyperdisco.core import ipi
from hyperdisco.core.scheduler import Scheduler
from hyperdisco.dom0 import vcpus as dom0_vcpus
from hyperdisco.errors import ConfigError
from hyperdisco.platform import layout
from hyperdisco.platform.lapic import (
    DFR,
    DM_FIXED,
    DM_INIT,
    DM_NMI,
    DM_STARTUP,
    ICR_HI,
    ICR_LO,
    LDR,
    SH_ALL,
    SH_NONE,
    SH_OTHERS,
    SH_SELF,
    TPR,
    IcrCommand,
    Lapic,
)
from hyperdisco.xen import abi

INIT_ASSERT = 1 << 14 | 1 << 15 | DM_INIT << 8  # level-triggered INIT, asserted (Linux's first write)
INIT_DEASSERT = 1 << 15 | DM_INIT << 8


def icr(ctx_lapic: Lapic, low: int, dest: int = 0) -> IcrCommand | None:
    ctx_lapic.write(ICR_HI, dest << 24)
    return ctx_lapic.write(ICR_LO, low)


# -- the ICR --------------------------------------------------------------------------------------------
def test_icr_decode_fields() -> None:
    c = IcrCommand.decode(0x000C_4E9A | 1 << 11, 0x0500_0000)
    assert (c.mode, c.vector, c.shorthand, c.dest, c.logical, c.level_assert) == (DM_STARTUP, 0x9A, SH_OTHERS,
                                                                                  5, True, True)


def test_icr_returns_the_command_for_others_and_keeps_self_ipis() -> None:
    la = Lapic(0)
    cmd = icr(la, DM_STARTUP << 8 | 0x9A, dest=1)
    assert cmd is not None and cmd.mode == DM_STARTUP and cmd.dest == 1
    assert la.pending == set()
    assert la.write(TPR, 5) is None and la.read(TPR) == 5
    icr(la, SH_ALL << 18 | 0xFB)  # all including self: this LAPIC takes its part
    assert la.pending == {0xFB}


@pytest.mark.parametrize(("logical", "ldr", "dfr", "dest", "hit"), [
    (False, 0, 0xFFFFFFFF, 3, True),  # physical: the APIC ID
    (False, 0, 0xFFFFFFFF, 2, False),
    (False, 0, 0xFFFFFFFF, 0xFF, True),  # physical broadcast
    (True, 0x02 << 24, 0xFFFFFFFF, 0x06, True),  # flat: a bit per CPU
    (True, 0x02 << 24, 0xFFFFFFFF, 0x05, False),
    (True, 0x12 << 24, 0x0FFFFFFF, 0x13, True),  # cluster 1, member bit 1
    (True, 0x12 << 24, 0x0FFFFFFF, 0x23, False),  # another cluster
])
def test_lapic_destination(logical: bool, ldr: int, dfr: int, dest: int, hit: bool) -> None:
    la = Lapic(3)
    la.write(LDR, ldr)
    la.write(DFR, dfr)
    assert la.addressed(IcrCommand(DM_FIXED, 0x40, SH_NONE, dest, logical, False)) is hit


def test_lapic_reset_keeps_id_drops_state() -> None:
    la = Lapic(2)
    la.write(LDR, 1 << 24)
    la.accept(0x40)
    la.accept(0x0F)  # illegal vector: dropped
    assert la.pending == {0x40}
    la.reset()
    assert la.apic_id == 2 and la.read(LDR) == 0 and la.pending == set()


# -- routing between a domain's vCPUs ---------------------------------------------------------------------
def test_init_then_startup_start_an_ap_on_its_thread(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=3)
    bsp, ap, other = dh.dom.vcpus
    assert not ap.up and not ap.initialised
    ipi.route(dh.dom, bsp, IcrCommand.decode(INIT_ASSERT, 1 << 24))
    ipi.route(dh.dom, bsp, IcrCommand.decode(INIT_DEASSERT, 1 << 24))  # de-assert: nothing
    ipi.route(dh.dom, bsp, IcrCommand.decode(DM_STARTUP << 8 | 0x9A, 1 << 24))
    assert not ap.up  # only its own thread acts on it
    assert other.has_startup_request() is False
    dh.dom.memory.write(0x9A000, b"\xf4")  # hlt at the trampoline
    ap.step()
    assert ap.up and ap.initialised and not ap.wait_for_sipi
    assert ap.ev.rip == 1 and ap.halted  # it ran the HLT at 0x9A00:0000 in real mode
    assert dh.dom.stats["vcpu.startup"] == 1
    # a second STARTUP (Linux sends two) reaches a running CPU, which ignores it
    ipi.route(dh.dom, bsp, IcrCommand.decode(DM_STARTUP << 8 | 0x9B, 1 << 24))
    assert not ap.has_startup_request()


def test_startup_without_init_is_ignored(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    bsp, ap = dh.dom.vcpus
    ipi.route(dh.dom, bsp, IcrCommand.decode(DM_STARTUP << 8 | 0x9A, 1 << 24))
    assert not ap.has_startup_request()
    assert ap.step() == float("inf") and not ap.up


def test_init_resets_a_running_vcpu(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    bsp, ap = dh.dom.vcpus
    ap.request_init()
    ap.request_sipi(0x10)
    dh.dom.memory.write(0x10000, b"\xf4")
    ap.step()
    ap.timer_ns, ap.stopped = 123, True
    ap.lapic.accept(0x50)
    ipi.route(dh.dom, bsp, IcrCommand.decode(SH_OTHERS << 18 | INIT_ASSERT, 0))
    assert ap.step() == float("inf")
    assert not ap.up and ap.wait_for_sipi and ap.timer_ns is None and not ap.stopped
    assert ap.lapic.pending == set() and bsp.up  # the sender is not among "all but self"


def test_fixed_and_nmi_ipis_reach_the_addressed_vcpus(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=3)
    bsp, a, b = dh.dom.vcpus
    ipi.route(dh.dom, bsp, IcrCommand.decode(0xFC, 2 << 24))  # physical destination 2
    assert (a.lapic.pending, b.lapic.pending) == (set(), {0xFC})
    ipi.route(dh.dom, bsp, IcrCommand.decode(SH_OTHERS << 18 | 0xF2, 0))  # REBOOT_VECTOR to all but self
    assert a.lapic.pending == {0xF2} and b.lapic.pending == {0xFC, 0xF2} and bsp.lapic.pending == set()
    ipi.route(dh.dom, bsp, IcrCommand.decode(DM_NMI << 8, 1 << 24))
    assert ipi.NMI_VECTOR in a.lapic.pending
    ipi.route(dh.dom, bsp, IcrCommand.decode(SH_SELF << 18 | 0x40, 0))  # self: the sender's LAPIC's
    assert 0x40 not in a.lapic.pending | b.lapic.pending


def test_icr_write_through_mmio_routes(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    bsp, ap = dh.dom.vcpus
    from hyperdisco.core.trap_dispatch import TrapDispatch

    td = TrapDispatch(dh.dom)
    td.mmio_write(bsp.ev, layout.LAPIC_BASE + ICR_HI, 4, 1 << 24)
    td.mmio_write(bsp.ev, layout.LAPIC_BASE + ICR_LO, 4, INIT_ASSERT)
    assert ap.has_startup_request()


# -- vcpu_op across vCPUs ------------------------------------------------------------------------------------
def test_vcpu_up_down_is_up(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    bsp, ap = dh.dom.vcpus
    assert dh.call("vcpu_op", abi.VCPUOP_is_up, 1, 0) == 0
    assert dh.call("vcpu_op", abi.VCPUOP_up, 1, 0) == -abi.EINVAL  # never initialised (is_initialised)
    ap.request_init()
    ap.request_sipi(0x10)
    dh.dom.memory.write(0x10000, b"\xfb\xf4")  # sti; hlt (HLT with interrupts off would take it down)
    ap.step()
    assert dh.call("vcpu_op", abi.VCPUOP_is_up, 1, 0) == 1
    assert dh.call("vcpu_op", abi.VCPUOP_down, 1, 0) == 0
    assert not ap.up and dh.call("vcpu_op", abi.VCPUOP_is_up, 1, 0) == 0
    assert dh.call("vcpu_op", abi.VCPUOP_up, 1, 0) == 0 and ap.up
    assert dh.call("vcpu_op", abi.VCPUOP_down, 1, 0) == 0
    assert not dh.dom.finished
    assert dh.call("vcpu_op", abi.VCPUOP_down, 0, 0) == 0  # the last vCPU going down: Xen powers off
    assert dh.dom.finished and dh.dom.outcome == "poweroff"


@pytest.mark.parametrize("cmd", [abi.VCPUOP_set_singleshot_timer, abi.VCPUOP_stop_singleshot_timer])
def test_singleshot_timer_only_on_itself(make_domain: Callable[..., DomainHarness], cmd: int) -> None:
    dh = make_domain(vcpus=2)
    arg = dh.put(abi.SINGLESHOT_TIMER, 10**15, 0)
    assert dh.call("vcpu_op", cmd, 1, arg, vcpu=0) == -abi.EINVAL
    assert dh.dom.vcpus[1].timer_ns is None
    if cmd == abi.VCPUOP_set_singleshot_timer:
        assert dh.call("vcpu_op", cmd, 1, arg, vcpu=1) == 0 and dh.dom.vcpus[1].timer_ns == 10**15


def test_register_vcpu_info_for_another_vcpu(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    ap = dh.dom.vcpus[1]
    target = 0x400000 + 0x40
    arg = dh.put(abi.REGISTER_VCPU_INFO, target >> 12, target & 0xFFF, 0)
    assert dh.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 1, arg) == 0  # on a vCPU that is down: fine
    assert dh.dom.evtchn.vcpu_info[1] == target
    assert dh.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 1, arg) == -abi.EINVAL  # once only
    dh.put(abi.REGISTER_VCPU_INFO, target >> 12, (target & 0xFFF) + 4, 0, at=SCRATCH_VA)
    ap.up = True
    assert dh.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 0, arg) == -abi.EINVAL  # misaligned


def test_register_vcpu_info_of_a_running_other_vcpu(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    dh.dom.vcpus[1].up = True
    arg = dh.put(abi.REGISTER_VCPU_INFO, 0x400, 0x80, 0)
    # neither the caller nor down: refused
    assert dh.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 1, arg) == -abi.EINVAL
    assert dh.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 1, arg, vcpu=1) == 0  # itself


@pytest.mark.parametrize("vcpuid", [2, 3, 0xFFFFFFFF, 1 << 32 | 0])
def test_vcpu_op_ids_beyond_the_domain(make_domain: Callable[..., DomainHarness], vcpuid: int) -> None:
    dh = make_domain(vcpus=2)
    expected = 1 if vcpuid == 1 << 32 else -abi.ENOENT  # the id is 32 bits: 1 << 32 is vCPU 0
    assert dh.call("vcpu_op", abi.VCPUOP_is_up, vcpuid, 0) == expected
    for cmd in (abi.VCPUOP_up, abi.VCPUOP_down, abi.VCPUOP_register_vcpu_info):
        if vcpuid != 1 << 32:
            assert dh.call("vcpu_op", cmd, vcpuid, SCRATCH_VA) == -abi.ENOENT


def test_madt_lists_maxvcpus(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=3)
    madt = dh.dom.memory.read(layout.ACPI_BASE + 0x400, 36 + 8 + 3 * 8)
    assert madt[:4] == b"APIC"
    entries = [madt[44 + 8 * i:52 + 8 * i] for i in range(3)]
    assert [(e[0], e[2], e[3]) for e in entries] == [(0, 0, 0), (0, 1, 1), (0, 2, 2)]


# -- vcpu-set / vcpu-pin helpers ---------------------------------------------------------------------------
class _Store:
    def __init__(self) -> None:
        self.nodes: dict[str, str] = {}

    def write(self, path: str, value: str) -> None:
        self.nodes[path] = value


def test_availability_nodes() -> None:
    xs = _Store()
    dom0_vcpus.write_availability(xs, 7, 1, 3)  # type: ignore[arg-type]
    assert xs.nodes == {"/local/domain/7/cpu/0/availability": "online",
                        "/local/domain/7/cpu/1/availability": "offline",
                        "/local/domain/7/cpu/2/availability": "offline"}


@pytest.mark.parametrize(("text", "cpus"), [
    ("all", {0, 1, 2, 3}), ("0", {0}), ("1-3", {1, 2, 3}), ("0,2", {0, 2}), ("0-3,^1", {0, 2, 3}),
])
def test_parse_cpus(text: str, cpus: set[int]) -> None:
    assert dom0_vcpus.parse_cpus(text, 4) == cpus


@pytest.mark.parametrize("text", ["", "x", "4", "3-1", "0-9", "^0", "1,,2", "-1", "0x1"])
def test_parse_cpus_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        dom0_vcpus.parse_cpus(text, 4)


@pytest.mark.parametrize(("cpus", "text"), [
    ({0, 1, 2, 3}, "all"), ({0}, "0"), ({0, 1, 3}, "0-1,3"), ({1, 2}, "1-2"), (set(), "none"),
])
def test_format_cpus(cpus: set[int], text: str) -> None:
    assert dom0_vcpus.format_cpus(cpus, 4) == text


# -- one host thread per vCPU -----------------------------------------------------------------------------
def test_each_vcpu_runs_on_its_own_thread(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    dom = dh.dom
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    both = threading.Barrier(2, timeout=10)
    met = threading.Event()
    for ctx in dom.vcpus:
        def step(c=ctx) -> float | None:  # type: ignore[no-untyped-def]
            seen[c.index].add(threading.get_native_id())
            if not met.is_set():
                both.wait()  # both vCPUs inside a step at the same time
                met.set()
            return None if len(seen[c.index]) < 3 and time.monotonic() < deadline else float("inf")
        ctx.step = step  # type: ignore[method-assign]
        ctx.up = True
    deadline = time.monotonic() + 0.3
    sched = Scheduler()
    sched.add(dom)
    try:
        assert met.wait(10)
        time.sleep(0.4)
        assert all(len(t) == 1 for t in seen.values()), seen  # always the same thread per vCPU
        assert seen[0] != seen[1]
        assert sched.thread_ids(dom) == [next(iter(seen[0])), next(iter(seen[1]))]
    finally:
        dom.shutdown("destroyed")
        sched.remove(dom)
        sched.shutdown()


def test_pvclock_claims_stable_tsc_only_with_one_vcpu(make_domain: Callable[..., DomainHarness]) -> None:
    from hyperdisco.core import shared_info

    for n, flags in ((1, abi.XEN_PVCLOCK_TSC_STABLE_BIT), (2, 0)):
        dh = make_domain(vcpus=n)
        gpfn = 0x300
        arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, gpfn)
        assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
        for ctx in dh.dom.vcpus:
            shared_info.update_time(dh.dom, ctx)
            at = dh.dom.evtchn.vcpu_info[ctx.index] + abi.VI_TIME
            assert dh.dom.memory.unpack(abi.VCPU_TIME_INFO, at)[-1] == flags
