"""`scripted`: an engine that runs no guest code, for testing the hypervisor around it (as QEMU's qtest
accelerator does). Each vCPU follows a script found in the kernel command line that the PVH start info
points at (`scripted=STEP,STEP,...`, hvm_start_info.cmdline_paddr), one step per `run`:

  say:TEXT        write TEXT and a newline to the Bochs debug port 0xE9 (the domain's console)
  out:PORT:VALUE  a port write (e.g. the platform's ACPI sleep or reset register: power off, reboot)
  halt            halt with interrupts enabled (the vCPU parks until an event wakes it)
  spin:N          use N whole slices (a CPU-bound guest; spin:0 for ever)
  crash           a fatal engine error (a triple fault)
  abort           the engine aborts the whole process (as a bug in native code would)
  hypercall:N     a hypercall with RAX=N and no arguments (its result is not checked)
  read:ADDR       a 4-byte read of guest-physical ADDR: RAM, an MMIO range or unbacked memory, whichever
                  is there (the interface's mmio_read / unbacked_read for the last two)
  write:ADDR:V    a 4-byte write of V, the same way

After the last step the vCPU halts for good. Time is the host's monotonic clock in nanoseconds.
"""

from __future__ import annotations

import ctypes
import os
import time

from ..xen import abi
from .base import ControlPolicy, Engine, RunResult, StopReason, TrapCounts, TrapHandler, Vcpu

DEBUG_PORT = 0xE9  # the Bochs/QEMU debug console port



class ScriptedVcpu(Vcpu):
    def __init__(self, index: int, handler: TrapHandler) -> None:
        self.index = index
        self.handler = handler
        self._ram: tuple[int, int] | None = None  # (host address, size) of guest RAM at 0
        self._mapped: dict[int, tuple[int, int | None]] = {}  # gpa -> (size, host address; None: MMIO)
        self._start_info = 0
        self._script: list[str] | None = None
        self._regs = [0] * 16
        self._counts = TrapCounts()

    def _steps(self) -> list[str]:
        if self._script is None:
            text = b""
            ram = self._ram
            if ram is not None and 0 < self._start_info <= ram[1] - abi.HVM_START_INFO.size:
                info = abi.HVM_START_INFO.unpack(ctypes.string_at(ram[0] + self._start_info,
                                                                  abi.HVM_START_INFO.size))
                cmdline = info[5]  # magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr...
                if 0 < cmdline <= ram[1] - 4096:
                    text = ctypes.string_at(ram[0] + cmdline, 4096).split(b"\0")[0]
            words = [w for w in text.decode(errors="replace").split() if w.startswith("scripted=")]
            self._script = words[0][len("scripted="):].split(",") if words else []
        return self._script

    def run(self, slice_ns: int) -> RunResult:
        self._counts.slices += 1
        steps = self._steps()
        if not steps:
            self._counts.halts += 1
            return RunResult(StopReason.HALT)
        step = steps.pop(0)
        kind, _, arg = step.partition(":")
        if kind == "say":
            for b in (arg + "\n").encode():
                self.handler.io_out(self, DEBUG_PORT, 1, b)
            return RunResult(StopReason.SLICE_END)
        if kind == "spin":
            left = int(arg) if arg.isdigit() else 1
            if left != 1:
                steps.insert(0, f"spin:{max(0, left - 1)}" if left else "spin:0")
            end = time.monotonic_ns() + slice_ns
            while time.monotonic_ns() < end:
                pass
            return RunResult(StopReason.SLICE_END)
        if kind == "out":
            port, _, value = arg.partition(":")
            self.handler.io_out(self, int(port, 0), 1, int(value, 0))
            return RunResult(StopReason.STOP)
        if kind == "crash":
            return RunResult(StopReason.FATAL, "triple fault (scripted)")
        if kind == "abort":
            os.abort()
        if kind == "hypercall" and arg.isdigit():
            self._regs[0] = int(arg)
            self._counts.hypercalls += 1
            self.handler.hypercall(self)
            return RunResult(StopReason.SLICE_END)
        if kind in ("read", "write"):
            addr, _, value = arg.partition(":")
            try:
                self._access(int(addr, 0), int(value, 0) if kind == "write" else None)
            except ValueError:
                pass
            return RunResult(StopReason.SLICE_END)
        self._counts.halts += 1
        return RunResult(StopReason.HALT)  # "halt", or a step this engine does not know

    def _access(self, gpa: int, value: int | None) -> None:
        """A 4-byte guest-physical read (value None) or write, wherever it lands."""
        for base, (size, host) in self._mapped.items():
            if base <= gpa and gpa + 4 <= base + size:
                if host is None:
                    self._counts.mmio += 1
                    if value is None:
                        self.handler.mmio_read(self, gpa, 4)
                    else:
                        self.handler.mmio_write(self, gpa, 4, value)
                elif value is not None:
                    ctypes.memmove(host + gpa - base, value.to_bytes(4, "little"), 4)
                return
        if value is None:
            self.handler.unbacked_read(self, gpa, 4)
        else:
            self.handler.unbacked_write(self, gpa, 4, value & 0xFFFFFFFF)

    def map_ram(self, gpa: int, size: int, host_address: int, writable: bool = True) -> None:
        if gpa == 0:
            self._ram = (host_address, size)
        self._mapped[gpa] = (size, host_address)

    def unmap_ram(self, gpa: int, size: int) -> None:
        self._mapped.pop(gpa, None)

    def map_mmio(self, gpa: int, size: int) -> None:
        self._mapped[gpa] = (size, None)

    def set_pvh_entry(self, entry: int, start_info: int, scratch: int) -> None:
        self._regs[3] = start_info
        self._start_info = start_info

    def start_at_sipi(self, vector: int) -> None:
        """A secondary vCPU: no script of its own (start info is the boot vCPU's), so it halts."""
        self._script = []
        self._regs = [0] * 16

    def kick(self) -> None:
        pass

    def request_stop(self) -> None:
        pass

    def load_control_policy(self, policy: ControlPolicy) -> None:
        self.control_policy = policy  # no guest code runs: nothing to enforce

    def load_cpuid(self, table: dict[tuple[int, int | None], tuple[int, int, int, int]]) -> None:
        pass

    def gpr(self, index: int) -> int:
        return self._regs[index]

    def set_gpr(self, index: int, value: int) -> None:
        self._regs[index] = value & 0xFFFFFFFFFFFFFFFF

    @property
    def rip(self) -> int:
        return 0

    def translate(self, va: int) -> int | None:
        return None

    def cpl(self) -> int:
        return 0

    def interrupts_enabled(self) -> bool:
        return True

    def inject_interrupt(self, vector: int) -> str | None:
        self._counts.injected += 1
        return None

    def host_wrote(self, gpa: int, size: int) -> None:
        pass  # no translated code

    def counts(self) -> TrapCounts:
        return self._counts

    def close(self) -> None:
        self._ram = None


class ScriptedEngine(Engine):
    name = "scripted"

    def guest_tsc(self) -> int:
        return time.monotonic_ns()

    def native_cpuid(self) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        return {(0, 0): (1, 0, 0, 0), (1, 0): (0, 0, 0, 0), (0x80000000, 0): (0x80000000, 0, 0, 0)}

    def create_vcpu(self, index: int, handler: TrapHandler, sibling: Vcpu | None = None) -> Vcpu:
        return ScriptedVcpu(index, handler)
