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
from hyperdisco.loader.elf import EHDR, NHDR, PHDR
from hyperdisco.xen import abi

KERNEL_PADDR = 0x1000000
SCRATCH_VA = 0x200000  # a RAM page the tests use for hypercall argument structures


def elf_note(name: bytes, typ: int, desc: bytes) -> bytes:
    """One ELF note, name and descriptor padded to 4 bytes."""
    n = name + b"\0"
    return NHDR.pack(len(n), len(desc), typ) + n.ljust((len(n) + 3) & ~3, b"\0") + desc.ljust(
        (len(desc) + 3) & ~3, b"\0")


def make_elf(entry: int = KERNEL_PADDR, code: bytes = b"\xf4" * 16, memsz: int = 0x2000,
             notes: bytes | None = None, paddr: int = KERNEL_PADDR, machine: int = 62) -> bytes:
    """A tiny ELF64 x86-64 kernel: one PT_NOTE (Xen PHYS32_ENTRY by default) and one PT_LOAD."""
    if notes is None:
        notes = elf_note(b"Xen", 18, struct.pack("<I", entry))
    phoff = EHDR.size
    note_off = phoff + 2 * PHDR.size
    code_off = note_off + len(notes)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    eh = EHDR.pack(ident, 2, machine, 1, entry, phoff, 0, 0, EHDR.size, PHDR.size, 2, 0, 0, 0)
    ph_note = PHDR.pack(4, 4, note_off, 0, 0, len(notes), len(notes), 4)
    ph_load = PHDR.pack(1, 5, code_off, paddr, paddr, len(code), memsz, 0x1000)
    return eh + ph_note + ph_load + notes + code


@dataclass
class DomainHarness:
    dom: Domain
    output: list[bytes]
    logs: list[str] = field(default_factory=list)

    @property
    def ctx(self) -> VcpuContext:
        return self.dom.vcpus[0]

    def call(self, nr: int | str, *args: int, vcpu: int = 0) -> int:
        """Issue hypercall `nr` from vCPU `vcpu` as the engine would; the signed result from RAX."""
        number = abi.HYPERCALL_NUMBERS[nr] if isinstance(nr, str) else nr
        ctx = self.dom.vcpus[vcpu]
        ev = ctx.ev
        ev.set_gpr(0, number)
        for reg, value in zip((7, 6, 2, 10, 8), args + (0,) * (5 - len(args)), strict=True):
            ev.set_gpr(reg, value)
        self.dom.hypercalls.dispatch(ctx)
        ret = ev.gpr(0)
        return ret - (1 << 64) if ret >> 63 else ret

    def put(self, fmt: struct.Struct, *values: int, at: int = SCRATCH_VA) -> int:
        self.dom.memory.pack(fmt, at, *values)
        return at


@contextmanager
def scripted_daemon(tmp: Path) -> Iterator[tuple[Any, str, Path]]:
    """A real daemon (in this process, `scripted` engine, no xenstored socket) serving tmp/c.sock, and a
    synthetic kernel for its domains: (daemon, socket path, kernel path)."""
    from hyperdisco.toolstack.daemon import Daemon

    kernel = tmp / "vmlinux"
    kernel.write_bytes(make_elf())
    d = Daemon(str(tmp / "c.sock"), engine="scripted", xenstored_socket="none")
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
