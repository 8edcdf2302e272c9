"""A tcg vCPU's complete CPU state as bytes, for the save file (docs/save-format.md, section VCPU).

unicorn's uc_context_save copies QEMU's CPUX86State from its start up to the end of the fields QEMU resets
(for unicorn 2.1.4: 0x15C8 bytes): general registers, rip, rflags and the lazy condition codes, hflags and
hflags2 (CPL, mode, the interrupt shadow), the six segment registers with their hidden parts (base, limit,
flags), LDTR, TR, GDTR, IDTR, CR0-CR4, the x87 stack, status and control words, MXCSR, the XMM/YMM/ZMM
registers, every MSR QEMU keeps (EFER, STAR/LSTAR/CSTAR/FMASK, KERNEL_GS_BASE, SYSENTER_*, PAT, TSC_AUX,
...), XCR0, the debug registers and QEMU's pending-event fields. What lies outside it, in CPUState, is
added here: `halted`. A vCPU is exported only between runs with no exception pending
(CPUState.exception_index = -1), so nothing else is in flight.

The blob is engine-specific: "TCG1", the unicorn version (16 bytes), the data length, halted, the data.
Another unicorn version or another length is refused with one line.
"""

from __future__ import annotations

import ctypes
import struct

from ...errors import EngineError
from . import qemu_state as qs
from .uc import X, unicorn

_MAGIC = b"TCG1"
_HEAD = struct.Struct("<4s16sII")  # magic, unicorn version, data length, halted


def _context(uc: unicorn.Uc) -> tuple[bytes, int]:
    """The context bytes unicorn saves and the offset of the CPU data in them (struct uc_context starts
    with `size_t context_size`, the data's length; the data is its last member)."""
    raw = bytes(uc.context_save())
    (size,) = struct.unpack_from("<Q", raw)
    if not 0 < size < len(raw):
        raise EngineError("hyperdisco: unicorn's saved context is not laid out as this engine expects")
    return raw, len(raw) - size


def export_state(uc: unicorn.Uc, q: qs.QemuState, inside_trap: bool = False) -> bytes:
    """`inside_trap`: called from this vCPU's hypercall hook, where the #UD QEMU raised for the VMCALL is
    the one the hook is consuming (fastpath.c hook_invalid: rip already past the instruction)."""
    exc = ctypes.c_int32.from_address(q.cpu + qs.CPU_EXCEPTION_INDEX).value
    if exc != -1 and not inside_trap:
        raise EngineError(f"hyperdisco: vCPU state cannot be saved with exception {exc} pending")
    raw, start = _context(uc)
    data = raw[start:]
    return _HEAD.pack(_MAGIC, unicorn.__version__.encode()[:16], len(data), int(q.halted())) + data


def import_state(uc: unicorn.Uc, q: qs.QemuState, blob: bytes) -> None:
    if len(blob) < _HEAD.size:
        raise EngineError("hyperdisco: saved vCPU state is truncated")
    magic, version, length, halted = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise EngineError("hyperdisco: saved vCPU state is not from the tcg engine")
    if version.rstrip(b"\0") != unicorn.__version__.encode():
        theirs = version.rstrip(b"\0").decode(errors="replace")
        raise EngineError(f"hyperdisco: saved vCPU state is from unicorn {theirs}, this engine runs "
                          f"{unicorn.__version__}")
    ctx = uc.context_save()
    raw, start = _context(uc)
    if length != len(raw) - start or len(blob) != _HEAD.size + length:
        raise EngineError("hyperdisco: saved vCPU state has the wrong size for this engine")
    ctypes.memmove(int(ctx.context.value) + start, blob[_HEAD.size:], length)
    uc.context_restore(ctx)
    ctypes.c_uint32.from_address(q.cpu + qs.CPU_HALTED).value = halted
    ctypes.c_int32.from_address(q.cpu + qs.CPU_EXCEPTION_INDEX).value = -1
    # a CR3 write through the API flushes QEMU's TLB (cpu_x86_update_cr3); translated code goes too
    uc.reg_write(X.UC_X86_REG_CR3, uc.reg_read(X.UC_X86_REG_CR3))
    uc.ctl_flush_tb()  # type: ignore[attr-defined]
