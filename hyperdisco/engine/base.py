"""The narrow interface between the hypervisor core and a CPU engine.

An engine runs one vCPU's guest code for a time slice and reports why it stopped. While guest code runs,
the engine calls back into a `TrapHandler` (the core) for the traps it cannot finish alone: hypercalls,
port I/O, CPUID, MMIO and accesses to unbacked memory. Exceptions, system calls and page faults never
leave the engine: they are delivered through the guest's own IDT. Guest RAM belongs to the core
(`core.memory`); engines map it.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

# General-purpose register indices, in the x86 encoding order every engine shares.
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)


class StopReason(enum.Enum):
    SLICE_END = "slice"  # the slice ran out or another thread kicked the vCPU
    HALT = "halt"  # the guest executed HLT
    STOP = "stop"  # a trap handler asked the vCPU to stop (block, shutdown)
    FATAL = "fatal"  # the guest cannot continue (triple fault, unrecoverable engine error)


@dataclass
class RunResult:
    reason: StopReason
    detail: str = ""


@dataclass
class TrapCounts:
    """Traps an engine handled, by kind; the core adds its own (hypercalls by name, injections)."""

    exceptions: dict[int, int] = field(default_factory=dict)  # vector -> count
    page_faults_user: int = 0
    page_faults_kernel: int = 0
    syscalls: int = 0
    hypercalls: int = 0
    io: int = 0
    cpuid: int = 0
    mmio: int = 0
    halts: int = 0
    slices: int = 0
    injected: int = 0
    first_syscall_tsc: int = 0  # guest TSC at the first system call: when user space began
    msr: int = 0  # RDMSR/WRMSR executed
    msr_gp: int = 0  # ... of which raised #GP (policy)
    cr_gp: int = 0  # MOV to a control register that raised #GP (policy)
    engine: dict[str, int] = field(default_factory=dict)  # an engine's own counts, shown as engine.<name>


# How the engine treats one MSR (ControlPolicy.msrs). An MSR that is not in the policy raises #GP(0) on
# RDMSR and WRMSR, as does an access no flag allows.
MSR_RD_ENGINE = 0x01  # the engine holds the MSR (EFER, STAR, FS_BASE...): reads come from it
MSR_WR_ENGINE = 0x02  # ... and writes go to it, after the checks below
MSR_RD_CORE = 0x04  # reads are answered by TrapHandler.rdmsr
MSR_WR_CORE = 0x08  # writes are performed by TrapHandler.wrmsr
MSR_CANONICAL = 0x10  # a write must be a canonical address (#GP otherwise)
MSR_PAT = 0x20  # a write must hold eight valid memory types (IA32_PAT)
MSR_RD_TSC = 0x40  # reads return the guest TSC (IA32_TIME_STAMP_COUNTER)
MSR_EFER = 0x80  # EFER: bits outside ControlPolicy.efer_valid, or LME changed while paging is on: #GP


@dataclass(frozen=True)
class MsrRule:
    flags: int
    reserved: int = 0  # bits a write may not set (#GP)


@dataclass(frozen=True)
class ControlPolicy:
    """What a vCPU may do to its MSRs and control registers (platform/msr.py builds it from CPUID)."""

    msrs: dict[int, MsrRule]
    cr4_valid: int  # CR4 bits a MOV to CR4 may set; any other: #GP
    efer_valid: int  # EFER bits a WRMSR may set
    cr3_reserved: int  # CR3 bits a MOV to CR3 may not set in long mode (above MAXPHYADDR)


class TrapHandler(Protocol):
    """What the core provides to an engine for the traps that leave it."""

    def hypercall(self, vcpu: Vcpu) -> None: ...

    def io_in(self, vcpu: Vcpu, port: int, size: int) -> int: ...

    def io_out(self, vcpu: Vcpu, port: int, size: int, value: int) -> None: ...

    def cpuid(self, vcpu: Vcpu, leaf: int, subleaf: int) -> tuple[int, int, int, int]: ...

    def mmio_read(self, vcpu: Vcpu, addr: int, size: int) -> int: ...

    def mmio_write(self, vcpu: Vcpu, addr: int, size: int, value: int) -> None: ...

    # A data read or write of a guest-physical address that is neither RAM (map_ram) nor MMIO (map_mmio):
    # the core decides what it reads as (Xen: all ones) and the guest continues after it; the engine
    # only makes sure such an access reaches these instead of ending the vCPU. An instruction fetch from
    # such an address stays fatal.
    def unbacked_read(self, vcpu: Vcpu, addr: int, size: int) -> int: ...

    def unbacked_write(self, vcpu: Vcpu, addr: int, size: int, value: int) -> None: ...

    def rdmsr(self, vcpu: Vcpu, msr: int) -> int | None:
        """An MSR the policy gives the core (MSR_RD_CORE): its value, or None to raise #GP(0)."""
        ...

    def wrmsr(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        """A write the policy gives the core (MSR_WR_CORE): True when done, False to raise #GP(0)."""
        ...

    def msr_denied(self, vcpu: Vcpu, msr: int, write: bool, value: int) -> None:
        """The policy refused an access to an MSR it does not know (#GP raised): for the domain's log."""
        ...


class Vcpu(ABC):
    """One virtual CPU as an engine runs it."""

    index: int

    @abstractmethod
    def map_ram(self, gpa: int, size: int, host_address: int, writable: bool = True) -> None:
        """Make host memory at `host_address` appear at guest-physical `gpa` (page aligned); a guest write
        to it when not `writable` stops the vCPU as fatal."""

    @abstractmethod
    def unmap_ram(self, gpa: int, size: int) -> None: ...

    @abstractmethod
    def map_mmio(self, gpa: int, size: int) -> None:
        """Route guest accesses to [gpa, gpa+size) to the handler's mmio_read/mmio_write."""

    @abstractmethod
    def set_pvh_entry(self, entry: int, start_info: int, scratch: int) -> None:
        """Put the vCPU at a PVH entry point: 32-bit protected mode, paging off, EBX = start_info.
        `scratch` is a guest-physical page the engine may use for a GDT and trampoline."""

    def start_at_sipi(self, vector: int) -> None:
        """Put the vCPU where INIT then a STARTUP IPI with `vector` leave an x86 CPU (SDM vol. 3, 8.4.4 and
        table 9-1): real mode, CS = vector << 8 (base vector << 12), IP = 0, paging and protection off,
        general registers cleared. Only on the vCPU's own thread, while it is not running."""
        from ..errors import EngineError

        raise EngineError(f"hyperdisco: the {type(self).__name__} engine cannot start secondary vCPUs")

    @abstractmethod
    def run(self, slice_ns: int) -> RunResult:
        """Run guest code until the slice ends, the guest halts or a handler stops the vCPU."""

    @abstractmethod
    def kick(self) -> None:
        """From any thread: make a running `run` return at the next instruction boundary."""

    @abstractmethod
    def request_stop(self) -> None:
        """From a trap handler: end the current `run` once the trap returns."""

    @abstractmethod
    def load_cpuid(self, table: dict[tuple[int, int | None], tuple[int, int, int, int]]) -> None:
        """Answer CPUID from this fixed table ((leaf, None): any subleaf; absent: zeros) from now on. An
        engine may answer inside itself; one that cannot keeps calling TrapHandler.cpuid."""

    @abstractmethod
    def load_control_policy(self, policy: ControlPolicy) -> None:
        """From now on RDMSR/WRMSR follow `policy.msrs` (anything else: #GP(0) at the instruction, the
        core is told through TrapHandler.msr_denied) and MOV to CR0/CR3/CR4/CR8 raise #GP(0) for bits
        the policy or the architecture does not allow. Raises EngineError if this engine cannot."""

    @abstractmethod
    def gpr(self, index: int) -> int: ...

    @abstractmethod
    def set_gpr(self, index: int, value: int) -> None: ...

    @property
    @abstractmethod
    def rip(self) -> int: ...

    @abstractmethod
    def translate(self, va: int) -> int | None:
        """Guest-virtual to guest-physical through the guest's page tables; None when not mapped."""

    def paging_state(self) -> tuple[int, int, int, bool] | None:
        """(CR0, CR3, CR4, long mode active): what a walk that checks permissions needs; None when the
        engine cannot say (then hypercall results are written without that check)."""
        return None

    @abstractmethod
    def cpl(self) -> int: ...

    def in_64bit_mode(self) -> bool:
        """True when the vCPU runs in a 64-bit code segment (long mode, CS.L): the hypercall ABI and the
        structures' layouts depend on it. An engine that only runs 64-bit code may keep this default."""
        return True

    @abstractmethod
    def interrupts_enabled(self) -> bool:
        """True when an external interrupt could be taken now (IF=1, no interrupt shadow)."""

    @abstractmethod
    def inject_interrupt(self, vector: int) -> str | None:
        """Deliver external interrupt `vector` through the guest IDT now (only when enabled). Returns why
        the guest's own state made delivery impossible (a triple fault...), None when delivered."""

    @abstractmethod
    def host_wrote(self, gpa: int, size: int) -> None:
        """The host (a backend, a grant copy, a hypercall handler) wrote guest-physical [gpa, gpa+size) of
        this vCPU's domain: every vCPU of the domain drops code it translated from those pages before it
        next runs or takes an interrupt. Any thread; cheap when the pages hold no translated code."""

    def export_state(self, inside_trap: bool = False) -> bytes:
        """The vCPU's complete CPU state, engine-specific bytes (docs/save-format.md); between runs, or
        from inside a trap handler of this vCPU (`inside_trap`: a hypercall, whose instruction is done)."""
        from ..errors import EngineError

        raise EngineError("hyperdisco: this engine cannot save a vCPU's state")

    def import_state(self, state: bytes) -> None:
        """Load what export_state returned (on a vCPU of the same engine that has not run)."""
        from ..errors import EngineError

        raise EngineError("hyperdisco: this engine cannot restore a vCPU's state")

    @abstractmethod
    def counts(self) -> TrapCounts: ...

    @abstractmethod
    def close(self) -> None: ...


class Engine(ABC):
    name: str

    @abstractmethod
    def create_vcpu(self, index: int, handler: TrapHandler, sibling: Vcpu | None = None) -> Vcpu:
        """A new vCPU; with `sibling`, of the same domain as that vCPU. A domain's vCPUs may run at the same
        time on several host threads: once a domain has more than one, the engine makes locked
        instructions atomic across them (each vCPU switches at the start of its next `run`) and stops them
        all when one must run an instruction alone. `kick` and `close` of one vCPU never wait for another.
        Create a domain's vCPUs before any of them runs (Domain does, up to maxvcpus): a vCPU already in
        `run` when a sibling is added keeps its old translation until its slice ends."""

    @abstractmethod
    def guest_tsc(self) -> int:
        """The value guest rdtsc would return now (the time base of the guest's pvclock)."""

    @abstractmethod
    def native_cpuid(self) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        """(leaf, subleaf) -> (eax, ebx, ecx, edx) of the CPU this engine presents, before policy."""


def get_engine(name: str) -> Engine:
    """The engine called `name`; raises EngineError if it cannot run here."""
    from ..errors import EngineError

    if name == "tcg":
        from .tcg.engine import TcgEngine

        return TcgEngine()
    if name == "scripted":  # no guest code: for testing what surrounds the engine (engine/scripted.py)
        from .scripted import ScriptedEngine

        return ScriptedEngine()
    raise EngineError(f"hyperdisco: unknown CPU engine {name!r} (available: tcg, scripted)")
