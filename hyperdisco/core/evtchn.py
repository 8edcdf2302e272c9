"""Event channels: the port table and what the rest of the core calls (xen/common/event_channel.c).

Where the pending and mask state of each port lives in guest memory is the ABI's business (`self.abi`,
evtchn_abi.py's interface): the 2-level bitmaps of shared_info (evtchn_2l.py) until the guest sets up
FIFO queues with EVTCHNOP_init_control (evtchn_fifo.py), and again after EVTCHNOP_reset. Both ABIs end a
delivery in the vCPU's vcpu_info upcall flag (`mark_vcpu`), which the vCPU checks between slices.

The hypervisor changes event words with host atomics (the guest changes them with locked instructions on
its vCPUs meanwhile) and only from a thread of this domain's vCPUs: other threads (backends, console,
domain 0's broker) `notify()` a port, which queues it and wakes the vCPU; `deliver_queued()` then raises
it. Guest memory is only written by threads that run while the domain does.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..xen import abi
from .evtchn_2l import TwoLevel
from .evtchn_abi import EventAbi, EvtchnError
from .evtchn_fifo import MAX_ARRAY_PAGES, Fifo
from .memory import PAGE, GuestMemory

__all__ = ["MAX_PORTS", "DEFAULT_MAX_PORT", "BUCKET", "EventChannels", "EvtchnError", "Port"]

MAX_PORTS = abi.EVTCHN_2L_NR_CHANNELS  # the 2-level ABI's ports (the FIFO ABI names 2^17)
# xl.cfg's max_event_channels default: "The default of 1023 should be sufficient for typical guests"
# (libxl sets Xen's max_evtchn_port from it); the domain config may raise it up to what the ABI names
DEFAULT_MAX_PORT = 1023
BUCKET = 64  # Xen allocates ports in buckets of a page of struct evtchn (64 on x86-64): port_is_valid


@dataclass(slots=True)
class Port:
    state: int  # abi.EVTCHNSTAT_*
    vcpu: int = 0
    virq: int = -1
    remote_dom: int = -1  # unbound: who may bind; interdomain: the peer
    remote_port: int = 0
    on_send: Callable[[], None] | None = None  # a hypervisor-side peer (backend, broker) to call on send
    on_close: Callable[[], None] | None = None  # and to tell when the guest closes its end


class EventChannels:
    def __init__(self, memory: GuestMemory, domid: int, wake: Callable[[], None],
                 max_port: int = DEFAULT_MAX_PORT) -> None:
        self.mem = memory
        self.domid = domid
        self.wake = wake
        self.max_port = max_port  # Xen's d->max_evtchn_port: the highest port this domain may use
        self.ports: dict[int, Port] = {}
        self.virqs: dict[tuple[int, int], int] = {}  # (virq, vcpu) -> port
        self.shared_info: int | None = None  # guest-physical address, once mapped
        self.compat_shinfo = False  # shared_info and vcpu_info in the 32-bit layout (compat32.latch)
        self.vcpu_info: dict[int, int] = {}  # vcpu -> guest-physical address of its vcpu_info
        self._queue: deque[int] = deque()
        self.lock = threading.Lock()  # the port table (vCPU threads, backends, the broker)
        self.raised = 0
        self.on_upcall: Callable[[int], None] | None = None  # a vCPU's upcall became pending
        self.on_pending: Callable[[int], None] | None = None  # a port became pending (SCHEDOP_poll waiters)
        self.valid_ports = BUCKET  # Xen's valid_evtchns: ports below it exist (free or not)
        self._hint = 1  # alloc: no free port below this one
        # alloc: no port below this one (a restored domain: above every port its guest held when it was
        # saved, so that a driver's late close of a port number from before the save cannot close a
        # port another driver has just been given; see resume_floor)
        self.floor = 1
        self.abi: EventAbi = TwoLevel(self)
        self.abi_switches = 0  # init_control that switched to FIFO (the first one, or after a reset)

    @property
    def limit(self) -> int:
        """Ports that may be allocated are below this: the ABI's and the domain's limit."""
        return min(self.abi.max_ports, self.max_port + 1)

    # -- allocation -------------------------------------------------------------------------------------
    def alloc(self, port: Port) -> int:
        """Xen's get_free_port: the lowest port that is free and not still queued (FIFO: LINKED). The
        scan starts at the lowest port that may be free (every port below `_hint` is bound or was busy
        when last looked at and is looked at again): a guest binding thousands of ports does not make
        each bind scan all the others."""
        with self.lock:
            busy = None
            for p in range(max(self.floor, self._hint), self.limit):
                if p in self.ports:
                    continue
                if self.abi.is_busy(p):
                    busy = p if busy is None else busy
                    continue
                self.ports[p] = port
                self._hint = p + 1 if busy is None else busy
                if p >= self.valid_ports:
                    self.valid_ports = (p // BUCKET + 1) * BUCKET
                return p
            if busy is not None:
                self._hint = busy
        raise EvtchnError(abi.ENOSPC, "no free event channel")

    def resume_floor(self) -> int:
        """For a save: the lowest port the restored domain may allocate. Linux's drivers free the port
        they held before the suspend during their resume (hvc_xen's xencons_resume ->
        xencons_disconnect_backend -> xenbus_free_evtchn on the old number), after other drivers have
        already bound new ports in the new domain: with Xen's lowest-free-port allocation that old
        number may now be, say, blkfront's new port, and the console's resume closes the root disk's
        event channel. Allocating above every port held at the save makes such a late close hit a free
        port (-EINVAL to the guest, harmless)."""
        with self.lock:
            return max(self.floor, max(self.ports, default=0) + 1)

    def set_floor(self, floor: object) -> None:
        """A restored domain's floor (from its save file: input, checked): an int that leaves ports to
        allocate below the domain's limit, else ValueError."""
        if not isinstance(floor, int) or isinstance(floor, bool) or not 1 <= floor <= self.limit - BUCKET:
            raise ValueError(f"event-channel floor {floor!r} is out of range")
        with self.lock:
            self.floor = floor

    def valid(self, port: int) -> bool:
        """Xen's port_is_valid: the port exists (bound or free), which decides -EINVAL for unmask,
        status, set_priority."""
        return 0 <= port < min(self.valid_ports, self.abi.max_ports)

    def get(self, port: int) -> Port:
        p = self.ports.get(port) if 0 < port < self.abi.max_ports else None
        if p is None:
            raise EvtchnError(abi.EINVAL, f"port {port} is not bound")
        return p

    def bind_virq(self, virq: int, vcpu: int, nr_vcpus: int) -> int:
        """Xen's evtchn_bind_virq: global VIRQs only on vCPU 0 (rebound later with bind_vcpu)."""
        if not 0 <= virq < abi.NR_VIRQS:
            raise EvtchnError(abi.EINVAL, f"virq {virq} out of range")
        if virq_is_global(virq) and vcpu != 0:
            raise EvtchnError(abi.EINVAL, f"virq {virq} is global: bind it on vcpu 0")
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
        """Free the port (Xen's evtchn_free): not pending any more, bound to vCPU 0 when reused."""
        p = self.get(port)
        if p.state == abi.EVTCHNSTAT_virq:
            for key in [k for k, v in self.virqs.items() if v == port]:
                del self.virqs[key]
        with self.lock:
            del self.ports[port]
            self._hint = min(self._hint, port)
        self.abi.clear_pending(port)
        self.abi.port_freed(port)

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
        while True:
            try:  # several vCPU threads drain it: the last port may go between a test and a pop
                port = q.popleft()
            except IndexError:
                return
            if port in self.ports:
                self.set_pending(port)

    def set_pending(self, port: int) -> None:
        """A thread of this domain's vCPUs only (see module docstring)."""
        p = self.ports.get(port)
        if self.shared_info is None and not isinstance(self.abi, Fifo):
            return
        self.raised += 1
        self.abi.set_pending(port, p.vcpu if p else 0)
        # Xen's evtchn_check_pollers (xen/common/event_channel.c), called by every set_pending: a vCPU in
        # SCHEDOP_poll on this port wakes even when the port is masked (no upcall): Linux's PV spinlock
        # waiter polls its masked kicker port with interrupts off (arch/x86/xen/spinlock.c)
        if self.on_pending is not None:
            self.on_pending(port)

    def mark_vcpu(self, vcpu: int) -> None:
        """Xen's vcpu_mark_events_pending: the vCPU's upcall flag, which it checks between slices."""
        vi = self.vcpu_info.get(vcpu)
        if vi is not None:
            self.mem.set_u8(vi + abi.VI_UPCALL_PENDING, 1)
            if self.on_upcall is not None:
                self.on_upcall(vcpu)

    def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask (Xen's evtchn_unmask: any existing port, bound or not)."""
        if not self.valid(port):
            raise EvtchnError(abi.EINVAL, f"port {port} out of range")
        p = self.ports.get(port)
        self.abi.unmask(port, p.vcpu if p else 0)

    def upcall_pending(self, vcpu: int) -> bool:
        vi = self.vcpu_info.get(vcpu)
        return vi is not None and self.mem.u8(vi + abi.VI_UPCALL_PENDING) != 0

    def any_pending(self, ports: list[int]) -> bool:
        return any(0 < port < self.abi.max_ports and self.abi.is_pending(port) for port in ports)

    def has_queued(self) -> bool:
        return bool(self._queue)

    # -- the FIFO ABI -----------------------------------------------------------------------------------
    def init_control(self, vcpu: int, gfn: int, offset: int, nr_vcpus: int,
                     is_ram: Callable[[int], bool]) -> None:
        """EVTCHNOP_init_control (event_fifo.c's evtchn_fifo_init_control, Xen 4.16+ error codes): the
        first call switches the domain to FIFO, carrying each bound port's pending state over."""
        if not 0 <= vcpu < nr_vcpus:
            raise EvtchnError(abi.ENOENT, f"no vcpu {vcpu}")
        if not 0 <= offset <= PAGE - abi.EVTCHN_FIFO_CONTROL_BLOCK_SIZE or offset % 4:
            raise EvtchnError(abi.ENXIO, f"control block offset {offset:#x}")
        gpa = gfn << 12
        if isinstance(self.abi, Fifo) and vcpu in self.abi.control:
            raise EvtchnError(abi.EINVAL, f"vcpu {vcpu} already has a control block")
        if not self._guest_page(gfn, is_ram):
            raise EvtchnError(abi.EINVAL, f"control gfn {gfn:#x} is not a RAM page of the guest")
        if isinstance(self.abi, Fifo):
            self.abi.map_control(vcpu, gpa + offset)
            return
        fifo = Fifo(self)
        fifo.map_control(vcpu, gpa + offset)
        with self.lock:
            fifo.early.update(p for p in self.ports if self.abi.is_pending(p))  # event_fifo.c: setup_ports
            self.abi = fifo
        self.abi_switches += 1

    def expand_array(self, gfn: int, is_ram: Callable[[int], bool]) -> None:
        """EVTCHNOP_expand_array (event_fifo.c's evtchn_fifo_expand_array)."""
        if not isinstance(self.abi, Fifo):
            raise EvtchnError(abi.EOPNOTSUPP, "the FIFO ABI is not set up")
        if len(self.abi.array) >= MAX_ARRAY_PAGES:
            raise EvtchnError(abi.ENOSPC, "the FIFO event array is full")
        if not self._guest_page(gfn, is_ram):
            raise EvtchnError(abi.EINVAL, f"array gfn {gfn:#x} is not a RAM page of the guest")
        self.abi.add_array_page(gfn << 12)

    def _guest_page(self, gfn: int, is_ram: Callable[[int], bool]) -> bool:
        """Xen's get_page_from_gfn for map_guest_page: a RAM frame of the guest's, populated (not one it
        gave back to the balloon)."""
        return 0 <= gfn < 1 << 40 and is_ram(gfn << 12) and gfn not in self.mem.given_back

    def set_priority(self, port: int, priority: int) -> None:
        if not self.valid(port):
            raise EvtchnError(abi.EINVAL, f"port {port} out of range")
        self.abi.set_priority(port, priority)

    def reset_abi(self) -> None:
        """After EVTCHNOP_reset closed the guest's ports: back to 2-level (event_channel.c's
        evtchn_reset); the ports that stay (domain 0's console and store) keep their pending state."""
        if isinstance(self.abi, Fifo):
            old = self.abi
            with self.lock:
                self.abi = TwoLevel(self)
            for port, p in list(self.ports.items()):
                if old.is_pending(port) or port in old.early:
                    self.abi.set_pending(port, p.vcpu)

    def hypervisor_pages(self) -> set[int]:
        return self.abi.hypervisor_pages()


def virq_is_global(virq: int) -> bool:
    """event_channel.c's virq_is_global: per-vCPU VIRQs are the timer, debug, xenoprof and xenpmu ones
    (xen.h); the rest, the arch ones included on x86, are global."""
    return virq not in (abi.VIRQ_TIMER, abi.VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU)


VIRQ_XENOPROF, VIRQ_XENPMU = 6, 13  # xen.h
