"""grant_table_op sub-operations besides map/unmap/query_size: setup_table, set_version, get_version,
copy and swap_grant_ref, as Xen answers them for a PVH domU (xen/common/grant_table.c; the HVM allow-list
is xen/arch/x86/hvm/hypercall.c hvm_grant_table_op, which sends every other command to -ENOSYS).

- The table is version 1 only, as a Xen whose domain has `max_grant_version = 1`: set_version(1) and
  get_version answer 1, set_version(2) is -ENOSYS ("behave as before set_version was introduced"), any
  other version -EINVAL, the current version written back either way.
- setup_table reports, for each of the first nr_frames frames, the guest frame the guest placed it at
  with XENMEM_add_to_physmap (an auto-translated domain's gnttab_shared_gmfn), or INVALID_GFN (~0, cut to
  32 bits for a 32-bit caller as compat/grant_table.c does) for one it has not placed.
- copy works between the domain's own frames (DOMID_SELF + GNTCOPY_*_gref clear) and its own grant
  references (its own domain ID or DOMID_SELF, entry granted to itself), with Xen's checks and statuses
  in Xen's order. A reference of another domain is not brokered (domain 0 brokers map_grant_ref only):
  domain 0's answer as Xen's for a table that granted nothing (bad_gntref / general_error), any other
  domain's general_error. Documented in docs/xen-abi.md.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..xen import abi
from .grant import GrantBadFrame, GrantError, GrantOutOfRange
from .memory import PAGE, GuestFault

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext

GRANT_FRAMES_MAX = 32  # the domain's max_grant_frames (hypercalls.py answers it in query_size)
MAX_GRANT_OPS = 1 << 16  # ops in one call: Xen would continue; a bigger count is -EINVAL here
OPS = frozenset({abi.GNTTABOP_setup_table, abi.GNTTABOP_set_version, abi.GNTTABOP_get_version,
                 abi.GNTTABOP_copy, abi.GNTTABOP_swap_grant_ref})
_STATUS = struct.Struct("<h")
_PFN64, _PFN32 = struct.Struct("<Q"), struct.Struct("<I")
_COPY_STATUS_AT = {False: 36, True: 20}  # offsetof(gnttab_copy, status): native, i386


def grant_table_op(dom: Domain, ctx: VcpuContext, cmd: int, arg: int, count: int) -> int:
    count &= 0xFFFFFFFF  # unsigned int count
    if count >> 31:
        return -abi.EINVAL  # do_grant_table_op: (int)count < 0
    compat = not ctx.ev.in_64bit_mode()
    if cmd == abi.GNTTABOP_setup_table:
        return _setup_table(dom, ctx, arg, count, compat)
    if cmd == abi.GNTTABOP_set_version:
        return _set_version(ctx, arg)
    if cmd == abi.GNTTABOP_get_version:
        return _get_version(dom, ctx, arg)
    if cmd == abi.GNTTABOP_copy:
        return _copy(dom, ctx, arg, count, compat)
    return _swap(dom, ctx, arg, count)


def _own(dom: Domain, domid: int) -> bool:
    return domid in (abi.DOMID_SELF, dom.domid)


def _other_domain_status(domid: int) -> int:
    """rcu_lock_domain_by_any_id + XSM_TARGET for a domain that is not the caller: domain 0 exists and
    refuses, a reserved ID names no domain. (A domain process does not know which other IDs exist: those
    are answered as domain 0 is, documented.)"""
    return abi.GNTST_bad_domain if domid >= abi.DOMID_FIRST_RESERVED else abi.GNTST_permission_denied


def _setup_table(dom: Domain, ctx: VcpuContext, arg: int, count: int, compat: bool) -> int:
    """gnttab_setup_table: count must be 1; status and frames written back, the call itself 0."""
    if count != 1:
        return -abi.EINVAL
    va = ctx.va
    layout = abi.GNTTAB_SETUP_TABLE_COMPAT if compat else abi.GNTTAB_SETUP_TABLE
    d, nr_frames, _st, frame_list = va.unpack(layout, arg)
    status = abi.GNTST_okay
    if not _own(dom, d):
        status = _other_domain_status(d)
    elif nr_frames > GRANT_FRAMES_MAX:
        status = abi.GNTST_general_error  # "d%d is limited to %u grant-table frames"
    else:
        pfn = _PFN32 if compat else _PFN64
        for i in range(nr_frames):
            gpa = dom.grant_frames.get(i)
            frame = abi.INVALID_GFN if gpa is None else gpa // PAGE
            try:
                va.pack(pfn, frame_list + i * pfn.size, frame & (0xFFFFFFFF if compat else abi.INVALID_GFN))
            except GuestFault:
                if not compat:  # compat/grant_table.c ignores a failed frame write
                    status = abi.GNTST_bad_virt_addr
    va.pack(_STATUS, arg + 8, status)  # offsetof(status) is 8 in both layouts
    return 0


def _set_version(ctx: VcpuContext, arg: int) -> int:
    va = ctx.va
    (version,) = va.unpack(abi.GNTTAB_SET_VERSION, arg)
    if version not in (1, 2):
        ret = -abi.EINVAL
    elif version == 2:
        ret = -abi.ENOSYS  # max_grant_version 1
    else:
        ret = 0
    va.pack(abi.GNTTAB_SET_VERSION, arg, 1)  # op.version = gt->gt_version, written back in every case
    return ret


def _get_version(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    va = ctx.va
    d, _v = va.unpack(abi.GNTTAB_GET_VERSION, arg)
    if not _own(dom, d):
        return -abi.ESRCH if d >= abi.DOMID_FIRST_RESERVED else -abi.EPERM
    va.pack(abi.GNTTAB_GET_VERSION, arg, d, 1)
    return 0


def _swap(dom: Domain, ctx: VcpuContext, arg: int, count: int) -> int:
    va = ctx.va
    if count > MAX_GRANT_OPS:
        return -abi.EINVAL
    for i in range(count):
        at = arg + i * abi.GNTTAB_SWAP_GRANT_REF.size
        ref_a, ref_b, _st = va.unpack(abi.GNTTAB_SWAP_GRANT_REF, at)
        va.pack(_STATUS, at + 8, dom.grants.swap(ref_a, ref_b))
    return 0


class _Buf:
    """One side of a copy, claimed: the guest-physical page, and the grant pinned for it if any."""

    def __init__(self, gpa: int, ref: int | None, write: bool) -> None:
        self.gpa, self.ref, self.write = gpa, ref, write


def _copy(dom: Domain, ctx: VcpuContext, arg: int, count: int, compat: bool) -> int:
    """gnttab_copy: each op's status written back (only that field); a fault reading or writing an op
    ends the call with -EFAULT, the ops before it done."""
    va = ctx.va
    if count > MAX_GRANT_OPS:
        return -abi.EINVAL
    layout = abi.GNTTAB_COPY_COMPAT if compat else abi.GNTTAB_COPY
    for i in range(count):
        at = arg + i * layout.size
        op = va.unpack(layout, at)
        va.pack(_STATUS, at + _COPY_STATUS_AT[compat], _copy_one(dom, op))
    return 0


def _copy_one(dom: Domain, op: tuple[int, ...]) -> int:
    s_u, s_dom, s_off, d_u, d_dom, d_off, length, flags, _st = op
    sides = ((s_u, s_dom, bool(flags & abi.GNTCOPY_source_gref), False),
             (d_u, d_dom, bool(flags & abi.GNTCOPY_dest_gref), True))
    # gnttab_copy_lock_domains: "Only DOMID_SELF may reference via frame", then the domain must exist
    for _u, domid, is_gref, _w in sides:
        if domid != abi.DOMID_SELF and not is_gref:
            return abi.GNTST_permission_denied
        if not _own(dom, domid) and domid >= abi.DOMID_FIRST_RESERVED:
            return abi.GNTST_bad_domain
    claimed: list[_Buf] = []
    try:
        for u, domid, is_gref, write in sides:  # gnttab_copy_claim_buf: source, then dest
            if not _own(dom, domid):
                # acquire_grant_for_copy in a table that granted the caller nothing (not brokered here)
                ref = u & 0xFFFFFFFF  # grant_ref_t, the union's low half
                return abi.GNTST_bad_gntref if domid == 0 and ref >= abi.ENTRIES_PER_FRAME \
                    else abi.GNTST_general_error
            if is_gref:
                try:
                    gpa = dom.grants.pin(u & 0xFFFFFFFF, dom.domid, write)
                except GrantOutOfRange:
                    return abi.GNTST_bad_gntref
                except GrantBadFrame:
                    return abi.GNTST_bad_page
                except GrantError:
                    return abi.GNTST_general_error
                claimed.append(_Buf(gpa, u & 0xFFFFFFFF, write))
            else:
                gpa = u * PAGE
                if not dom.is_ram(gpa) or u in dom.memory.given_back:
                    return abi.GNTST_bad_page  # get_paged_frame: no page at that frame
                claimed.append(_Buf(gpa, None, write))
        # gnttab_copy_buf: within the page (a whole page for v1 grants and frames)
        if s_off + length > PAGE or d_off + length > PAGE:
            return abi.GNTST_bad_copy_arg
        src, dst = claimed
        dom.memory.write(dst.gpa + d_off, dom.memory.read(src.gpa + s_off, length))
        return abi.GNTST_okay
    finally:
        for buf in claimed:
            if buf.ref is not None:
                dom.grants.unpin(buf.ref, buf.write)
