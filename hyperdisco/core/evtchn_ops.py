"""The event_channel_op hypercall (xen/common/event_channel.c's do_event_channel_op and the functions it
calls; argument layouts in xen/include/public/event_channel.h): every sub-op either does what Xen's does,
with Xen's error code for each refusal, or answers -ENOSYS (bind_pirq: a PVH guest without passed-through
devices has no physical IRQs; docs/event-channels.md lists what is not done).

Xen's order of checks is kept where it decides which error a bad call gets (e.g. bind_virq: the VIRQ
number, then "global VIRQ on another vCPU", then the vCPU id, then "already bound"). Other domains are
reachable only as the broker allows (vmm/interdomain.py): an operation on another domain's ports
(alloc_unbound, status, reset with dom != DOMID_SELF) is what Xen refuses an unprivileged guest, -EPERM,
or -ESRCH for ids no domain can have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..xen import abi
from . import vcpu_save
from .evtchn import Port, virq_is_global
from .evtchn_abi import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import VcpuContext


def event_channel_op(dom: Domain, ctx: VcpuContext, cmd: int, arg: int) -> int:
    handler = _OPS.get(cmd)
    if handler is None:
        return dom.hypercalls.unimplemented(32, cmd)
    return handler(dom, ctx, arg)


def _own(dom: Domain, domid: int) -> bool:
    return domid in (abi.DOMID_SELF, dom.domid)


def _foreign_domain_error(domid: int) -> int:
    """What Xen answers an unprivileged guest naming another domain: no such domain, or not allowed."""
    return -abi.ESRCH if domid >= abi.DOMID_FIRST_RESERVED else -abi.EPERM


def _bind_virq(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    va = ctx.va
    virq, vcpu, _out = va.unpack(abi.EVTCHN_BIND_VIRQ, arg)
    port = dom.evtchn.bind_virq(virq, vcpu, len(dom.vcpus))
    va.pack(abi.EVTCHN_BIND_VIRQ, arg, virq, vcpu, port)
    if virq == abi.VIRQ_TIMER:  # a timer restored from a save file runs from now on (core/vcpu_save.py)
        vcpu_save.timer_bound(ctx, dom.vcpus[vcpu])
    return 0


def _bind_ipi(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    va = ctx.va
    vcpu, _out = va.unpack(abi.EVTCHN_BIND_IPI, arg)
    if vcpu >= len(dom.vcpus):
        return -abi.ENOENT
    port = dom.evtchn.alloc(Port(abi.EVTCHNSTAT_ipi, vcpu=vcpu))
    va.pack(abi.EVTCHN_BIND_IPI, arg, vcpu, port)
    return 0


def _alloc_unbound(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    """Xen stores remote_dom as given (DOMID_SELF: this domain) without looking it up."""
    va = ctx.va
    d, remote, _out = va.unpack(abi.EVTCHN_ALLOC_UNBOUND, arg)
    if not _own(dom, d):
        return _foreign_domain_error(d)
    remote = dom.domid if remote == abi.DOMID_SELF else remote
    port = dom.evtchn.alloc(Port(abi.EVTCHNSTAT_unbound, remote_dom=remote))
    va.pack(abi.EVTCHN_ALLOC_UNBOUND, arg, d, remote, port)
    return 0


def _bind_interdomain(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    va = ctx.va
    remote, rport, _out = va.unpack(abi.EVTCHN_BIND_INTERDOMAIN, arg)
    port = _bind_peer(dom, dom.domid if remote == abi.DOMID_SELF else remote, rport)
    va.pack(abi.EVTCHN_BIND_INTERDOMAIN, arg, remote, rport, port)
    return 0


def _peer(dom: Domain, domid: int) -> Domain | None:
    if domid == dom.domid:
        return dom
    return dom.peers.domain(domid) if dom.peers is not None else None


def _bind_peer(dom: Domain, remote: int, rport: int) -> int:
    """Xen's evtchn_bind_interdomain: the remote port must be unbound and offered to this domain."""
    peer = _peer(dom, remote)
    if peer is None and dom.remote_channels is not None and remote != dom.domid:
        return dom.remote_channels.bind(remote, rport)
    if peer is None or peer.finished:
        raise EvtchnError(abi.ESRCH, f"no domain {remote}")
    rp = peer.evtchn.ports.get(rport)
    if rp is None or rp.state != abi.EVTCHNSTAT_unbound or rp.remote_dom != dom.domid:
        raise EvtchnError(abi.EINVAL, f"d{remote} port {rport} is not offered to d{dom.domid}")
    port = dom.evtchn.alloc(Port(abi.EVTCHNSTAT_interdomain, remote_dom=remote, remote_port=rport))
    rp.state, rp.remote_port = abi.EVTCHNSTAT_interdomain, port
    dom.evtchn.notify(port)  # as Xen, the new local end starts pending
    return port


def _send(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    """Xen's evtchn_send: interdomain -> the peer's port, IPI -> this port, unbound -> dropped, any
    other state (VIRQ, free) -> -EINVAL."""
    (port,) = ctx.va.unpack(abi.EVTCHN_PORT, arg)
    ec = dom.evtchn
    p = ec.get(port)
    if p.state == abi.EVTCHNSTAT_ipi:
        ec.set_pending(port)
    elif p.state == abi.EVTCHNSTAT_interdomain and p.on_send is not None:
        p.on_send()
    elif p.state == abi.EVTCHNSTAT_interdomain:
        peer = _peer(dom, p.remote_dom)
        if peer is not None:
            peer.evtchn.notify(p.remote_port)
    elif p.state != abi.EVTCHNSTAT_unbound:
        return -abi.EINVAL  # a VIRQ is raised by the hypervisor only
    return 0


def _unmask(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    (port,) = ctx.va.unpack(abi.EVTCHN_PORT, arg)
    dom.evtchn.unmask(port)
    return 0


def close_port(dom: Domain, port: int) -> int:
    """Xen's evtchn_close for the guest: any bound port but the console and store channels (whose far end
    is domain 0 in this process: Xen's "consumer_is_xen" refusal); an interdomain peer's end becomes
    unbound and offered to this domain again."""
    if port in dom.reserved_ports:
        return -abi.EINVAL
    ec = dom.evtchn
    p = ec.get(port)
    if p.on_close is not None:
        p.on_close()
    elif p.state == abi.EVTCHNSTAT_interdomain and p.on_send is None:
        peer = _peer(dom, p.remote_dom)
        rp = peer.evtchn.ports.get(p.remote_port) if peer is not None else None
        if rp is not None and rp.state == abi.EVTCHNSTAT_interdomain and rp.remote_dom == dom.domid:
            rp.state, rp.remote_port = abi.EVTCHNSTAT_unbound, 0
    ec.close(port)
    return 0


def _close(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    (port,) = ctx.va.unpack(abi.EVTCHN_PORT, arg)
    return close_port(dom, port)


def _status(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    """Xen's evtchn_status: -EINVAL for a port that does not exist, EVTCHNSTAT_closed for a free one.
    Written back whole, the union's unused bytes as the guest gave them."""
    va = ctx.va
    d, port, _st, _vc = va.unpack(abi.EVTCHN_STATUS, arg)
    if not _own(dom, d):
        return _foreign_domain_error(d)
    ec = dom.evtchn
    if not ec.valid(port):
        return -abi.EINVAL
    raw = bytearray(va.read(arg, abi.EVTCHN_STATUS_UNION + 8))
    p = ec.ports.get(port)
    state = p.state if p else abi.EVTCHNSTAT_closed
    abi.EVTCHN_STATUS.pack_into(raw, 0, d, port, state, p.vcpu if p else 0)
    u = abi.EVTCHN_STATUS_UNION
    if p and p.state == abi.EVTCHNSTAT_virq:
        raw[u:u + 4] = p.virq.to_bytes(4, "little")
    elif p and p.state == abi.EVTCHNSTAT_unbound:
        raw[u:u + 2] = (p.remote_dom & 0xFFFF).to_bytes(2, "little")
    elif p and p.state == abi.EVTCHNSTAT_interdomain:
        raw[u:u + 2] = (p.remote_dom & 0xFFFF).to_bytes(2, "little")
        raw[u + 4:u + 8] = p.remote_port.to_bytes(4, "little")
    va.write(arg, bytes(raw))
    return 0


def _bind_vcpu(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    """Xen's evtchn_bind_vcpu: global VIRQs, unbound and interdomain ports move (the console and store
    channels too: in Xen they are ordinary interdomain ports); per-vCPU VIRQs and IPIs stay: -EINVAL."""
    port, vcpu = ctx.va.unpack(abi.EVTCHN_BIND_VCPU, arg)
    if vcpu >= len(dom.vcpus):
        return -abi.ENOENT
    ec = dom.evtchn
    p = ec.ports.get(port) if ec.valid(port) else None
    if p is None:
        return -abi.EINVAL
    if p.state == abi.EVTCHNSTAT_virq:
        if not virq_is_global(p.virq):
            return -abi.EINVAL
    elif p.state not in (abi.EVTCHNSTAT_unbound, abi.EVTCHNSTAT_interdomain):
        return -abi.EINVAL
    p.vcpu = vcpu
    return 0


def _reset(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    """Xen's evtchn_reset on this domain: close every port (the console and store channels refuse, as
    Xen's Xen-attached ones do) and go back to the 2-level ABI."""
    (d,) = ctx.va.unpack(abi.EVTCHN_RESET, arg)
    if not _own(dom, d):
        return _foreign_domain_error(d)
    for port in sorted(dom.evtchn.ports):
        try:
            close_port(dom, port)
        except EvtchnError:
            pass
    dom.evtchn.reset_abi()
    return 0


def _init_control(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    va = ctx.va
    gfn, offset, vcpu, _bits = va.unpack(abi.EVTCHN_INIT_CONTROL, arg)
    ec = dom.evtchn
    switching = ec.abi.name != "FIFO"
    ec.init_control(vcpu, gfn, offset, len(dom.vcpus), dom.is_ram)
    va.pack(abi.EVTCHN_INIT_CONTROL, arg, gfn, offset, vcpu, abi.EVTCHN_FIFO_LINK_BITS)
    dom.stats["evtchn.fifo_init_control"] += 1
    if switching:
        dom.log(f"event channels: FIFO ABI (control block of vcpu {vcpu} at {(gfn << 12) + offset:#x})")
    return 0


def _expand_array(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    (gfn,) = ctx.va.unpack(abi.EVTCHN_EXPAND_ARRAY, arg)
    dom.evtchn.expand_array(gfn, dom.is_ram)
    dom.stats["evtchn.fifo_array_pages"] += 1
    return 0


def _set_priority(dom: Domain, ctx: VcpuContext, arg: int) -> int:
    port, priority = ctx.va.unpack(abi.EVTCHN_SET_PRIORITY, arg)
    dom.evtchn.set_priority(port, priority)
    return 0


_OPS = {
    abi.EVTCHNOP_bind_interdomain: _bind_interdomain, abi.EVTCHNOP_bind_virq: _bind_virq,
    abi.EVTCHNOP_close: _close, abi.EVTCHNOP_send: _send, abi.EVTCHNOP_status: _status,
    abi.EVTCHNOP_alloc_unbound: _alloc_unbound, abi.EVTCHNOP_bind_ipi: _bind_ipi,
    abi.EVTCHNOP_bind_vcpu: _bind_vcpu, abi.EVTCHNOP_unmask: _unmask, abi.EVTCHNOP_reset: _reset,
    abi.EVTCHNOP_init_control: _init_control, abi.EVTCHNOP_expand_array: _expand_array,
    abi.EVTCHNOP_set_priority: _set_priority,
}
