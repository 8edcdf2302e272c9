"""Helpers of the unit layer: a synthetic PVH kernel image and a harness that issues hypercalls the way
the engine does (registers in, RAX out)."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperdisco.core.domain import Domain
from hyperdisco.core.vcpu import VcpuContext
from hyperdisco.loader.elf import EHDR, EHDR32, NHDR, PHDR, PHDR32, SHDR, SHDR32
from hyperdisco.xen import abi

KERNEL_PADDR = 0x1000000
SCRATCH_VA = 0x200000  # a RAM page the tests use for hypercall argument structures


def elf_note(name: bytes, typ: int, desc: bytes) -> bytes:
    """One ELF note, name and descriptor padded to 4 bytes."""
    n = name + b"\0"
    return NHDR.pack(len(n), len(desc), typ) + n.ljust((len(n) + 3) & ~3, b"\0") + desc.ljust(
        (len(desc) + 3) & ~3, b"\0")


def make_elf(entry: int | None = None, code: bytes = b"\xf4" * 16, memsz: int = 0x2000,
             notes: bytes | None = None, paddr: int = KERNEL_PADDR, machine: int = 62, cls: int = 64,
             extra_loads: tuple[tuple[int, bytes, int], ...] = (), note_align: int = 4,
             section_notes: bool = False) -> bytes:
    """A tiny x86 kernel, ELF64 or ELF32 (`cls`): one PT_NOTE (Xen PHYS32_ENTRY = `entry`, by default the
    load address) and a PT_LOAD of `code` at `paddr`, then one PT_LOAD per (paddr, data, memsz) of
    `extra_loads`. With `section_notes` the notes are in an SHT_NOTE section instead of a segment."""
    if entry is None:
        entry = paddr
    if notes is None:
        notes = elf_note(b"Xen", 18, struct.pack("<I", entry))
    ehdr, phdr, shdr = (EHDR, PHDR, SHDR) if cls == 64 else (EHDR32, PHDR32, SHDR32)
    loads = ((paddr, code, memsz),) + extra_loads
    nph = len(loads) + (0 if section_notes else 1)
    phoff = ehdr.size
    note_off = phoff + nph * phdr.size
    at = note_off + len(notes)
    body = notes
    placed = []
    for pa, data, msz in loads:
        placed.append((at, pa, data, msz))
        body += data
        at += len(data)
    shoff = shnum = 0
    sections = b""
    if section_notes:
        shoff, shnum = at, 2
        sections = shdr.pack(*([0] * 10)) + (
            shdr.pack(0, 7, 0, 0, note_off, len(notes), 0, 0, note_align, 0))
    ident = b"\x7fELF" + bytes([2 if cls == 64 else 1, 1, 1]) + b"\0" * 9
    eh = ehdr.pack(ident, 2, machine, 1, entry, phoff, shoff, 0, ehdr.size, phdr.size, nph,
                   shdr.size, shnum, 0)

    def ph(typ: int, flags: int, off: int, pa: int, filesz: int, msz: int, align: int) -> bytes:
        if cls == 64:
            return PHDR.pack(typ, flags, off, pa, pa, filesz, msz, align)
        return PHDR32.pack(typ, off, pa, pa, filesz, msz, flags, align)

    phs = b"" if section_notes else ph(4, 4, note_off, 0, len(notes), len(notes), note_align)
    for off, pa, data, msz in placed:
        phs += ph(1, 5, off, pa, len(data), msz, 0x1000)
    return eh + phs + body + sections


@dataclass
class DomainHarness:
    dom: Domain
    output: list[bytes]
    logs: list[str] = field(default_factory=list)

    @property
    def ctx(self) -> VcpuContext:
        return self.dom.vcpus[0]

    def call(self, nr: int | str, *args: int, vcpu: int = 0, compat: bool = False) -> int:
        """Issue hypercall `nr` from vCPU `vcpu` as the engine would from a 64-bit guest (or, with `compat`,
        from one outside 64-bit mode: EBX, ECX, EDX, ESI, EDI); the signed result from RAX (EAX)."""
        number = abi.HYPERCALL_NUMBERS[nr] if isinstance(nr, str) else nr
        ctx = self.dom.vcpus[vcpu]
        ev = ctx.ev
        ev.in_64bit_mode = lambda: not compat  # the mode a real vCPU reports from its code segment
        ev.set_gpr(0, number)
        regs = (3, 1, 2, 6, 7) if compat else (7, 6, 2, 10, 8)
        for reg, value in zip(regs, args + (0,) * (5 - len(args)), strict=True):
            ev.set_gpr(reg, value)
        self.dom.hypercalls.dispatch(ctx)
        ret = ev.gpr(0)
        if compat:
            return ret - (1 << 32) if ret >> 31 else ret
        return ret - (1 << 64) if ret >> 63 else ret

    def put(self, fmt: struct.Struct, *values: int, at: int = SCRATCH_VA) -> int:
        self.dom.memory.pack(fmt, at, *values)
        return at


class QuietTraps:
    """A trap handler for engine tests (engine.base.TrapHandler): every trap does nothing and reads as 0
    (unbacked memory as all ones, MSRs refused); a test overrides the traps it watches."""

    def hypercall(self, vcpu: Any) -> None:
        pass

    def io_in(self, vcpu: Any, port: int, size: int) -> int:
        return 0

    def io_out(self, vcpu: Any, port: int, size: int, value: int) -> None:
        pass

    def cpuid(self, vcpu: Any, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return (0, 0, 0, 0)

    def mmio_read(self, vcpu: Any, addr: int, size: int) -> int:
        return 0

    def mmio_write(self, vcpu: Any, addr: int, size: int, value: int) -> None:
        pass

    def unbacked_read(self, vcpu: Any, addr: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def unbacked_write(self, vcpu: Any, addr: int, size: int, value: int) -> None:
        pass

    def rdmsr(self, vcpu: Any, msr: int) -> int | None:
        return None

    def wrmsr(self, vcpu: Any, msr: int, value: int) -> bool:
        return False

    def msr_denied(self, vcpu: Any, msr: int, write: bool, value: int) -> None:
        pass


@contextmanager
def scripted_daemon(tmp: Path, **options: Any) -> Iterator[tuple[Any, str, Path]]:
    """A real daemon (in this process, `scripted` engine, no xenstored socket, Daemon `options` on top)
    serving tmp/c.sock, and a synthetic kernel for its domains: (daemon, socket path, kernel path)."""
    from hyperdisco.toolstack.daemon import Daemon

    kernel = tmp / "vmlinux"
    kernel.write_bytes(make_elf())
    d = Daemon(str(tmp / "c.sock"), engine="scripted", xenstored_socket="none", **options)
    server = d.listen()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield d, str(tmp / "c.sock"), kernel
    finally:
        server.shutdown()
        server.server_close()
        d.host.close()


def until(cond: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll `cond` until it holds (the test fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
