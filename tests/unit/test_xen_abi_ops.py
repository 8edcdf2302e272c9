"""The sub-ops docs/xen-abi.md lists as Xen's answers: grant setup_table/version/copy/swap, multicall,
vm_assist, physdev_op, SCHEDOP_watchdog and the XENMEM sub-ops answered without doing anything, from a
64-bit and from a 32-bit vCPU, good and bad arguments."""

from __future__ import annotations

import struct
import time

import pytest
from unit_support import SCRATCH_VA, DomainHarness

from hyperdisco.core.grant import GRANT_ENTRY_V1, GTF_permit_access, GTF_reading, GTF_readonly, GTF_writing
from hyperdisco.xen import abi

GRANT_GPFN = 0x3000  # above the 32 MiB test domain's RAM
BAD_VA = 0x7FFF_0000_0000  # mapped by nothing
ST = struct.Struct("<h")


def place_frame(dh: DomainHarness, idx: int = 0, gpfn: int = GRANT_GPFN) -> int:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, idx, gpfn,
                 at=SCRATCH_VA + 0x800)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    return gpfn << 12


def gnt(dh: DomainHarness, cmd: int, arg: int, count: int = 1, compat: bool = False) -> int:
    return dh.call("grant_table_op", cmd, arg, count, compat=compat)


# -- GNTTABOP_setup_table ---------------------------------------------------------------------------------
def test_setup_table_reports_placed_frames_and_invalid_gfn(dh: DomainHarness) -> None:
    place_frame(dh, 0)
    frames = SCRATCH_VA + 0x400
    arg = dh.put(abi.GNTTAB_SETUP_TABLE, abi.DOMID_SELF, 3, 7, frames)
    assert gnt(dh, abi.GNTTABOP_setup_table, arg) == 0
    assert dh.dom.memory.unpack(abi.GNTTAB_SETUP_TABLE, arg)[2] == abi.GNTST_okay
    got = struct.unpack_from("<3Q", dh.dom.memory.read(frames, 24))
    assert got == (GRANT_GPFN, abi.INVALID_GFN, abi.INVALID_GFN)


def test_setup_table_compat_layout_truncates_frames(dh: DomainHarness) -> None:
    place_frame(dh, 0)
    frames = SCRATCH_VA + 0x400
    arg = dh.put(abi.GNTTAB_SETUP_TABLE_COMPAT, abi.DOMID_SELF, 2, 7, frames)
    assert gnt(dh, abi.GNTTABOP_setup_table, arg, compat=True) == 0
    assert dh.dom.memory.unpack(abi.GNTTAB_SETUP_TABLE_COMPAT, arg)[2] == abi.GNTST_okay
    assert struct.unpack_from("<2I", dh.dom.memory.read(frames, 8)) == (GRANT_GPFN, 0xFFFFFFFF)


@pytest.mark.parametrize(("dom", "nr", "frames", "status"), [
    (abi.DOMID_SELF, 33, SCRATCH_VA + 0x400, abi.GNTST_general_error),  # above max_grant_frames (32)
    (0, 1, SCRATCH_VA + 0x400, abi.GNTST_permission_denied),  # XSM_TARGET refuses another domain
    (0x7FF2, 1, SCRATCH_VA + 0x400, abi.GNTST_bad_domain),  # a reserved ID names no domain
    (abi.DOMID_SELF, 1, BAD_VA, abi.GNTST_bad_virt_addr),  # the frame list cannot be written
])
def test_setup_table_statuses(dh: DomainHarness, dom: int, nr: int, frames: int, status: int) -> None:
    arg = dh.put(abi.GNTTAB_SETUP_TABLE, dom, nr, 7, frames)
    assert gnt(dh, abi.GNTTABOP_setup_table, arg) == 0
    assert dh.dom.memory.unpack(abi.GNTTAB_SETUP_TABLE, arg)[2] == status


def test_setup_table_call_errors(dh: DomainHarness) -> None:
    arg = dh.put(abi.GNTTAB_SETUP_TABLE, abi.DOMID_SELF, 1, 7, SCRATCH_VA + 0x400)
    assert gnt(dh, abi.GNTTABOP_setup_table, arg, count=2) == -abi.EINVAL
    assert gnt(dh, abi.GNTTABOP_setup_table, BAD_VA) == -abi.EFAULT
    assert gnt(dh, abi.GNTTABOP_copy, arg, count=0x8000_0000) == -abi.EINVAL  # (int)count < 0


# -- set_version / get_version ----------------------------------------------------------------------------
@pytest.mark.parametrize(("version", "ret"), [(1, 0), (2, -abi.ENOSYS), (0, -abi.EINVAL), (3, -abi.EINVAL)])
def test_set_version_is_v1_only(dh: DomainHarness, version: int, ret: int) -> None:
    arg = dh.put(abi.GNTTAB_SET_VERSION, version)
    assert gnt(dh, abi.GNTTABOP_set_version, arg) == ret
    assert dh.dom.memory.unpack(abi.GNTTAB_SET_VERSION, arg) == (1,)  # the version in force, written back


@pytest.mark.parametrize(("dom", "ret", "version"), [
    (abi.DOMID_SELF, 0, 1), (0, -abi.EPERM, 0xAA), (0x7FF5, -abi.ESRCH, 0xAA)])
def test_get_version(dh: DomainHarness, dom: int, ret: int, version: int) -> None:
    arg = dh.put(abi.GNTTAB_GET_VERSION, dom, 0xAA)
    assert gnt(dh, abi.GNTTABOP_get_version, arg) == ret
    assert dh.dom.memory.unpack(abi.GNTTAB_GET_VERSION, arg)[1] == version
    assert gnt(dh, abi.GNTTABOP_get_version, BAD_VA) == -abi.EFAULT


def test_other_commands_are_enosys_for_pvh(dh: DomainHarness) -> None:
    # hvm_grant_table_op's allow-list: transfer (4), get_status_frames (9), cache_flush (12) are not on it
    for cmd in (4, 9, 12, 3, 7):
        assert gnt(dh, cmd, SCRATCH_VA) == -abi.ENOSYS


# -- GNTTABOP_copy ----------------------------------------------------------------------------------------
SRC_GPA, DST_GPA = 0x400000, 0x401000


def copy_op(dh: DomainHarness, src: tuple[int, int, int], dst: tuple[int, int, int], length: int,
            flags: int, compat: bool = False, at: int = SCRATCH_VA) -> int:
    layout = abi.GNTTAB_COPY_COMPAT if compat else abi.GNTTAB_COPY
    dh.dom.memory.pack(layout, at, *src, *dst, length, flags, 0x55)
    return at


def copy_status(dh: DomainHarness, at: int, compat: bool = False) -> int:
    layout = abi.GNTTAB_COPY_COMPAT if compat else abi.GNTTAB_COPY
    return dh.dom.memory.unpack(layout, at)[8]


@pytest.mark.parametrize("compat", [False, True])
def test_copy_between_own_frames(dh: DomainHarness, compat: bool) -> None:
    mem = dh.dom.memory
    mem.write(SRC_GPA, bytes(range(256)) * 16)
    mem.write(DST_GPA, b"\xee" * 4096)
    at = copy_op(dh, (SRC_GPA >> 12, abi.DOMID_SELF, 16), (DST_GPA >> 12, abi.DOMID_SELF, 100), 50, 0, compat)
    assert gnt(dh, abi.GNTTABOP_copy, at, compat=compat) == 0
    assert copy_status(dh, at, compat) == abi.GNTST_okay
    assert mem.read(DST_GPA + 100, 50) == bytes(range(16, 66))
    assert mem.read(DST_GPA + 99, 1) == b"\xee" and mem.read(DST_GPA + 150, 1) == b"\xee"


def test_copy_through_own_grants_sets_and_clears_nothing_else(dh: DomainHarness) -> None:
    table, me, mem = place_frame(dh), dh.dom.domid, dh.dom.memory
    mem.pack(GRANT_ENTRY_V1, table + 8 * 10, GTF_permit_access | GTF_readonly, me, SRC_GPA >> 12)
    mem.pack(GRANT_ENTRY_V1, table + 8 * 11, GTF_permit_access, me, DST_GPA >> 12)
    mem.write(SRC_GPA, b"granted!")
    at = copy_op(dh, (10, me, 0), (11, abi.DOMID_SELF, 8), 8, abi.GNTCOPY_source_gref | abi.GNTCOPY_dest_gref)
    assert gnt(dh, abi.GNTTABOP_copy, at) == 0
    assert copy_status(dh, at) == abi.GNTST_okay
    assert mem.read(DST_GPA + 8, 8) == b"granted!"
    for ref in (10, 11):  # the busy bits are released after the copy
        assert mem.unpack(GRANT_ENTRY_V1, table + 8 * ref)[0] & (GTF_reading | GTF_writing) == 0


@pytest.mark.parametrize(("src", "dst", "length", "flags", "status"), [
    # only DOMID_SELF may name a frame, even the domain's own ID (gnttab_copy_lock_domain)
    ((0x400, 1, 0), (0x401, abi.DOMID_SELF, 0), 8, 0, abi.GNTST_permission_denied),
    ((0x400, abi.DOMID_SELF, 0), (0x401, 0, 0), 8, 0, abi.GNTST_permission_denied),
    ((3, 0x7FF4, 0), (0x401, abi.DOMID_SELF, 0), 8, abi.GNTCOPY_source_gref, abi.GNTST_bad_domain),
    ((0xFEE00, abi.DOMID_SELF, 0), (0x401, abi.DOMID_SELF, 0), 8, 0, abi.GNTST_bad_page),  # not RAM
    ((0x400, abi.DOMID_SELF, 0), (1 << 40, abi.DOMID_SELF, 0), 8, 0, abi.GNTST_bad_page),
    ((0x400, abi.DOMID_SELF, 4000), (0x401, abi.DOMID_SELF, 0), 200, 0, abi.GNTST_bad_copy_arg),
    ((0x400, abi.DOMID_SELF, 0), (0x401, abi.DOMID_SELF, 4095), 2, 0, abi.GNTST_bad_copy_arg),
    ((5000, abi.DOMID_SELF, 0), (0x401, abi.DOMID_SELF, 0), 8, abi.GNTCOPY_source_gref, abi.GNTST_bad_gntref),
    ((5, 0, 0), (0x401, abi.DOMID_SELF, 0), 8, abi.GNTCOPY_source_gref, abi.GNTST_general_error),  # dom0's
    ((600, 0, 0), (0x401, abi.DOMID_SELF, 0), 8, abi.GNTCOPY_source_gref, abi.GNTST_bad_gntref),
    ((1 << 32 | 5, 0, 0), (0x401, abi.DOMID_SELF, 0), 8, abi.GNTCOPY_source_gref, abi.GNTST_general_error),
])
def test_copy_refusals(dh: DomainHarness, src: tuple[int, int, int], dst: tuple[int, int, int], length: int,
                       flags: int, status: int) -> None:
    dh.dom.memory.write(DST_GPA, b"\xee" * 4096)
    at = copy_op(dh, src, dst, length, flags)
    assert gnt(dh, abi.GNTTABOP_copy, at) == 0
    assert copy_status(dh, at) == status
    assert dh.dom.memory.read(DST_GPA, 4096) == b"\xee" * 4096


def test_copy_refuses_readonly_grant_as_destination_and_foreign_grants(dh: DomainHarness) -> None:
    table, me, mem = place_frame(dh), dh.dom.domid, dh.dom.memory
    mem.pack(GRANT_ENTRY_V1, table + 8 * 1, GTF_permit_access | GTF_readonly, me, DST_GPA >> 12)
    mem.pack(GRANT_ENTRY_V1, table + 8 * 2, GTF_permit_access, 7, DST_GPA >> 12)  # granted to domain 7
    mem.pack(GRANT_ENTRY_V1, table + 8 * 3, GTF_permit_access, me, 0xFEE00)  # not RAM
    ops = [((0x400, abi.DOMID_SELF, 0), (r, abi.DOMID_SELF, 0)) for r in (1, 2, 3)]
    for i, (src, dst) in enumerate(ops):
        copy_op(dh, src, dst, 8, abi.GNTCOPY_dest_gref, at=SCRATCH_VA + 40 * i)
    assert gnt(dh, abi.GNTTABOP_copy, SCRATCH_VA, count=3) == 0
    assert [copy_status(dh, SCRATCH_VA + 40 * i) for i in range(3)] == [
        abi.GNTST_general_error, abi.GNTST_general_error, abi.GNTST_bad_page]


def test_copy_fault_mid_list_is_efault_with_earlier_ops_done(dh: DomainHarness) -> None:
    ram_end = dh.dom.memory.ram_bytes
    at = ram_end - 40  # the second op is past the end of RAM
    dh.dom.memory.write(SRC_GPA, b"first op")
    copy_op(dh, (SRC_GPA >> 12, abi.DOMID_SELF, 0), (DST_GPA >> 12, abi.DOMID_SELF, 0), 8, 0, at=at)
    assert gnt(dh, abi.GNTTABOP_copy, at, count=2) == -abi.EFAULT
    assert copy_status(dh, at) == abi.GNTST_okay
    assert dh.dom.memory.read(DST_GPA, 8) == b"first op"


# -- swap_grant_ref ---------------------------------------------------------------------------------------
def test_swap_grant_ref(dh: DomainHarness) -> None:
    table, mem = place_frame(dh), dh.dom.memory
    mem.pack(GRANT_ENTRY_V1, table + 8 * 1, GTF_permit_access, 0, 0x400)
    mem.pack(GRANT_ENTRY_V1, table + 8 * 2, GTF_permit_access | GTF_readonly, 0, 0x401)
    ops = [(1, 2), (7, 7), (1, 512), (512, 1)]
    for i, (a, b) in enumerate(ops):
        dh.put(abi.GNTTAB_SWAP_GRANT_REF, a, b, 0x55, at=SCRATCH_VA + 12 * i)
    assert gnt(dh, abi.GNTTABOP_swap_grant_ref, SCRATCH_VA, count=4) == 0
    statuses = [mem.unpack(abi.GNTTAB_SWAP_GRANT_REF, SCRATCH_VA + 12 * i)[2] for i in range(4)]
    assert statuses == [abi.GNTST_okay, abi.GNTST_okay, abi.GNTST_bad_gntref, abi.GNTST_bad_gntref]
    assert mem.unpack(GRANT_ENTRY_V1, table + 8) == (GTF_permit_access | GTF_readonly, 0, 0x401)
    assert mem.unpack(GRANT_ENTRY_V1, table + 16) == (GTF_permit_access, 0, 0x400)
    with dh.dom.grants.access(2, 0, write=False):  # in use: eagain, nothing swapped
        dh.put(abi.GNTTAB_SWAP_GRANT_REF, 1, 2, 0)
        assert gnt(dh, abi.GNTTABOP_swap_grant_ref, SCRATCH_VA) == 0
        assert mem.unpack(abi.GNTTAB_SWAP_GRANT_REF, SCRATCH_VA)[2] == abi.GNTST_eagain


# -- multicall --------------------------------------------------------------------------------------------
def test_multicall_dispatches_each_entry_and_writes_results(dh: DomainHarness) -> None:
    mem = dh.dom.memory
    feat = SCRATCH_VA + 0x800
    mem.pack(struct.Struct("<II"), feat, 0, 0)
    entries = [
        (17, 0, abi.XENVER_version, 0, 0, 0, 0, 0),
        (17, 0, abi.XENVER_get_features, feat, 0, 0, 0, 0),
        (99, 0, 0, 0, 0, 0, 0, 0),  # no such hypercall
        (13, 0, SCRATCH_VA, 1, 0, 0, 0, 0),  # a multicall inside: -EINVAL
        (29, 0, abi.SCHEDOP_poll, BAD_VA, 0, 0, 0, 0),  # its own -EFAULT
    ]
    for i, e in enumerate(entries):
        mem.pack(abi.MULTICALL_ENTRY, SCRATCH_VA + 64 * i, *e)
    assert dh.call("multicall", SCRATCH_VA, len(entries)) == 0
    results = [mem.unpack(abi.MULTICALL_ENTRY, SCRATCH_VA + 64 * i)[1] for i in range(len(entries))]
    neg = [r - (1 << 64) if r >> 63 else r for r in results]
    assert neg == [4 << 16 | 17, 0, -abi.ENOSYS, -abi.EINVAL, -abi.EFAULT]
    assert mem.unpack(struct.Struct("<II"), feat)[1] & 1 << abi.XENFEAT_hvm_callback_vector
    assert dh.call("xen_version", abi.XENVER_version) == 4 << 16 | 17  # not left "inside a multicall"


def test_multicall_compat_and_faults(dh: DomainHarness) -> None:
    mem = dh.dom.memory
    mem.pack(abi.MULTICALL_ENTRY_COMPAT, SCRATCH_VA, 17, 0, abi.XENVER_version, 0, 0, 0, 0, 0)
    mem.pack(abi.MULTICALL_ENTRY_COMPAT, SCRATCH_VA + 32, 21, 0, 0, 9, 0, 0, 0, 0)  # vm_assist bad type
    assert dh.call("multicall", SCRATCH_VA, 2, compat=True) == 0
    assert mem.unpack(abi.MULTICALL_ENTRY_COMPAT, SCRATCH_VA)[1] == 4 << 16 | 17
    assert mem.unpack(abi.MULTICALL_ENTRY_COMPAT, SCRATCH_VA + 32)[1] == (-abi.EINVAL) & 0xFFFFFFFF
    # an entry past the end of RAM: -EFAULT, the entries before it done
    at = mem.ram_bytes - 64
    mem.pack(abi.MULTICALL_ENTRY, at, 17, 0, abi.XENVER_version, 0, 0, 0, 0, 0)
    assert dh.call("multicall", at, 3) == -abi.EFAULT
    assert mem.unpack(abi.MULTICALL_ENTRY, at)[1] == 4 << 16 | 17
    assert dh.call("multicall", BAD_VA, 1) == -abi.EFAULT
    assert dh.call("multicall", BAD_VA, 0) == 0


# -- vm_assist, physdev_op --------------------------------------------------------------------------------
def test_vm_assist_allows_only_runstate_update_flag(dh: DomainHarness) -> None:
    assert dh.call("vm_assist", abi.VMASST_CMD_enable, abi.VMASST_TYPE_runstate_update_flag) == 0
    assert dh.dom.vm_assist == 1 << 5
    assert dh.call("vm_assist", abi.VMASST_CMD_disable, abi.VMASST_TYPE_runstate_update_flag) == 0
    assert dh.dom.vm_assist == 0
    for vtype in (0, 1, 2, 3, 4, 6, 63, 64, 1 << 40):  # PV-only types, out of range
        assert dh.call("vm_assist", abi.VMASST_CMD_enable, vtype) == -abi.EINVAL
    assert dh.call("vm_assist", 7, abi.VMASST_TYPE_runstate_update_flag) == -abi.ENOSYS


def test_physdev_op_for_a_pvh_domu(dh: DomainHarness) -> None:
    for cmd in (abi.PHYSDEVOP_eoi, abi.PHYSDEVOP_irq_status_query, abi.PHYSDEVOP_get_free_pirq, 21, 999):
        assert dh.call("physdev_op", cmd, SCRATCH_VA) == -abi.ENOSYS
    for cmd in (abi.PHYSDEVOP_map_pirq, abi.PHYSDEVOP_unmap_pirq):
        dh.put(struct.Struct("<H"), abi.DOMID_SELF)
        assert dh.call("physdev_op", cmd, SCRATCH_VA) == -abi.EPERM
        dh.put(struct.Struct("<H"), 0x7FF3)
        assert dh.call("physdev_op", cmd, SCRATCH_VA) == -abi.ESRCH
        assert dh.call("physdev_op", cmd, BAD_VA) == -abi.EFAULT


# -- SCHEDOP_watchdog -------------------------------------------------------------------------------------
def test_watchdog_ids_and_errors(dh: DomainHarness) -> None:
    def wd(wid: int, timeout: int) -> int:
        arg = dh.put(abi.SCHED_WATCHDOG, wid, timeout)
        return dh.call("sched_op", abi.SCHEDOP_watchdog, arg)
    try:
        assert wd(1, 30) == -abi.EINVAL  # not allocated
        assert wd(3, 30) == -abi.EINVAL  # > NR_DOMAIN_WATCHDOG_TIMERS
        assert wd(0, 300) == 1
        assert wd(0, 300) == 2
        assert wd(0, 300) == -abi.ENOSPC
        assert wd(2, 0) == 0  # freed
        assert wd(2, 30) == -abi.EINVAL
        assert wd(0, 300) == 2
        assert wd(1, 600) == 0  # re-armed
        assert dh.call("sched_op", abi.SCHEDOP_watchdog, BAD_VA) == -abi.EFAULT
        assert not dh.dom.finished
    finally:
        dh.dom.hypercalls.misc.close()


def test_watchdog_fires_and_shuts_the_domain_down(dh: DomainHarness) -> None:
    arg = dh.put(abi.SCHED_WATCHDOG, 0, 1)
    assert dh.call("sched_op", abi.SCHEDOP_watchdog, arg) == 1
    deadline = time.monotonic() + 30
    while not dh.dom.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dh.dom.finished and dh.dom.outcome == "watchdog"


# -- XENMEM -------------------------------------------------------------------------------------------------
def test_xenmem_privileged_and_absent_subops(dh: DomainHarness) -> None:
    assert dh.call("memory_op", 12, SCRATCH_VA) == -abi.ENOSYS  # machphys_mapping: hvm_memory_op
    assert dh.call("memory_op", 10, SCRATCH_VA) == -abi.EPERM  # machine_memory_map
    assert dh.call("memory_op", 24, SCRATCH_VA) == -abi.EPERM  # claim_pages
    pod = SCRATCH_VA + 0x100
    dh.dom.memory.write(pod, bytes(40))
    dh.dom.memory.pack(struct.Struct("<H"), pod + 32, abi.DOMID_SELF)
    assert dh.call("memory_op", 17, pod) == -abi.EPERM
    dh.dom.memory.pack(struct.Struct("<H"), pod + 32, 0x7FF6)
    assert dh.call("memory_op", 16, pod) == -abi.ESRCH
    vnuma = SCRATCH_VA + 0x200
    dh.dom.memory.write(vnuma, bytes(40))
    dh.dom.memory.pack(struct.Struct("<HH"), vnuma, abi.DOMID_SELF, 0)
    assert dh.call("memory_op", 26, vnuma) == -abi.EOPNOTSUPP
    dh.dom.memory.pack(struct.Struct("<HH"), vnuma, abi.DOMID_SELF, 1)
    assert dh.call("memory_op", 26, vnuma) == -abi.EINVAL
    dh.dom.memory.pack(struct.Struct("<HH"), vnuma, 0, 0)
    assert dh.call("memory_op", 26, vnuma) == -abi.EPERM
    assert dh.call("memory_op", 26, BAD_VA) == -abi.EFAULT
