"""Event channels, 2-level ABI (xen/common/event_2l.c semantics, layouts in xen/include/public/xen.h).

Pending and mask bits live in the guest's shared_info page, the selector and upcall flag in each vCPU's
vcpu_info. The guest flips those bits with atomic instructions while it runs, so the hypervisor only
touches them on the vCPU's own thread between slices: other threads `notify()` a port, which queues it
and wakes the vCPU; `deliver_queued()` then sets the bits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..xen import abi
from .memory import GuestMemory

MAX_PORTS = abi.EVTCHN_2L_NR_CHANNELS


class EvtchnError(Exception):
    def __init__(self, errno: int, msg: str = "") -> None:
        super().__init__(msg or f"errno {errno}")
        self.errno = errno


@dataclass
class Port:
    state: int  # abi.EVTCHNSTAT_*
    vcpu: int = 0
    virq: int = -1
    remote_dom: int = -1  # unbound: who may bind; interdomain: the peer
    remote_port: int = 0
    on_send: Callable[[], None] | None = None  # a hypervisor-side peer (backend, broker) to call on send
    on_close: Callable[[], None] | None = None  # and to tell when the guest closes its end
    extra: dict[str, int] = field(default_factory=dict)


class EventChannels:
    def __init__(self, memory: GuestMemory, domid: int, wake: Callable[[], None]) -> None:
        self.mem = memory
        self.domid = domid
        self.wake = wake
        self.ports: dict[int, Port] = {}
        self.virqs: dict[tuple[int, int], int] = {}  # (virq, vcpu) -> port
        self.shared_info: int | None = None  # guest-physical address, once mapped
        self.vcpu_info: dict[int, int] = {}  # vcpu -> guest-physical address of its vcpu_info
        self._queue: deque[int] = deque()
        self.lock = threading.Lock()  # the port table (vCPU threads, backends, the broker)
        self.raised = 0

    # -- allocation -------------------------------------------------------------------------------------
    def alloc(self, port: Port) -> int:
        with self.lock:
            for p in range(1, MAX_PORTS):
                if p not in self.ports:
                    self.ports[p] = port
                    return p
        raise EvtchnError(abi.ENOSPC, "no free event channel")

    def get(self, port: int) -> Port:
        p = self.ports.get(port) if 0 < port < MAX_PORTS else None
        if p is None:
            raise EvtchnError(abi.EINVAL, f"port {port} is not bound")
        return p

    def bind_virq(self, virq: int, vcpu: int, nr_vcpus: int) -> int:
        if not 0 <= virq < abi.NR_VIRQS:
            raise EvtchnError(abi.EINVAL, f"virq {virq} out of range")
        if not 0 <= vcpu < nr_vcpus:
            raise EvtchnError(abi.ENOENT, f"no vcpu {vcpu}")
        if (virq, vcpu) in self.virqs:
            raise EvtchnError(abi.EEXIST, f"virq {virq} already bound")
        port = self.alloc(Port(abi.EVTCHNSTAT_virq, vcpu=vcpu, virq=virq))
        self.virqs[(virq, vcpu)] = port
        return port

    def bind_backend(self, port: int, on_send: Callable[[], None]) -> None:
        """Domain 0 (a backend in this process) binds the guest's unbound `port` offered to it."""
        p = self.get(port)
        if p.state != abi.EVTCHNSTAT_unbound or p.remote_dom != 0:
            raise EvtchnError(abi.EINVAL, f"port {port} is not offered to domain 0")
        p.state, p.on_send = abi.EVTCHNSTAT_interdomain, on_send

    def close(self, port: int) -> None:
        p = self.get(port)
        if p.state == abi.EVTCHNSTAT_virq:
            self.virqs.pop((p.virq, p.vcpu), None)
        with self.lock:
            del self.ports[port]
        if self.shared_info is not None:  # as Xen's evtchn_close: a closed port is not pending
            word, bit = divmod(port, 64)
            pend_a = self.shared_info + abi.SI_EVTCHN_PENDING + word * 8
            self.mem.set_u64(pend_a, self.mem.u64(pend_a) & ~(1 << bit))

    # -- raising ----------------------------------------------------------------------------------------
    def notify(self, port: int) -> None:
        """Any thread: mark `port` pending at the guest's next opportunity."""
        self._queue.append(port)
        self.wake()

    def raise_virq(self, virq: int, vcpu: int = 0) -> bool:
        port = self.virqs.get((virq, vcpu))
        if port is None:
            return False
        self.set_pending(port)
        return True

    def deliver_queued(self) -> None:
        """vCPU thread: apply the ports other threads notified."""
        q = self._queue
        while q:
            port = q.popleft()
            if port in self.ports:
                self.set_pending(port)

    def set_pending(self, port: int) -> None:
        """vCPU thread only (see module docstring)."""
        si = self.shared_info
        if si is None:
            return
        self.raised += 1
        word, bit = divmod(port, 64)
        pend_a = si + abi.SI_EVTCHN_PENDING + word * 8
        pend = self.mem.u64(pend_a)
        if pend >> bit & 1:
            return
        self.mem.set_u64(pend_a, pend | 1 << bit)
        if self.mem.u64(si + abi.SI_EVTCHN_MASK + word * 8) >> bit & 1:
            return
        p = self.ports.get(port)
        self._mark_vcpu(p.vcpu if p else 0, word)

    def _mark_vcpu(self, vcpu: int, word: int) -> None:
        vi = self.vcpu_info.get(vcpu)
        if vi is None:
            return
        sel = self.mem.u64(vi + abi.VI_PENDING_SEL)
        if not sel >> word & 1:
            self.mem.set_u64(vi + abi.VI_PENDING_SEL, sel | 1 << word)
            self.mem.set_u8(vi + abi.VI_UPCALL_PENDING, 1)

    def unmask(self, port: int) -> None:
        si = self.shared_info
        if si is None or not 0 < port < MAX_PORTS:
            raise EvtchnError(abi.EINVAL, f"port {port} out of range")
        word, bit = divmod(port, 64)
        mask_a = si + abi.SI_EVTCHN_MASK + word * 8
        self.mem.set_u64(mask_a, self.mem.u64(mask_a) & ~(1 << bit))
        if self.mem.u64(si + abi.SI_EVTCHN_PENDING + word * 8) >> bit & 1:
            p = self.ports.get(port)
            self._mark_vcpu(p.vcpu if p else 0, word)

    def upcall_pending(self, vcpu: int) -> bool:
        vi = self.vcpu_info.get(vcpu)
        return vi is not None and self.mem.u8(vi + abi.VI_UPCALL_PENDING) != 0

    def any_pending(self, ports: list[int]) -> bool:
        si = self.shared_info
        if si is None:
            return False
        for port in ports:
            if 0 < port < MAX_PORTS:
                word, bit = divmod(port, 64)
                if self.mem.u64(si + abi.SI_EVTCHN_PENDING + word * 8) >> bit & 1:
                    return True
        return False

    def has_queued(self) -> bool:
        return bool(self._queue)
