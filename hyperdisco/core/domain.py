"""A domain: its memory, vCPUs, event channels, platform devices and lifecycle.

A domain's vCPUs (vcpu.py) run on the scheduler's worker threads; everything that touches the guest's
event bits or vCPU state happens in `VcpuContext.step`, on the thread running that vCPU; the engine's
traps reach the core through trap_dispatch.py. Other threads (console
input, backends, the toolstack) talk to a domain by queueing event-channel notifications and waking it.
A failure inside one domain's trap handling crashes that domain only.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..engine.base import Engine
from ..loader.elf import KernelImage
from ..loader.pvh import load_pvh
from ..platform import layout
from ..platform.cpuid import CpuidPolicy
from ..platform.msr import control_policy
from ..xen import abi
from .bvt import BvtParams
from .clock import Clock
from .evtchn import DEFAULT_MAX_PORT, EventChannels, Port
from .grant import GrantTable
from .hypercalls import XEN_VERSION, Hypercalls
from .memory import PAGE, GuestMemory
from .msr import CoreMsrs
from .reservation import Reservation
from .trap_dispatch import TrapDispatch
from .unbacked import UnbackedMemory
from .vcpu import VcpuContext

if TYPE_CHECKING:
    from .scheduler import Scheduler



@dataclass
class DomainConfig:
    name: str
    kernel: KernelImage
    initrd: bytes | None
    cmdline: str
    memory_mib: int
    vcpus: int = 1  # online at boot
    maxvcpus: int = 0  # vCPUs the guest can have (ACPI MADT), when more than `vcpus`
    # xl.cfg maxmem above memory: the guest's RAM (its e820) is maxmem and it boots ballooned down to
    # memory, as Xen boots an HVM guest with populate-on-demand (core/reservation.py, dom0/memctl.py)
    maxmem_mib: int | None = None
    max_event_channels: int | None = None  # xl.cfg: the highest event-channel port (None: xl's 1023)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    extra: dict[str, str] = field(default_factory=dict)
    disks: list[Any] = field(default_factory=list)  # disk specs (toolstack.xlcfg.DiskSpec) for blkback
    record: Any = None  # the toolstack's own description, kept by the domain process for a new domain 0
    channels: list[str] = field(default_factory=list)  # xl.cfg channel names: device/console/1, 2, ...
    bvt: BvtParams | None = None  # its BVT weight and warp (dom0/arbiter.py); None: the defaults


class DomainDirectory(Protocol):
    """The other domains a domain's inter-domain event channels can reach from where it runs."""

    def domain(self, domid: int) -> Domain | None: ...


class RemoteChannels(Protocol):
    """Inter-domain event channels to domains that run in other processes (vmm/interdomain.py: through
    domain 0, which checks and routes them)."""

    def bind(self, remote: int, rport: int) -> int:
        """EVTCHNOP_bind_interdomain to `remote`'s port `rport`: our new port (EvtchnError if refused)."""
        ...


class RemoteGrants(Protocol):
    """Grant mappings of other domains' pages, those domains running in other processes
    (vmm/grants.py: through domain 0)."""

    def map(self, ctx: VcpuContext, remote: int, ref: int, flags: int, gpa: int) -> tuple[int, int]:
        """GNTTABOP_map_grant_ref of `remote`'s grant `ref` at our guest-physical page `gpa`:
        (GNTST_* status, handle)."""
        ...

    def unmap(self, ctx: VcpuContext, handle: int, gpa: int) -> int:
        """GNTTABOP_unmap_grant_ref of mapping `handle` (at `gpa` when not 0): a GNTST_* status."""
        ...


class Domain:
    def __init__(self, domid: int, config: DomainConfig, engine: Engine, clock: Clock,
                 console_sink: Callable[[bytes], None], log: Callable[[str], None],
                 peers: DomainDirectory | None = None, special_fd: int | None = None,
                 restore: Callable[[Domain], None] | None = None) -> None:
        self.domid = domid
        self.peers = peers
        self.remote_channels: RemoteChannels | None = None  # domains elsewhere, where there are any
        self.remote_grants: RemoteGrants | None = None
        self._quiesce = threading.Lock()
        self.console_sink = console_sink
        # domain 0's ends of the console and xenstore channels: whoever serves them sets these
        self.on_console_kick: Callable[[], None] = _nothing
        self.on_store_kick: Callable[[], None] = _nothing
        self.on_shutdown: Callable[[Domain], None] | None = None
        # SCHEDOP_shutdown(suspend) with a checkpoint pending (save -c, vmm/snapshot.py): the hypercall's
        # return value instead of a shutdown (1: "suspend cancelled", the guest carries on)
        self.on_suspend: Callable[[VcpuContext], int] | None = None
        self.reaped = False
        self.restarts = 0
        # set while on_*=restart builds the next incarnation; then the new domain (or None if it failed)
        self.restart_pending = False
        self.successor: Domain | None = None
        self.config = config
        self.name = config.name
        self.engine = engine
        self.clock = clock
        self.uuid = uuid.uuid4().bytes
        self._log = log
        self.stats: collections.Counter[str] = collections.Counter()
        self.created = time.monotonic()
        self.first_output: float | None = None
        self.outcome: str | None = None  # poweroff, reboot, crash...
        self.outcome_detail = ""
        self.finished = False
        self.paused = False
        self.vm_assist = 0  # HYPERVISOR_vm_assist bits (core/runstate.py)
        self.done = threading.Event()
        self.scheduler: Scheduler | None = None
        self.memory = GuestMemory(max(config.memory_mib, config.maxmem_mib or 0) << 20, config.name)
        self.vcpus: list[VcpuContext] = []
        try:
            self._build(config, engine, clock, special_fd, restore)
        except BaseException:
            self.close()
            self.memory.close()
            raise

    def _build(self, config: DomainConfig, engine: Engine, clock: Clock, special_fd: int | None,
               restore: Callable[[Domain], None] | None = None) -> None:
        domid = self.domid
        # the special pages (console and store rings): a memfd domain 0 also maps, when it gave one
        self.special = self.memory.add_region(layout.SPECIAL_BASE, layout.SPECIAL_PAGES * PAGE, "special",
                                              fd=special_fd)
        self.params: dict[int, int] = {}
        self.callback_vector: int | None = None
        self.grant_frames: dict[int, int] = {}  # frame index -> gpa
        self.grants = GrantTable(self)
        self.evtchn = EventChannels(self.memory, domid, self.wake,
                                    max_port=config.max_event_channels or DEFAULT_MAX_PORT)
        self.hypercalls = Hypercalls(self)
        self.unbacked = UnbackedMemory(self.log, self.stats)
        self.reservation = Reservation(self)  # XENMEM_*_reservation, populate_physmap (ballooning)
        self.cpuid = CpuidPolicy(engine.native_cpuid(), domid, XEN_VERSION, clock.tsc_khz())
        self.msrs = CoreMsrs(self, self.cpuid)
        control = control_policy(self.cpuid.table)
        for i in range(max(config.vcpus, config.maxvcpus)):
            ev = engine.create_vcpu(i, TrapDispatch(self), self.vcpus[0].ev if self.vcpus else None)
            ev.map_ram(0, self.memory.ram_bytes, self.memory.regions[0].host_address)
            ev.map_ram(self.special.gpa, self.special.size, self.special.host_address)
            ev.map_mmio(layout.LAPIC_BASE, PAGE)
            ev.load_cpuid(self.cpuid.engine_table(i))
            ev.load_control_policy(control)
            self.vcpus.append(VcpuContext(self, i, ev))
        self._ctx_by_ev = {id(v.ev): v for v in self.vcpus}
        if self.vcpus:  # what the host writes into guest memory is never run as stale translated code
            self.memory.on_write = self.vcpus[0].ev.host_wrote
        self.evtchn.on_upcall = self._upcall
        self.evtchn.on_pending = self._wake_pollers
        # the PV console and the xenstore ring: pages in the special region and event channels whose far
        # end is domain 0 (xenconsoled and xenstored, in the daemon)
        self.console_port = self.evtchn.alloc(Port(abi.EVTCHNSTAT_interdomain, remote_dom=0,
                                                   on_send=lambda: self.on_console_kick()))
        self.store_port = self.evtchn.alloc(Port(abi.EVTCHNSTAT_interdomain, remote_dom=0,
                                                 on_send=lambda: self.on_store_kick()))
        self.reserved_ports = {self.console_port, self.store_port}
        self.console_ring_gpa = layout.special_gpa(layout.CONSOLE_PAGE)
        self.store_ring_gpa = layout.special_gpa(layout.STORE_PAGE)
        self.params[abi.HVM_PARAM_CONSOLE_PFN] = self.console_ring_gpa >> 12
        self.params[abi.HVM_PARAM_CONSOLE_EVTCHN] = self.console_port
        self.params[abi.HVM_PARAM_STORE_PFN] = self.store_ring_gpa >> 12
        self.params[abi.HVM_PARAM_STORE_EVTCHN] = self.store_port
        if restore is not None:  # a saved domain: memory and vCPU state from its file (vmm/snapshot.py)
            restore(self)
            return
        start_info = load_pvh(self.memory, config.kernel, config.initrd, config.cmdline, len(self.vcpus))
        self.vcpus[0].ev.set_pvh_entry(config.kernel.pvh_entry, start_info, layout.SCRATCH)

    def store_notify(self) -> None:
        """xenstored answered: signal the guest's store event channel (any thread)."""
        self.evtchn.notify(self.store_port)

    def console_notify(self) -> None:
        """xenconsoled moved data in the console ring: signal the guest (any thread)."""
        self.evtchn.notify(self.console_port)

    # -- logging and output -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        self._log(f"(d{self.domid}) {msg}")

    def console_output(self, data: bytes) -> None:
        if self.first_output is None:
            self.first_output = time.monotonic()
        self.console_sink(data)

    # -- memory -----------------------------------------------------------------------------------------
    def is_ram(self, gpa: int) -> bool:
        return any(0 <= gpa - a < s for a, s, t in self.e820() if t == abi.E820_RAM)

    def e820(self) -> list[tuple[int, int, int]]:
        return layout.e820(self.memory.ram_bytes)

    def hypervisor_page(self, gpa: int) -> str | None:
        """What the hypervisor itself keeps in page `gpa` (grant frames, shared info, vcpu_info), if any:
        such a page is neither granted to nor replaced by another domain's page."""
        page = gpa & ~(PAGE - 1)
        if page in self.grant_frames.values():
            return "a grant-table frame"
        if self.evtchn.shared_info is not None and self.evtchn.shared_info & ~(PAGE - 1) == page:
            return "the shared info page"
        if any(v & ~(PAGE - 1) == page for v in self.evtchn.vcpu_info.values()):
            return "a vcpu_info page"
        if page in self.evtchn.hypervisor_pages():
            return "a FIFO event-channel page"
        return None

    @contextmanager
    def quiesced(self, ctx: VcpuContext | None = None) -> Iterator[None]:
        """No vCPU of this domain runs guest code inside the block (`ctx`: the caller's own vCPU, inside a
        hypercall), so that its memory can be remapped beneath it. One holder at a time."""
        sched = self.scheduler
        if sched is None:  # not running (being built, or a unit test)
            with self._quiesce:
                yield
            return
        with sched.outside_guest(ctx):  # while we wait for another holder, we are not in guest code
            self._quiesce.acquire()
        try:
            sched.hold(self, ctx)
            try:
                yield
            finally:
                sched.release(self)
        finally:
            self._quiesce.release()

    def _wake_pollers(self, port: int) -> None:
        """`port` became pending (from a vCPU thread): wake the vCPUs blocked in SCHEDOP_poll on it, as
        Xen's evtchn_check_pollers does (they check their ports again and go on or block again)."""
        me = threading.get_native_id()
        for ctx in self.vcpus:
            ports = ctx.poll_ports
            if ctx.blocked and ports is not None and port in ports and ctx.host_tid != me:
                ctx.wake()

    def _upcall(self, vcpu: int) -> None:
        """An event became pending for `vcpu` (evtchn.on_upcall, from any thread): make it take it now.
        From its own thread in a hypercall, its slice ends when the hypercall returns; from another, it is
        woken (or kicked out of guest code)."""
        if not 0 <= vcpu < len(self.vcpus):
            return
        ctx = self.vcpus[vcpu]
        if ctx.host_tid == threading.get_native_id():
            if ctx.in_guest:
                ctx.ev.request_stop()
        else:
            ctx.wake()

    # -- lifecycle --------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Every vCPU that could take an event (one that is down or stopped waits for INIT/STARTUP)."""
        if self.scheduler is not None:
            for ctx in self.vcpus:
                if ctx.online or ctx.has_startup_request():
                    self.scheduler.wake(ctx)

    def shutdown(self, outcome: str, detail: str = "") -> None:
        if self.finished:
            return
        self.outcome, self.outcome_detail, self.finished = outcome, detail, True
        self.log(f"shutdown: {outcome}{' (' + detail + ')' if detail else ''}")
        for ctx in self.vcpus:
            ctx.ev.kick()
        self.done.set()
        if self.on_shutdown is not None:
            self.on_shutdown(self)

    def crash(self, detail: str) -> None:
        self.shutdown("crash", detail)

    def destroy(self) -> None:
        self.shutdown("destroyed")

    def cpu_seconds(self) -> float:
        return sum(ctx.cpu_ns for ctx in self.vcpus) / 1e9

    def close(self) -> None:
        """Release the engine's vCPUs, then guest memory: the domain must be off the scheduler and its
        backends stopped. Late accesses by other threads then fault (GuestFault) instead of touching
        freed memory."""
        for ctx in self.vcpus:
            ctx.ev.close()
        self.memory.close()

    def traps(self) -> dict[str, int]:
        """All trap counts of this domain: the engine's and the core's."""
        out: collections.Counter[str] = collections.Counter()
        for ctx in self.vcpus:
            c = ctx.ev.counts()
            for vec, n in c.exceptions.items():
                out[f"exception.{vec}"] += n
            out["pagefault.user"] += c.page_faults_user
            out["pagefault.kernel"] += c.page_faults_kernel
            out["syscall"] += c.syscalls
            out["hypercall"] += c.hypercalls
            out["io"] += c.io
            out["cpuid"] += c.cpuid
            out["mmio"] += c.mmio
            out["halt"] += c.halts
            out["slice"] += c.slices
            out["interrupt.injected"] += c.injected
            out["msr"] += c.msr
            out["msr.gp"] += c.msr_gp
            out["cr.gp"] += c.cr_gp
            for name, n in c.engine.items():
                out[f"engine.{name}"] += n
        core_kinds = ("hypercall.", "inject.", "timer.", "unbacked.", "evtchn.")
        out.update({k: v for k, v in self.stats.items() if k.startswith(core_kinds)})
        out["evtchn.raised"] = self.evtchn.raised
        return dict(out)


def _nothing() -> None:
    pass
