"""QEMU's CPU state inside unicorn 2.1.4, reached through ctypes.

unicorn hides QEMU's CPUState and CPUX86State; the engine needs them to deliver exceptions through the
guest IDT, to perform SYSCALL and to inject interrupts. The offsets below were read from the disassembly
of libunicorn.so.2 2.1.4 (the PyPI wheel's; the project's patched build, uc.py, keeps them: its new
uc_struct fields are at the end) (uc_emu_stop, uc_context_save, x86_cpu_do_interrupt_x86_64, helper_hlt,
check_exit_request, cpu_loop_exit) and every one that can be is verified at start-up against values
written through the public API. A different unicorn build is refused with a one-line error.
"""

from __future__ import annotations

import ctypes

from ...errors import EngineError
from .uc import X, unicorn

PINNED_VERSION = "2.1.4"

UC_CPU = 0x1B8  # struct uc_struct: CPUState *cpu
UC_HOOK_INSERT = 0x7F0  # uc_struct: bool hook_insert
UC_NO_EXIT_REQUEST = 0x7F2  # uc_struct: bool no_exit_request
UC_INIT_DONE = 0x7F3  # uc_struct: bool init_done
UC_JMP_BUFS = 0x7F8  # uc_struct: sigjmp_buf jmp_bufs[] (one per nested uc_emu_start)  (cpu_loop_exit)
UC_NESTED_LEVEL = 0x39F8  # uc_struct: int nested_level                                  (cpu_loop_exit)
JMP_BUF_SIZE = 200  # glibc x86-64 sigjmp_buf; cpu_loop_exit indexes jmp_bufs by 25 * 8 bytes
CPU_ENV_PTR = 0x128  # CPUState: void *env_ptr
CPU_HALTED = 0x8198  # CPUState: uint32_t halted
CPU_EXCEPTION_INDEX = 0x81A0  # CPUState: int32_t exception_index
ENV_IN_CPU = 0x8A50  # X86CPU: CPUX86State env
# CPUX86State
ENV_EIP, ENV_EFLAGS, ENV_HFLAGS, ENV_SEGS, SEG_SIZE = 0x80, 0x88, 0xB0, 0xB8, 24
ENV_OLD_EXCEPTION = 0x1578

MSR_EFER, MSR_STAR, MSR_LSTAR = 0xC0000080, 0xC0000081, 0xC0000082
MSR_CSTAR, MSR_FMASK = 0xC0000083, 0xC0000084
# CPUX86State fields behind those MSRs (star, lstar, cstar, fmask); each is verified at start-up by
# writing a marker with uc_msr_write and reading it back here
ENV_MSR = {MSR_STAR: 0x12D8, MSR_LSTAR: 0x12E8, MSR_CSTAR: 0x12F0, MSR_FMASK: 0x12F8}
HF_INHIBIT_IRQ_MASK = 1 << 3
# QEMU target/i386/cpu.h: hflags bits, segment indices and descriptor flags for real-mode segments
HF_CPL_MASK, HF_CS32_MASK, HF_SS32_MASK, HF_ADDSEG_MASK = 3, 1 << 4, 1 << 5, 1 << 6
HF_LMA_MASK, HF_CS64_MASK = 1 << 14, 1 << 15
R_ES, R_CS, R_SS, R_DS, R_FS, R_GS = range(6)
REAL_MODE_SEG_FLAGS = (1 << 15) | (1 << 12) | (1 << 9) | (1 << 8)  # DESC_P | DESC_S | DESC_W | DESC_A


def _u64(addr: int) -> ctypes.c_uint64:
    return ctypes.c_uint64.from_address(addr)


def uc_handle(uc: unicorn.Uc) -> int:
    h = uc._uch
    return int(h.value if hasattr(h, "value") else h)


class QemuState:
    """Addresses of one unicorn instance's QEMU CPUState and env, verified."""

    def __init__(self, uc: unicorn.Uc) -> None:
        if unicorn.__version__ != PINNED_VERSION:
            raise EngineError(
                f"hyperdisco: the tcg engine needs unicorn {PINNED_VERSION}, found {unicorn.__version__}"
            )
        uc.reg_write(X.UC_X86_REG_RAX, 0)  # forces the lazy engine init so uc->cpu exists
        self.uch = uc_handle(uc)
        self.cpu = _u64(self.uch + UC_CPU).value
        self.env = _u64(self.cpu + CPU_ENV_PTR).value
        if self.cpu == 0 or self.env != self.cpu + ENV_IN_CPU:
            raise EngineError("hyperdisco: unicorn's internal layout is not the one this engine knows")
        for val in (0x1122334455667788, 0x8877665544332211):
            uc.reg_write(X.UC_X86_REG_RAX, val)
            uc.reg_write(X.UC_X86_REG_R11, val ^ 1)
            uc.reg_write(X.UC_X86_REG_RIP, val >> 20)
            if (_u64(self.env).value, _u64(self.env + 11 * 8).value, _u64(self.env + ENV_EIP).value) != (
                val, val ^ 1, val >> 20
            ):
                raise EngineError("hyperdisco: unicorn's register file is not where this engine expects it")
        uc.reg_write(X.UC_X86_REG_RAX, 0)
        uc.reg_write(X.UC_X86_REG_R11, 0)
        self.msr = {m: self._find_msr(uc, m) for m in (MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK)}
        if ctypes.c_int32.from_address(self.uch + UC_NESTED_LEVEL).value != 0:
            raise EngineError("hyperdisco: unicorn's nesting level is not where this engine expects it")

    def _find_msr(self, uc: unicorn.Uc, msr: int) -> int:
        """The env offset of `msr`, checked: never scan memory we do not know to be CPU state (a scan past
        the end of the structure can fault)."""
        off = ENV_MSR[msr]
        old = uc.msr_read(msr)
        for magic in (0x5A5A000000001234 | (msr & 0xFFFF) << 16, 0x1234A5A5A5A5 ^ msr):
            uc.msr_write(msr, magic)
            if _u64(self.env + off).value != magic:
                uc.msr_write(msr, old)
                raise EngineError(f"hyperdisco: MSR {msr:#x} is not where this engine expects it in unicorn")
        uc.msr_write(msr, old)
        return off

    def stop_only_at_block_starts(self) -> None:
        """Set uc->no_exit_request: an asynchronous uc_emu_stop() then takes effect only when the next
        translation block starts, an instruction boundary. Without it unicorn checks for a stop after
        guest loads and stores and restarts the instruction, so read-modify-write instructions would
        run twice."""
        init_done = ctypes.c_uint8.from_address(self.uch + UC_INIT_DONE).value
        if init_done != 1:
            raise EngineError("hyperdisco: unicorn instance not initialised as expected")
        ctypes.c_uint8.from_address(self.uch + UC_NO_EXIT_REQUEST).value = 1

    def halted(self) -> bool:
        return ctypes.c_uint32.from_address(self.cpu + CPU_HALTED).value != 0

    def clear_halted(self) -> None:
        ctypes.c_uint32.from_address(self.cpu + CPU_HALTED).value = 0

    def load_real_mode_segment(self, seg: int, selector: int) -> None:
        """A segment register as a real-mode load leaves it (QEMU's cpu_x86_load_seg without CR0.PE):
        base = selector << 4, limit 0xFFFF. unicorn's register API in 64-bit mode sets only the
        selector. struct SegmentCache: uint32 selector, target_ulong base, uint32 limit, uint32 flags."""
        at = self.env + ENV_SEGS + seg * SEG_SIZE
        ctypes.c_uint32.from_address(at).value = selector & 0xFFFF
        ctypes.c_uint64.from_address(at + 8).value = (selector & 0xFFFF) << 4
        ctypes.c_uint32.from_address(at + 16).value = 0xFFFF
        ctypes.c_uint32.from_address(at + 20).value = REAL_MODE_SEG_FLAGS

    def enter_real_mode_hflags(self) -> None:
        """hflags as QEMU computes them for real mode: CPL 0, 16-bit code and stack, segment bases added."""
        h = ctypes.c_uint32.from_address(self.env + ENV_HFLAGS)
        h.value = (h.value & ~(HF_CPL_MASK | HF_CS32_MASK | HF_SS32_MASK | HF_LMA_MASK | HF_CS64_MASK)) \
            | HF_ADDSEG_MASK

    def hflags(self) -> int:
        return ctypes.c_uint32.from_address(self.env + ENV_HFLAGS).value
