"""The runstate area (issue 9): the arithmetic of a vCPU's time in each state on a fake clock (running
time split by what its host thread actually got), VCPUOP_register_runstate_memory_area and
VCPUOP_get_runstate_info with Xen's checks, the XEN_RUNSTATE_UPDATE protocol under vm_assist, and the
32-bit layout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from unit_support import SCRATCH_VA, DomainHarness

from hyperdisco.core import runstate
from hyperdisco.core.runstate import BLOCKED, OFFLINE, RUNNABLE, RUNNING, Runstate
from hyperdisco.xen import abi

AREA = SCRATCH_VA + 0x800


class FakeCpu:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def test_running_time_not_given_by_the_host_is_runnable() -> None:
    cpu = FakeCpu()
    rs = Runstate(1000, RUNNING, cpu)
    rs.settle(1000)  # the thread's first settle: its CPU clock is now known
    cpu.ns += 300
    rs.settle(2000)  # 1000 ns elapsed, the thread ran 300 of them
    assert rs.times == [300, 700, 0, 0] and rs.entry_ns == 2000
    cpu.ns += 500
    rs.settle(2500)  # got the core the whole time: nothing stolen
    assert rs.times == [800, 700, 0, 0]
    cpu.ns += 10_000  # more CPU than wall time (clock granularity): never negative steal
    rs.settle(2600)
    assert rs.times == [900, 700, 0, 0]


def test_transitions_add_up_to_the_elapsed_time() -> None:
    cpu = FakeCpu()
    rs = Runstate(0, OFFLINE, cpu)
    steps = [(RUNNING, 100, 0), (BLOCKED, 400, 200), (RUNNING, 1400, 0), (OFFLINE, 1600, 150),
             (RUNNING, 2600, 0), (RUNNING, 3000, 100)]
    for state, at, ran in steps:
        cpu.ns += ran
        rs.enter(state, at)
    assert rs.state == RUNNING and rs.entry_ns == 3000
    assert sum(rs.times) == 3000  # all of it, in some state
    assert rs.times[BLOCKED] == 1000 and rs.times[OFFLINE] == 100 + 1000
    assert rs.times[RUNNING] == 200 + 150 + 100
    assert rs.times[RUNNABLE] == 100 + 50 + 300
    assert rs.steal_ns() == rs.times[RUNNABLE] + rs.times[OFFLINE]


def test_time_never_runs_backwards() -> None:
    rs = Runstate(5000, BLOCKED, FakeCpu())
    rs.enter(RUNNING, 4000)  # a clock read before the last entry (another thread's now)
    assert rs.entry_ns == 5000 and rs.times == [0, 0, 0, 0]


def _area(dh: DomainHarness, compat: bool = False) -> tuple[int, ...]:
    fmt = abi.COMPAT_RUNSTATE_INFO if compat else abi.RUNSTATE_INFO
    return fmt.unpack(dh.dom.memory.read(AREA, fmt.size))


def test_register_writes_the_area_at_once_and_updates_follow(dh: DomainHarness) -> None:
    ctx = dh.ctx
    cpu = FakeCpu()
    ctx.runstate._cpu = cpu
    dh.dom.memory.write(AREA, b"\xee" * 48)
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, AREA)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    state, entry, *times = _area(dh)
    assert state == RUNNING and sum(times) <= entry  # running since the domain was built
    runstate.transition(ctx, BLOCKED)
    state, entry2, *times2 = _area(dh)
    assert state == BLOCKED and entry2 >= entry and times2[RUNNING] + times2[RUNNABLE] >= sum(times)
    runstate.transition(ctx, RUNNING)
    state, entry3, *times3 = _area(dh)
    assert state == RUNNING and times3[BLOCKED] == entry3 - entry2
    # the guest may give it up: 0 unregisters, nothing is written any more
    zero = dh.put(abi.REGISTER_RUNSTATE_AREA, 0)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, zero) == 0
    runstate.transition(ctx, BLOCKED)
    assert _area(dh)[0] == RUNNING


def test_stolen_time_is_published_before_the_next_slice(dh: DomainHarness) -> None:
    ctx = dh.ctx
    cpu = FakeCpu()
    ctx.runstate._cpu = cpu
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, AREA)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    runstate.transition(ctx, RUNNING)
    before = _area(dh)
    runstate.transition(ctx, RUNNING)  # the thread got no CPU at all meanwhile: all of it stolen
    after = _area(dh)
    assert after[2 + RUNNABLE] > before[2 + RUNNABLE]
    assert after[2 + RUNNABLE] - before[2 + RUNNABLE] == after[1] - before[1]


@pytest.mark.parametrize("addr", [
    0x7FFF_FFFF_F000,  # not RAM
    1 << 40,
])
def test_register_an_area_that_is_not_memory_is_accepted_and_never_written(dh: DomainHarness,
                                                                          addr: int) -> None:
    # Xen accepts any address from an HVM/PVH vCPU and ignores the copies that fail
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, addr)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    assert dh.ctx.runstate.area is None and not dh.dom.finished


def test_register_straddling_the_end_of_ram_writes_nothing(dh: DomainHarness) -> None:
    end = dh.dom.memory.ram_bytes
    before = dh.dom.memory.read(end - 16, 16)
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, end - 16)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    assert dh.ctx.runstate.area is None and dh.dom.memory.read(end - 16, 16) == before


def test_register_with_a_bad_argument_pointer_is_efault(dh: DomainHarness) -> None:
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, 1 << 40) == -abi.EFAULT
    assert dh.call("vcpu_op", abi.VCPUOP_get_runstate_info, 0, 1 << 40) == -abi.EFAULT


@pytest.mark.parametrize("cmd", [abi.VCPUOP_register_runstate_memory_area, abi.VCPUOP_get_runstate_info])
def test_no_such_vcpu_is_enoent(make_domain: Callable[..., DomainHarness], cmd: int) -> None:
    dh = make_domain(vcpus=2)
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, AREA)
    for bad in (2, 64, 0xFFFFFFFF, 1 << 32 | 2):
        assert dh.call("vcpu_op", cmd, bad, arg) == -abi.ENOENT


def test_area_across_a_page_boundary(dh: DomainHarness) -> None:
    at = SCRATCH_VA + 0x1000 - 20
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, at, at=SCRATCH_VA)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    assert dh.ctx.runstate.area == [(at, 20), (at + 20, 28)]
    state, entry, *_ = abi.RUNSTATE_INFO.unpack(dh.dom.memory.read(at, 48))
    assert state == RUNNING and entry == dh.ctx.runstate.entry_ns


def test_another_vcpus_area(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, AREA)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 1, arg) == 0
    assert _area(dh)[0] == OFFLINE  # the AP is down until it is started
    info = SCRATCH_VA + 0x400
    assert dh.call("vcpu_op", abi.VCPUOP_get_runstate_info, 1, info) == 0
    state, now, *times = abi.RUNSTATE_INFO.unpack(dh.dom.memory.read(info, 48))
    assert state == OFFLINE and times[OFFLINE] == now - dh.dom.vcpus[1].runstate.entry_ns and \
        sum(times) == times[OFFLINE]


def test_update_flag_protocol(dh: DomainHarness) -> None:
    """With runstate_update_flag enabled the byte holding XEN_RUNSTATE_UPDATE is set before the area is
    rewritten and cleared after it (Xen's update_runstate_area); without it, one plain write."""
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, AREA)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    mem = dh.dom.memory
    seen: list[int] = []
    real_write = mem.write

    def write(gpa: int, data: bytes | bytearray | memoryview) -> None:
        real_write(gpa, data)
        if AREA <= gpa < AREA + 48:
            seen.append(mem.u64(AREA + abi.RUNSTATE_ENTRY_TIME))

    mem.write = write  # type: ignore[method-assign]
    runstate.transition(dh.ctx, BLOCKED)
    assert len(seen) == 1 and not seen[0] & abi.XEN_RUNSTATE_UPDATE
    assert dh.call("vm_assist", abi.VMASST_CMD_enable, abi.VMASST_TYPE_runstate_update_flag) == 0
    seen.clear()
    runstate.transition(dh.ctx, RUNNING)
    assert len(seen) == 3
    assert seen[0] & abi.XEN_RUNSTATE_UPDATE and seen[1] & abi.XEN_RUNSTATE_UPDATE
    assert seen[2] == dh.ctx.runstate.entry_ns  # cleared, and the new entry time
    assert dh.call("vm_assist", abi.VMASST_CMD_disable, abi.VMASST_TYPE_runstate_update_flag) == 0
    assert dh.dom.vm_assist == 0


def test_vm_assist_checks(dh: DomainHarness) -> None:
    for kind in (0, 1, 2, 3, 4, 6, 31, 64, 0xFFFFFFFF):  # the PV-only assists and nonsense: an HVM domain's
        assert dh.call("vm_assist", abi.VMASST_CMD_enable, kind) == -abi.EINVAL
    assert dh.call("vm_assist", 7, abi.VMASST_TYPE_runstate_update_flag) == -abi.ENOSYS
    assert dh.dom.vm_assist == 0


def test_compat_layout(dh: DomainHarness) -> None:
    """A domain with the 32-bit shared_info layout gets the 44-byte compat area (uint64_t aligned to 4)."""
    dh.dom.evtchn.compat_shinfo = True
    dh.dom.memory.write(AREA, b"\xee" * 48)
    arg = dh.put(abi.REGISTER_RUNSTATE_AREA, AREA)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg, compat=True) == 0
    state, entry, *times = _area(dh, compat=True)
    assert state == RUNNING and entry == dh.ctx.runstate.entry_ns and times == dh.ctx.runstate.times
    assert dh.dom.memory.read(AREA + 44, 4) == b"\xee" * 4  # nothing past the compat structure
    assert dh.call("vm_assist", abi.VMASST_CMD_enable, abi.VMASST_TYPE_runstate_update_flag,
                   compat=True) == 0
    runstate.transition(dh.ctx, BLOCKED)
    assert not dh.dom.memory.u64(AREA + abi.COMPAT_RUNSTATE_ENTRY_TIME) & abi.XEN_RUNSTATE_UPDATE
    assert _area(dh, compat=True)[0] == BLOCKED
