"""Hypercall dispatch and validation against a real domain whose vCPU never runs.

The vCPU sits at its PVH entry (paging off), so guest-virtual equals guest-physical for the buffers here.
Arguments go in through the engine's registers and the result comes back in RAX, as in a running guest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from unit_support import SCRATCH_VA, DomainHarness

from hyperdisco.backends.console import ConsoleBackend
from hyperdisco.core.hypercalls import GRANT_FRAMES_MAX, MAX_CONSOLE_WRITE
from hyperdisco.core.memory import PAGE
from hyperdisco.platform import layout
from hyperdisco.xen import abi

BAD_PTRS = [0x7FFF_0000_0000, 32 << 20, (32 << 20) - 1, 0xFEE00000, 0xFFFF_FFFF_FFFF_F000]
SHARED_INFO_GPFN = 0x300
_U64 = struct.Struct("<Q")


def map_shared_info(dh: DomainHarness, gpfn: int = SHARED_INFO_GPFN) -> int:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, gpfn,
                 at=SCRATCH_VA + 0x800)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    return gpfn << 12


# -- dispatch -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nr", [0, 1, 11, 40, 43, 64, 0x1234, 0xFFFFFFFF])
def test_unknown_hypercall_is_enosys(dh: DomainHarness, nr: int) -> None:
    assert dh.call(nr, 1, 2, 3) == -abi.ENOSYS


def test_hypercall_number_is_all_of_rax(dh: DomainHarness) -> None:
    # xen/arch/x86/hvm/hypercall.c: in 64-bit mode the number is RAX, so 2^32 + 17 is no hypercall
    assert dh.call(17, abi.XENVER_pagesize) == PAGE
    assert dh.call((1 << 32) | 17, abi.XENVER_pagesize) == -abi.ENOSYS


def test_unknown_hypercall_logged_once(dh: DomainHarness) -> None:
    for _ in range(3):
        dh.call(0, 5)
    assert sum("not implemented" in m for m in dh.logs) == 1
    assert dh.dom.stats["hypercall.set_trap_table"] == 3


def test_unknown_subcommands_are_enosys(dh: DomainHarness) -> None:
    assert dh.call("xen_version", 99, SCRATCH_VA) == -abi.ENOSYS
    assert dh.call("memory_op", 63, SCRATCH_VA) == -abi.ENOSYS
    assert dh.call("hvm_op", 77, SCRATCH_VA) == -abi.ENOSYS
    assert dh.call("vcpu_op", abi.VCPUOP_send_nmi, 0, SCRATCH_VA) == -abi.ENOSYS
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_pirq, SCRATCH_VA) == -abi.ENOSYS
    assert dh.call("event_channel_op", 14, SCRATCH_VA) == -abi.ENOSYS
    assert dh.call("sched_op", 99, SCRATCH_VA) == -abi.ENOSYS
    assert dh.call("grant_table_op", 4, SCRATCH_VA, 1) == -abi.ENOSYS  # transfer: not for HVM/PVH


@pytest.mark.parametrize(("name", "cmd", "layout_args"), [
    ("xen_version", abi.XENVER_extraversion, ()),
    ("xen_version", abi.XENVER_capabilities, ()),
    ("xen_version", abi.XENVER_get_features, ()),
    ("xen_version", abi.XENVER_guest_handle, ()),
    ("memory_op", abi.XENMEM_add_to_physmap, ()),
    ("memory_op", abi.XENMEM_memory_map, ()),
    ("memory_op", abi.XENMEM_current_reservation, ()),
    ("hvm_op", abi.HVMOP_get_param, ()),
    ("hvm_op", abi.HVMOP_set_param, ()),
    ("vcpu_op", abi.VCPUOP_register_vcpu_info, (0,)),
    ("vcpu_op", abi.VCPUOP_set_singleshot_timer, (0,)),
    ("vcpu_op", abi.VCPUOP_set_periodic_timer, (0,)),
    ("vcpu_op", abi.VCPUOP_register_runstate_memory_area, (0,)),
    ("event_channel_op", abi.EVTCHNOP_bind_virq, ()),
    ("event_channel_op", abi.EVTCHNOP_bind_ipi, ()),
    ("event_channel_op", abi.EVTCHNOP_alloc_unbound, ()),
    ("event_channel_op", abi.EVTCHNOP_send, ()),
    ("event_channel_op", abi.EVTCHNOP_unmask, ()),
    ("event_channel_op", abi.EVTCHNOP_close, ()),
    ("event_channel_op", abi.EVTCHNOP_status, ()),
    ("event_channel_op", abi.EVTCHNOP_bind_vcpu, ()),
    ("sched_op", abi.SCHEDOP_shutdown, ()),
    ("sched_op", abi.SCHEDOP_poll, ()),
    ("grant_table_op", abi.GNTTABOP_query_size, ()),
])
@pytest.mark.parametrize("ptr", BAD_PTRS)
def test_bad_buffers_are_efault(dh: DomainHarness, name: str, cmd: int, layout_args: tuple[int, ...],
                                ptr: int) -> None:
    extra = (1,) if name == "grant_table_op" else ()
    assert dh.call(name, cmd, *layout_args, ptr, *extra) == -abi.EFAULT
    assert not dh.dom.finished
    assert any("bad guest buffer" in m for m in dh.logs)


def test_buffer_straddling_end_of_ram_is_efault(dh: DomainHarness) -> None:
    end = dh.dom.memory.ram_bytes
    assert dh.call("console_io", abi.CONSOLEIO_write, 8, end - 4) == -abi.EFAULT
    assert dh.output == []
    assert dh.call("console_io", abi.CONSOLEIO_write, 4, end - 4) == 4


# -- xen_version ----------------------------------------------------------------------------------------
def test_xen_version(dh: DomainHarness) -> None:
    assert dh.call("xen_version", abi.XENVER_version, 0) == (4 << 16) | 17
    assert dh.call("xen_version", abi.XENVER_pagesize, 0) == PAGE
    assert dh.call("xen_version", abi.XENVER_extraversion, SCRATCH_VA) == 0
    assert dh.dom.memory.read(SCRATCH_VA, 16).rstrip(b"\0") == b"-hyperdisco"
    assert dh.call("xen_version", abi.XENVER_guest_handle, SCRATCH_VA) == 0
    assert dh.dom.memory.read(SCRATCH_VA, 16) == dh.dom.uuid


def test_xen_version_features(dh: DomainHarness) -> None:
    dh.put(struct.Struct("<II"), 0, 0xFFFFFFFF)
    assert dh.call("xen_version", abi.XENVER_get_features, SCRATCH_VA) == 0
    bits = dh.dom.memory.u32(SCRATCH_VA + 4)
    assert bits >> abi.XENFEAT_auto_translated_physmap & 1
    assert bits >> abi.XENFEAT_hvm_callback_vector & 1
    dh.put(struct.Struct("<II"), 1, 0xFFFFFFFF)  # kernel.c: one submap; any other index is -EINVAL
    assert dh.call("xen_version", abi.XENVER_get_features, SCRATCH_VA) == -abi.EINVAL
    assert dh.call("xen_version", abi.XENVER_pagesize, SCRATCH_VA) == -abi.EINVAL  # only with a null handle


# -- console_io -----------------------------------------------------------------------------------------
def test_console_write(dh: DomainHarness) -> None:
    dh.dom.memory.write(SCRATCH_VA, b"early printk\n")
    assert dh.call("console_io", abi.CONSOLEIO_write, 13, SCRATCH_VA) == 13
    assert b"".join(dh.output) == b"early printk\n"
    assert dh.dom.first_output is not None


def test_console_write_limits(dh: DomainHarness) -> None:
    assert dh.call("console_io", abi.CONSOLEIO_write, MAX_CONSOLE_WRITE + 1, SCRATCH_VA) == -abi.EINVAL
    assert dh.call("console_io", abi.CONSOLEIO_write, 0xFFFFFFFF, SCRATCH_VA) == -abi.EINVAL
    assert dh.output == []
    assert dh.call("console_io", abi.CONSOLEIO_write, MAX_CONSOLE_WRITE, SCRATCH_VA) == MAX_CONSOLE_WRITE
    # the count is a 32-bit int: upper bits of the register are ignored
    assert dh.call("console_io", abi.CONSOLEIO_write, (1 << 32) | 3, SCRATCH_VA) == 3
    assert dh.call("console_io", abi.CONSOLEIO_write, 0, 0xDEAD0000_0000) == 0


def test_console_read_and_bad_cmd(dh: DomainHarness) -> None:
    assert dh.call("console_io", abi.CONSOLEIO_read, 10, SCRATCH_VA) == 0
    assert dh.call("console_io", 7, 10, SCRATCH_VA) == -abi.ENOSYS  # console.c do_console_io


# -- hvm_op ---------------------------------------------------------------------------------------------
def test_hvm_set_callback_vector(dh: DomainHarness) -> None:
    value = abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | 0xF3
    arg = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, value)
    assert dh.call("hvm_op", abi.HVMOP_set_param, arg) == 0
    assert dh.dom.callback_vector == 0xF3
    dh.put(abi.HVM_PARAM, dh.dom.domid, abi.HVM_PARAM_CALLBACK_IRQ, 0)
    assert dh.call("hvm_op", abi.HVMOP_get_param, arg) == 0
    assert dh.dom.memory.unpack(abi.HVM_PARAM, arg)[2] == value
    dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, 0)
    assert dh.call("hvm_op", abi.HVMOP_set_param, arg) == 0
    assert dh.dom.callback_vector is None


@pytest.mark.parametrize("value", [0xF3, 1 << 56 | 0xF3, abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | 0x0F,
                                   3 << 56 | 0x40])
def test_hvm_set_callback_bad_values(dh: DomainHarness, value: int) -> None:
    arg = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, value)
    assert dh.call("hvm_op", abi.HVMOP_set_param, arg) == -abi.EINVAL
    assert dh.dom.callback_vector is None


@pytest.mark.parametrize("index", [abi.HVM_PARAM_STORE_PFN, abi.HVM_PARAM_CONSOLE_PFN,
                                   abi.HVM_PARAM_CONSOLE_EVTCHN, abi.HVM_NR_PARAMS - 1])
def test_hvm_set_other_params_eperm(dh: DomainHarness, index: int) -> None:
    before = dict(dh.dom.params)
    arg = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, index, 0x1234)
    assert dh.call("hvm_op", abi.HVMOP_set_param, arg) == -abi.EPERM
    assert dh.dom.params == before


@pytest.mark.parametrize("cmd", [abi.HVMOP_set_param, abi.HVMOP_get_param])
def test_hvm_param_other_domain_eperm(dh: DomainHarness, cmd: int) -> None:
    for domid in (0, 2, 0x7FF1, 0xFFFF):
        arg = dh.put(abi.HVM_PARAM, domid, abi.HVM_PARAM_CALLBACK_IRQ, 2 << 56 | 0xF3)
        assert dh.call("hvm_op", cmd, arg) == -abi.EPERM
        assert dh.dom.memory.unpack(abi.HVM_PARAM, arg)[2] == 2 << 56 | 0xF3
    assert dh.dom.callback_vector is None


@pytest.mark.parametrize("cmd", [abi.HVMOP_set_param, abi.HVMOP_get_param])
@pytest.mark.parametrize("index", [abi.HVM_NR_PARAMS, abi.HVM_NR_PARAMS + 1, 0xFFFFFFFF])
def test_hvm_param_index_out_of_range(dh: DomainHarness, cmd: int, index: int) -> None:
    arg = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, index, 0)
    assert dh.call("hvm_op", cmd, arg) == -abi.EINVAL


def test_hvm_get_console_params(dh: DomainHarness) -> None:
    arg = dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CONSOLE_PFN, 0)
    assert dh.call("hvm_op", abi.HVMOP_get_param, arg) == 0
    assert dh.dom.memory.unpack(abi.HVM_PARAM, arg) == (abi.DOMID_SELF, abi.HVM_PARAM_CONSOLE_PFN,
                                                        layout.SPECIAL_BASE >> 12)
    dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_CONSOLE_EVTCHN, 0)
    assert dh.call("hvm_op", abi.HVMOP_get_param, arg) == 0
    assert dh.dom.memory.unpack(abi.HVM_PARAM, arg)[2] == dh.dom.console_port
    dh.put(abi.HVM_PARAM, abi.DOMID_SELF, abi.HVM_PARAM_STORE_PFN, 99)
    assert dh.call("hvm_op", abi.HVMOP_get_param, arg) == 0
    assert dh.dom.memory.unpack(abi.HVM_PARAM, arg)[2] == layout.special_gpa(layout.STORE_PAGE) >> 12


def test_hvm_pagetable_dying(dh: DomainHarness) -> None:
    assert dh.call("hvm_op", abi.HVMOP_pagetable_dying, SCRATCH_VA) == 0


# -- vcpu_op --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vcpuid", [1, 2, 31, 0xFFFFFFFF, 0x7FFFFFFF])
@pytest.mark.parametrize("cmd", [abi.VCPUOP_is_up, abi.VCPUOP_register_vcpu_info,
                                 abi.VCPUOP_set_singleshot_timer, abi.VCPUOP_up])
def test_vcpu_op_vcpu_out_of_range(dh: DomainHarness, vcpuid: int, cmd: int) -> None:
    assert dh.call("vcpu_op", cmd, vcpuid, SCRATCH_VA) == -abi.ENOENT


def test_vcpu_op_is_up(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    assert dh.call("vcpu_op", abi.VCPUOP_is_up, 0, 0) == 1
    assert dh.call("vcpu_op", abi.VCPUOP_is_up, 1, 0) == 0
    assert dh.call("vcpu_op", abi.VCPUOP_is_up, 2, 0) == -abi.ENOENT


def test_register_vcpu_info(dh: DomainHarness) -> None:
    si = map_shared_info(dh)
    dh.dom.memory.set_u64(si + abi.VI_PENDING_SEL, 0xA5)
    target = 0x400000 + 4096 - 64
    arg = dh.put(abi.REGISTER_VCPU_INFO, target >> 12, target & 0xFFF, 0)
    assert dh.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 0, arg) == 0
    assert dh.dom.evtchn.vcpu_info[0] == target
    assert dh.dom.memory.u64(target + abi.VI_PENDING_SEL) == 0xA5  # the old contents moved along
    version, *_, flags = dh.dom.memory.unpack(abi.VCPU_TIME_INFO, target + abi.VI_TIME)
    assert version % 2 == 0 and version > 0 and flags == abi.XEN_PVCLOCK_TSC_STABLE_BIT


@pytest.mark.parametrize(("mfn", "offset"), [
    (0x400, 4096 - 63), (0x400, 4096), (0x400, 0xFFFFFFFF),
    ((32 << 20) >> 12, 0),  # just past RAM
    (0x9F, 0), (0xF0, 0),  # reserved and ACPI pages
    (layout.SPECIAL_BASE >> 12, 0), (1 << 52, 0), ((1 << 64) - 1, 0),
])
def test_register_vcpu_info_rejected(dh: DomainHarness, mfn: int, offset: int) -> None:
    arg = dh.put(abi.REGISTER_VCPU_INFO, mfn, offset, 0)
    assert dh.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 0, arg) == -abi.EINVAL
    assert 0 not in dh.dom.evtchn.vcpu_info


def test_singleshot_timer(dh: DomainHarness) -> None:
    ctx = dh.ctx
    now = dh.dom.clock.now_ns()
    arg = dh.put(abi.SINGLESHOT_TIMER, 1, abi.VCPU_SSHOTTMR_future)
    assert dh.call("vcpu_op", abi.VCPUOP_set_singleshot_timer, 0, arg) == -abi.ETIME
    assert ctx.timer_ns is None
    dh.put(abi.SINGLESHOT_TIMER, 1, 0)  # in the past, but without the flag: fires at once
    assert dh.call("vcpu_op", abi.VCPUOP_set_singleshot_timer, 0, arg) == 0
    assert ctx.timer_ns == 1
    dh.put(abi.SINGLESHOT_TIMER, now + 10**12, abi.VCPU_SSHOTTMR_future)
    assert dh.call("vcpu_op", abi.VCPUOP_set_singleshot_timer, 0, arg) == 0
    assert ctx.timer_ns == now + 10**12
    assert dh.call("vcpu_op", abi.VCPUOP_stop_singleshot_timer, 0, arg) == 0
    assert ctx.timer_ns is None


def test_periodic_timer(dh: DomainHarness) -> None:
    arg = dh.put(_U64, 999_999)
    assert dh.call("vcpu_op", abi.VCPUOP_set_periodic_timer, 0, arg) == -abi.EINVAL
    assert dh.ctx.periodic_ns is None
    dh.put(_U64, 4_000_000)
    assert dh.call("vcpu_op", abi.VCPUOP_set_periodic_timer, 0, arg) == 0
    assert dh.ctx.periodic_ns == 4_000_000 and dh.ctx.periodic_next > 0
    assert dh.call("vcpu_op", abi.VCPUOP_stop_periodic_timer, 0, arg) == 0
    assert dh.ctx.periodic_ns is None


def test_runstate_area(dh: DomainHarness) -> None:
    """Registered and written (tests/unit/test_runstate.py has the rest); an unmapped address is accepted
    and never written, as Xen does for an HVM/PVH vCPU."""
    arg = dh.put(_U64, 0xFFFF_8880_0000_1000)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    assert dh.ctx.runstate.area is None
    dh.put(_U64, SCRATCH_VA + 0x100)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    assert dh.ctx.runstate.area == [(SCRATCH_VA + 0x100, abi.RUNSTATE_INFO.size)]
    dh.put(_U64, 0)
    assert dh.call("vcpu_op", abi.VCPUOP_register_runstate_memory_area, 0, arg) == 0
    assert dh.ctx.runstate.area is None


def test_set_timer_op(dh: DomainHarness) -> None:
    assert dh.call("set_timer_op", 123456789) == 0
    assert dh.ctx.timer_ns == 123456789
    assert dh.call("set_timer_op", 0) == 0
    assert dh.ctx.timer_ns is None


# -- memory_op ------------------------------------------------------------------------------------------
def test_map_shared_info(dh: DomainHarness) -> None:
    si = map_shared_info(dh)
    ec = dh.dom.evtchn
    assert ec.shared_info == si
    assert ec.vcpu_info[0] == si
    version, sec, nsec, sec_hi = dh.dom.memory.unpack(abi.WALLCLOCK, si + abi.SI_WC_VERSION)
    assert version % 2 == 0 and sec > 1_600_000_000 and nsec < 10**9 and sec_hi == 0
    _v, _p, tsc, system_time, mul, shift, flags = dh.dom.memory.unpack(abi.VCPU_TIME_INFO, si + abi.VI_TIME)
    assert tsc > 0 and mul == dh.dom.clock.mul and shift == dh.dom.clock.shift


@pytest.mark.parametrize("gpfn", [0x9F, 0xF0, 0xFF, (32 << 20) >> 12, 0x80000, layout.SPECIAL_BASE >> 12,
                                  layout.LAPIC_BASE >> 12, (1 << 52) - 1, (1 << 64) - 1])
def test_shared_info_outside_ram_einval(dh: DomainHarness, gpfn: int) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, gpfn)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EINVAL
    assert dh.dom.evtchn.shared_info is None


def test_add_to_physmap_checks(dh: DomainHarness) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 1, 0x300)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EINVAL
    dh.put(abi.ADD_TO_PHYSMAP, 0, 0, abi.XENMAPSPACE_shared_info, 0, 0x300)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EPERM
    dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_gmfn, 0, 0x300)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EOPNOTSUPP
    dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, GRANT_FRAMES_MAX, 0x300)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EINVAL
    dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, 1 << 40)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EINVAL
    assert dh.dom.evtchn.shared_info is None and dh.dom.grant_frames == {}


def test_memop_continuation_bits_ignored(dh: DomainHarness) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_shared_info, 0, 0x300)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap | 5 << 6, arg) == 0
    assert dh.dom.evtchn.shared_info == 0x300000


def test_grant_frame_outside_ram_gets_a_page(dh: DomainHarness) -> None:
    gpa = 0x8000_0000  # unpopulated space above RAM
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, gpa >> 12)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    assert dh.dom.grant_frames == {0: gpa}
    reg = dh.dom.memory.region_at(gpa)
    assert reg is not None and reg.size == PAGE
    dh.dom.memory.write(gpa + PAGE - 8, b"grant!!!")
    with pytest.raises(Exception):  # noqa: B017 - only that one page exists
        dh.dom.memory.read(gpa + PAGE - 8, 16)


def test_grant_frame_in_ram_uses_ram(dh: DomainHarness) -> None:
    dh.dom.memory.write(0x500000, b"junk")
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 3, 0x500)
    regions = len(dh.dom.memory.regions)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    assert dh.dom.grant_frames == {3: 0x500000}
    assert dh.dom.memory.read(0x500000, 4) == bytes(4)
    assert len(dh.dom.memory.regions) == regions


@pytest.mark.parametrize("gpfn", [0x9F, layout.SPECIAL_BASE >> 12])
def test_grant_frame_over_reserved_memory_einval(dh: DomainHarness, gpfn: int) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, gpfn)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EINVAL
    assert dh.dom.grant_frames == {}


def test_grant_frame_over_lapic_mmio_einval(dh: DomainHarness) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0,
                 layout.LAPIC_BASE >> 12)
    regions = len(dh.dom.memory.regions)
    try:
        ret = dh.call("memory_op", abi.XENMEM_add_to_physmap, arg)
    finally:
        assert len(dh.dom.memory.regions) == regions
    assert ret == -abi.EINVAL


def test_grant_frame_remap_does_not_grow_memory(dh: DomainHarness) -> None:
    regions = len(dh.dom.memory.regions)
    for i in range(8):
        arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, 0x80000 + i)
        assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    assert dh.dom.grant_frames == {0: (0x80000 + 7) << 12}
    assert len(dh.dom.memory.regions) <= regions + 1


def test_grant_frame_moves_back_into_ram(dh: DomainHarness) -> None:
    regions = len(dh.dom.memory.regions)
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, 0x80000)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, 0x500)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    assert dh.dom.grant_frames == {0: 0x500000}
    assert len(dh.dom.memory.regions) == regions


def test_two_grant_frames_cannot_share_a_page(dh: DomainHarness) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, 0x80000)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 1, 0x80000)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == -abi.EINVAL
    assert dh.dom.grant_frames == {0: 0x80000000}


def test_grant_frame_remap_same_place(dh: DomainHarness) -> None:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, 0x80000)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0


def test_memory_map(dh: DomainHarness) -> None:
    entries = layout.e820(32 << 20)
    buf = 0x210000
    arg = dh.put(abi.MEMORY_MAP, 2, buf)  # arch/x86/mm.c: a short buffer gets what it holds
    assert dh.call("memory_op", abi.XENMEM_memory_map, arg) == 0
    assert dh.dom.memory.u32(arg) == 2
    assert dh.dom.memory.read(buf + 40, 20) == bytes(20)
    dh.put(abi.MEMORY_MAP, 128, buf)
    assert dh.call("memory_op", abi.XENMEM_memory_map, arg) == 0
    assert dh.dom.memory.u32(arg) == len(entries)
    got = [abi.E820_ENTRY.unpack(dh.dom.memory.read(buf + i * 20, 20)) for i in range(len(entries))]
    assert got == entries
    assert (0x100000, (32 << 20) - 0x100000, abi.E820_RAM) in got
    assert dh.dom.memory.read(buf + 20 * len(entries), 20) == bytes(20)


def test_memory_map_bad_buffer(dh: DomainHarness) -> None:
    arg = dh.put(abi.MEMORY_MAP, 16, (32 << 20) - 30)
    assert dh.call("memory_op", abi.XENMEM_memory_map, arg) == -abi.EFAULT


def test_reservation_queries(dh: DomainHarness) -> None:
    pages = (32 << 20) // PAGE
    arg = dh.put(struct.Struct("<H"), abi.DOMID_SELF)
    assert dh.call("memory_op", abi.XENMEM_current_reservation, arg) == pages
    assert dh.call("memory_op", abi.XENMEM_maximum_reservation, arg) == pages
    dh.put(struct.Struct("<H"), 5)
    assert dh.call("memory_op", abi.XENMEM_current_reservation, arg) == -abi.EPERM
    assert dh.call("memory_op", abi.XENMEM_maximum_ram_page, 0) == pages - 1
    assert dh.call("memory_op", abi.XENMEM_maximum_gpfn, 0) == pages - 1


# -- event_channel_op -----------------------------------------------------------------------------------
def test_evtchn_send_unbound_port_einval(dh: DomainHarness) -> None:
    for port in (0, 3, 77, 4095, 4096, 0xFFFFFFFF):
        arg = dh.put(abi.EVTCHN_PORT, port)
        assert dh.call("event_channel_op", abi.EVTCHNOP_send, arg) == -abi.EINVAL


def test_evtchn_bind_virq_via_hypercall(dh: DomainHarness) -> None:
    arg = dh.put(abi.EVTCHN_BIND_VIRQ, abi.VIRQ_TIMER, 0, 0xFFFF)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg) == 0
    _, _, port = dh.dom.memory.unpack(abi.EVTCHN_BIND_VIRQ, arg)
    assert port not in dh.dom.reserved_ports and dh.dom.evtchn.ports[port].virq == abi.VIRQ_TIMER
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg) == -abi.EEXIST
    dh.put(abi.EVTCHN_BIND_VIRQ, abi.NR_VIRQS, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg) == -abi.EINVAL
    dh.put(abi.EVTCHN_BIND_VIRQ, abi.VIRQ_DEBUG, 1, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg) == -abi.ENOENT


def test_evtchn_ipi_send_sets_pending(dh: DomainHarness) -> None:
    si = map_shared_info(dh)
    arg = dh.put(abi.EVTCHN_BIND_IPI, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_ipi, arg) == 0
    port = dh.dom.memory.u32(arg + 4)
    dh.put(abi.EVTCHN_PORT, port)
    assert dh.call("event_channel_op", abi.EVTCHNOP_send, arg) == 0
    word, bit = divmod(port, 64)
    assert dh.dom.memory.u64(si + abi.SI_EVTCHN_PENDING + 8 * word) >> bit & 1
    assert dh.dom.evtchn.upcall_pending(0)
    dh.put(abi.EVTCHN_BIND_IPI, 1, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_ipi, arg) == -abi.ENOENT


def test_evtchn_send_to_console_drains_ring(dh: DomainHarness) -> None:
    ring = layout.special_gpa(layout.CONSOLE_PAGE)
    mem = dh.dom.memory
    mem.write(ring + 1024, b"hvc0 says hi")
    mem.set_u32(ring + 3072 + 12, 12)  # out_prod
    # domain 0's console backend, as the daemon wires it (here it reads this process's mapping)
    con = ConsoleBackend(mem, ring, dh.output.append, dh.dom.console_notify)
    dh.dom.on_console_kick = con.kick
    arg = dh.put(abi.EVTCHN_PORT, dh.dom.console_port)
    assert dh.call("event_channel_op", abi.EVTCHNOP_send, arg) == 0
    assert b"".join(dh.output) == b"hvc0 says hi"
    assert mem.u32(ring + 3072 + 8) == 12
    assert dh.dom.evtchn.has_queued()  # the backend's notification back to the guest


def test_evtchn_close(dh: DomainHarness) -> None:
    arg = dh.put(abi.EVTCHN_PORT, dh.dom.console_port)
    assert dh.call("event_channel_op", abi.EVTCHNOP_close, arg) == -abi.EINVAL
    assert dh.dom.console_port in dh.dom.evtchn.ports
    dh.put(abi.EVTCHN_PORT, 55)
    assert dh.call("event_channel_op", abi.EVTCHNOP_close, arg) == -abi.EINVAL
    dh.put(abi.EVTCHN_BIND_IPI, 0, 0)
    dh.call("event_channel_op", abi.EVTCHNOP_bind_ipi, arg)
    port = dh.dom.memory.u32(arg + 4)
    dh.put(abi.EVTCHN_PORT, port)
    assert dh.call("event_channel_op", abi.EVTCHNOP_close, arg) == 0
    assert port not in dh.dom.evtchn.ports


def test_evtchn_alloc_unbound_and_status(dh: DomainHarness) -> None:
    arg = dh.put(abi.EVTCHN_ALLOC_UNBOUND, abi.DOMID_SELF, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_alloc_unbound, arg) == 0
    port = dh.dom.memory.unpack(abi.EVTCHN_ALLOC_UNBOUND, arg)[2]
    assert dh.dom.evtchn.ports[port].state == abi.EVTCHNSTAT_unbound
    dh.put(abi.EVTCHN_ALLOC_UNBOUND, 3, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_alloc_unbound, arg) == -abi.EPERM
    dh.put(abi.EVTCHN_STATUS, abi.DOMID_SELF, port, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_status, arg) == 0
    assert dh.dom.memory.unpack(abi.EVTCHN_STATUS, arg)[2] == abi.EVTCHNSTAT_unbound
    assert dh.dom.memory.u32(arg + abi.EVTCHN_STATUS_UNION) == 0  # remote dom
    dh.put(abi.EVTCHN_STATUS, abi.DOMID_SELF, 40, 0xFF, 0xFF)  # free, in the first bucket: closed
    assert dh.call("event_channel_op", abi.EVTCHNOP_status, arg) == 0
    assert dh.dom.memory.unpack(abi.EVTCHN_STATUS, arg)[2:] == (abi.EVTCHNSTAT_closed, 0)
    dh.put(abi.EVTCHN_STATUS, abi.DOMID_SELF, 4000, 0xFF, 0xFF)  # Xen's port_is_valid: no such port
    assert dh.call("event_channel_op", abi.EVTCHNOP_status, arg) == -abi.EINVAL
    assert dh.dom.memory.unpack(abi.EVTCHN_STATUS, arg)[2:] == (0xFF, 0xFF)
    dh.put(abi.EVTCHN_STATUS, 9, port, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_status, arg) == -abi.EPERM


def test_evtchn_status_virq(dh: DomainHarness) -> None:
    arg = dh.put(abi.EVTCHN_BIND_VIRQ, abi.VIRQ_DEBUG, 0, 0)
    dh.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg)
    port = dh.dom.memory.u32(arg + 8)
    dh.put(abi.EVTCHN_STATUS, abi.DOMID_SELF, port, 0, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_status, arg) == 0
    assert dh.dom.memory.unpack(abi.EVTCHN_STATUS, arg)[2] == abi.EVTCHNSTAT_virq
    assert dh.dom.memory.u32(arg + abi.EVTCHN_STATUS_UNION) == abi.VIRQ_DEBUG


def test_evtchn_bind_vcpu(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    arg = dh.put(abi.EVTCHN_BIND_VIRQ, abi.VIRQ_TIMER, 0, 0)
    dh.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg)
    timer = dh.dom.memory.u32(arg + 8)
    dh.put(abi.EVTCHN_BIND_VCPU, timer, 1)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_vcpu, arg) == -abi.EINVAL  # per-vCPU VIRQ
    assert dh.dom.evtchn.ports[timer].vcpu == 0  # the per-vCPU timer stays where it is
    cport = dh.dom.console_port
    dh.put(abi.EVTCHN_BIND_VCPU, cport, 1)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_vcpu, arg) == 0
    assert dh.dom.evtchn.ports[cport].vcpu == 1
    dh.put(abi.EVTCHN_BIND_VCPU, cport, 2)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_vcpu, arg) == -abi.ENOENT
    dh.put(abi.EVTCHN_BIND_IPI, 0, 0)
    dh.call("event_channel_op", abi.EVTCHNOP_bind_ipi, arg)
    ipi = dh.dom.memory.u32(arg + 4)
    dh.put(abi.EVTCHN_BIND_VCPU, ipi, 1)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_vcpu, arg) == -abi.EINVAL
    dh.put(abi.EVTCHN_BIND_VCPU, 3000, 1)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_vcpu, arg) == -abi.EINVAL


def test_evtchn_unmask_via_hypercall(dh: DomainHarness) -> None:
    arg = dh.put(abi.EVTCHN_PORT, 5)
    assert dh.call("event_channel_op", abi.EVTCHNOP_unmask, arg) == 0  # an existing port: nothing to do
    si = map_shared_info(dh)
    dh.dom.memory.set_u64(si + abi.SI_EVTCHN_MASK, 1 << 5)
    assert dh.call("event_channel_op", abi.EVTCHNOP_unmask, arg) == 0
    assert dh.dom.memory.u64(si + abi.SI_EVTCHN_MASK) == 0
    dh.put(abi.EVTCHN_PORT, 4096)
    assert dh.call("event_channel_op", abi.EVTCHNOP_unmask, arg) == -abi.EINVAL


# -- sched_op -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", [6, 7, 0xFFFFFFFF])
def test_shutdown_bad_reason(dh: DomainHarness, reason: int) -> None:
    arg = dh.put(abi.EVTCHN_PORT, reason)
    assert dh.call("sched_op", abi.SCHEDOP_shutdown, arg) == -abi.EINVAL
    assert not dh.dom.finished and dh.dom.outcome is None


@pytest.mark.parametrize(("reason", "outcome"), sorted(abi.SHUTDOWN_NAMES.items()))
def test_shutdown(dh: DomainHarness, reason: int, outcome: str) -> None:
    arg = dh.put(abi.EVTCHN_PORT, reason)
    assert dh.call("sched_op", abi.SCHEDOP_shutdown, arg) == 0
    assert dh.dom.finished and dh.dom.done.is_set()
    assert dh.dom.outcome == outcome and dh.dom.outcome_detail == "SCHEDOP_shutdown"
    # a second shutdown does not change the outcome
    dh.put(abi.EVTCHN_PORT, abi.SHUTDOWN_crash if reason != abi.SHUTDOWN_crash else abi.SHUTDOWN_poweroff)
    assert dh.call("sched_op", abi.SCHEDOP_shutdown, arg) == 0
    assert dh.dom.outcome == outcome


def test_sched_yield_and_block(dh: DomainHarness) -> None:
    assert dh.call("sched_op", abi.SCHEDOP_yield, 0) == 0
    assert not dh.ctx.blocked
    assert dh.call("sched_op", abi.SCHEDOP_block, 0) == 0
    assert dh.ctx.blocked and dh.ctx.poll_ports is None
    assert dh.call("sched_op", abi.SCHEDOP_shutdown_code, 0) == 0


def test_sched_poll(dh: DomainHarness) -> None:
    ports_buf = 0x220000
    dh.dom.memory.write(ports_buf, struct.pack("<3I", 3, 4, 5))
    arg = dh.put(abi.SCHED_POLL, ports_buf, 129, 0)
    assert dh.call("sched_op", abi.SCHEDOP_poll, arg) == -abi.EINVAL
    assert not dh.ctx.blocked
    dh.put(abi.SCHED_POLL, ports_buf, 3, 10**15)
    assert dh.call("sched_op", abi.SCHEDOP_poll, arg) == 0
    assert dh.ctx.blocked and dh.ctx.poll_ports == [3, 4, 5] and dh.ctx.poll_deadline == 10**15
    dh.ctx.blocked = False
    si = map_shared_info(dh)
    dh.dom.memory.set_u64(si + abi.SI_EVTCHN_PENDING, 1 << 4)
    assert dh.call("sched_op", abi.SCHEDOP_poll, arg) == 0
    assert not dh.ctx.blocked  # port 4 already pending: no wait
    dh.put(abi.SCHED_POLL, (32 << 20) - 8, 3, 0)
    assert dh.call("sched_op", abi.SCHEDOP_poll, arg) == -abi.EFAULT



def test_send_to_a_masked_port_wakes_the_vcpu_polling_it(make_domain: Callable[..., DomainHarness]) -> None:
    """Linux's PV spinlock waiter (arch/x86/xen/spinlock.c xen_qlock_wait) polls its per-CPU kicker port,
    which stays masked, with interrupts off and no timeout; the unlocking CPU's EVTCHNOP_send must wake
    it (Xen's evtchn_check_pollers), or it sleeps for ever (the SMP guest hung at boot)."""
    dh = make_domain(vcpus=2)
    si = map_shared_info(dh)
    arg = dh.put(abi.EVTCHN_BIND_IPI, 1, 0)
    assert dh.call("event_channel_op", abi.EVTCHNOP_bind_ipi, arg) == 0
    port = dh.dom.memory.u32(arg + 4)
    word, bit = divmod(port, 64)
    dh.dom.memory.set_u64(si + abi.SI_EVTCHN_MASK + 8 * word, 1 << bit)
    poller = dh.dom.vcpus[1]
    poller.host_tid = -1  # it runs on a thread of its own
    woken: list[int] = []
    poller.wake = lambda: woken.append(1)  # type: ignore[method-assign]
    ports_buf = 0x220000
    dh.dom.memory.write(ports_buf, struct.pack("<I", port))
    poll = dh.put(abi.SCHED_POLL, ports_buf, 1, 0, at=SCRATCH_VA + 0x400)
    assert dh.call("sched_op", abi.SCHEDOP_poll, poll, vcpu=1) == 0
    assert poller.blocked and poller.poll_ports == [port] and not woken
    dh.put(abi.EVTCHN_PORT, port)
    assert dh.call("event_channel_op", abi.EVTCHNOP_send, arg, vcpu=0) == 0
    assert woken  # masked: no upcall, but the poller is woken
    assert not dh.dom.evtchn.upcall_pending(1)
    assert dh.dom.evtchn.any_pending(poller.poll_ports)  # what its next step finds: it runs on

# -- grant_table_op -------------------------------------------------------------------------------------
def test_grant_query_size(dh: DomainHarness) -> None:
    arg = dh.put(abi.GNTTAB_QUERY_SIZE, abi.DOMID_SELF, 0, 0, 0)
    assert dh.call("grant_table_op", abi.GNTTABOP_query_size, arg, 2) == -abi.EINVAL
    assert dh.call("grant_table_op", abi.GNTTABOP_query_size, arg, 1) == 0
    assert dh.dom.memory.unpack(abi.GNTTAB_QUERY_SIZE, arg) == (abi.DOMID_SELF, 0, GRANT_FRAMES_MAX,
                                                                abi.GNTST_okay)
    dh.put(abi.GNTTAB_QUERY_SIZE, 4, 0, 0, 0)
    assert dh.call("grant_table_op", abi.GNTTABOP_query_size, arg, 1) == 0
    assert dh.dom.memory.unpack(abi.GNTTAB_QUERY_SIZE, arg)[3] == abi.GNTST_bad_domain
    dh.put(abi.GNTTAB_QUERY_SIZE, 0, 0, 0, 0)  # domain 0 exists: not ours to ask about (xsm)
    assert dh.call("grant_table_op", abi.GNTTABOP_query_size, arg, 1) == 0
    assert dh.dom.memory.unpack(abi.GNTTAB_QUERY_SIZE, arg)[3] == abi.GNTST_permission_denied


# -- resource use ---------------------------------------------------------------------------------------
def test_unknown_hypercall_numbers_do_not_grow_state(dh: DomainHarness) -> None:
    for nr in range(1000, 3000):
        assert dh.call(nr, nr) == -abi.ENOSYS
    assert len(dh.dom.stats) < 100
    assert len(dh.dom.hypercalls.unknown_logged) < 100


def test_bad_arguments_get_xens_errors(dh: DomainHarness) -> None:
    """What the PVH test kernel's probes found (tests/pvh_kernel/cases_probes.c), each as Xen answers."""
    arg = dh.put(struct.Struct("<HI"), 0, 0)
    assert dh.call("sched_op", abi.SCHEDOP_remote_shutdown, arg) == -abi.EPERM
    dh.put(struct.Struct("<HI"), abi.DOMID_SELF, 0)
    assert dh.call("sched_op", abi.SCHEDOP_remote_shutdown, arg) == -abi.ESRCH
    assert not dh.dom.finished
    ports = SCRATCH_VA + 0x800
    dh.dom.memory.write(ports, (5000).to_bytes(4, "little"))
    dh.put(abi.SCHED_POLL, ports, 1, 1)
    assert dh.call("sched_op", abi.SCHEDOP_poll, arg) == -abi.EINVAL
    dh.put(abi.HVM_PARAM, abi.DOMID_SELF, 5, 0)  # HVM_PARAM_IOREQ_PFN: the device model's
    assert dh.call("hvm_op", abi.HVMOP_get_param, arg) == -abi.EPERM
