"""The tcg engine: one unicorn instance per vCPU, with exceptions and SYSCALL delivered in C."""

from __future__ import annotations

import ctypes
import functools
import struct
import time

from ...errors import EngineError
from ..base import ControlPolicy, Engine, RunResult, StopReason, TrapCounts, TrapHandler, Vcpu
from . import cpu_state
from . import qemu_state as qs
from .build import fastpath_library
from .smp import VcpuGroup
from .ticker import ticker
from .uc import X, check, hd, unicorn
from .unbacked import UnbackedWindows
from .unicorn_patches import CF_PARALLEL

HYPERCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
HF_CS64_MASK = 1 << 15  # QEMU target/i386/cpu.h: CS is a 64-bit code segment (long mode, CS.L)
HF_LMA_MASK = 1 << 14  # QEMU target/i386/cpu.h: long mode active (EFER.LMA)
HF_SS32_MASK = 1 << 5  # SS is a 32-bit stack segment (B)
HF_ADDSEG_MASK = 1 << 6  # a DS/ES/SS base is not 0
# int (*)(void *opaque, uint32_t msr, uint32_t op, uint64_t *value): op bit 0 write, bit 1 denied
MSR_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                          ctypes.POINTER(ctypes.c_uint64))
MSR_OP_WRITE, MSR_OP_DENIED = 1, 2


class _Layout(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in (
        "env_eip", "env_eflags", "env_hflags", "env_segs", "seg_size",
        "env_star", "env_lstar", "env_cstar", "env_fmask", "cpu_halted", "cpu_exception_index",
        "uc_nested_level", "uc_jmp_bufs")]


class _HdVcpu(ctypes.Structure):
    """Mirror of struct hd_vcpu in fastpath.c."""

    _fields_ = [
        ("uc", ctypes.c_void_p), ("cpu", ctypes.c_void_p), ("env", ctypes.c_void_p), ("lay", _Layout),
        ("hypercall", HYPERCALL_CB), ("opaque", ctypes.c_void_p),
        ("vectors", ctypes.c_uint64 * 256), ("pf_user", ctypes.c_uint64), ("pf_kernel", ctypes.c_uint64),
        ("syscalls", ctypes.c_uint64), ("hypercalls", ctypes.c_uint64), ("bad_intno", ctypes.c_uint64),
        ("first_syscall_tsc", ctypes.c_uint64), ("hooks", ctypes.c_size_t * 4),
        ("cpuid", ctypes.c_void_p), ("ncpuid", ctypes.c_uint64), ("cpuid_count", ctypes.c_uint64),
        ("dom", ctypes.c_void_p), ("protect_pending", ctypes.c_uint32), ("inval_overflow", ctypes.c_uint32),
        ("ninval", ctypes.c_uint64), ("inval", ctypes.c_uint64 * 64),
        ("code_invalidations", ctypes.c_uint64), ("code_flushes", ctypes.c_uint64),
        ("code_protects", ctypes.c_uint64), ("pending", ctypes.c_int32),
        ("msrs", ctypes.c_void_p), ("nmsrs", ctypes.c_uint64), ("msr_cb", MSR_CB),
        ("cr4_valid", ctypes.c_uint64), ("efer_valid", ctypes.c_uint64), ("cr3_reserved", ctypes.c_uint64),
        ("msr_count", ctypes.c_uint64), ("msr_gp", ctypes.c_uint64), ("cr_gp", ctypes.c_uint64),
        ("policy_hooks", ctypes.c_size_t * 3),
    ]


class _MsrRule(ctypes.Structure):
    """Mirror of struct hd_msr_rule in fastpath.c."""

    _fields_ = [("msr", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint64)]


class _CpuidEntry(ctypes.Structure):
    """Mirror of struct hd_cpuid_entry in fastpath.c."""

    _fields_ = [(n, ctypes.c_uint32) for n in ("leaf", "subleaf", "any_sub", "eax", "ebx", "ecx", "edx")]


_lib: ctypes.CDLL | None = None


def fastpath() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(fastpath_library()))
        lib.hd_install.argtypes = [ctypes.c_void_p]
        lib.hd_install.restype = ctypes.c_int
        lib.hd_install_cpuid.argtypes = [ctypes.c_void_p]
        lib.hd_install_cpuid.restype = ctypes.c_int
        lib.hd_install_policy.argtypes = [ctypes.c_void_p]
        lib.hd_install_policy.restype = ctypes.c_int
        lib.hd_can_inject.argtypes = [ctypes.c_void_p]
        lib.hd_can_inject.restype = ctypes.c_int
        lib.hd_inject.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.hd_inject.restype = ctypes.c_int
        lib.hd_sizeof_jmp_buf.restype = ctypes.c_size_t
        if lib.hd_sizeof_jmp_buf() != qs.JMP_BUF_SIZE:
            raise EngineError("hyperdisco: this C library's sigjmp_buf differs from unicorn's")
        lib.hd_rdtsc.argtypes = []
        lib.hd_rdtsc.restype = ctypes.c_uint64
        lib.hd_dom_new.argtypes = [ctypes.c_uint64]
        lib.hd_dom_new.restype = ctypes.c_void_p
        lib.hd_dom_free.argtypes = [ctypes.c_void_p]
        lib.hd_dom_free.restype = None
        lib.hd_dom_map.argtypes = [ctypes.c_void_p]
        lib.hd_dom_map.restype = ctypes.c_void_p
        lib.hd_dom_join.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.hd_dom_join.restype = ctypes.c_int
        lib.hd_dom_leave.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.hd_dom_leave.restype = None
        lib.hd_dom_host_written.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
        lib.hd_dom_host_written.restype = None
        lib.hd_drain.argtypes = [ctypes.c_void_p]
        lib.hd_drain.restype = ctypes.c_int
        lib.hd_sizeof_vcpu.restype = ctypes.c_size_t
        lib.hd_translate.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        lib.hd_translate.restype = ctypes.c_int64
        if lib.hd_sizeof_vcpu() != ctypes.sizeof(_HdVcpu):
            raise EngineError("hyperdisco: fast path library does not match its Python mirror")
        _lib = lib
    return _lib


# The CPU model QEMU's TCG presents by default (qemu64, vendor AMD). unicorn's own default is a Haswell
# model, which makes Linux enable page-table isolation: two CR3 writes, hence two full TLB flushes in TCG,
# per system call (measured: 8 us per syscall instead of 1). TCG does not speculate; neither model is
# vulnerable, but only the AMD one is believed so by the guest.
CPU_MODEL = X.UC_CPU_X86_QEMU64


def new_uc() -> unicorn.Uc:
    check()  # the patched library (uc.py), or a one-line error
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_cpu_model(CPU_MODEL)
    return uc


class TcgVcpu(Vcpu):
    def __init__(self, index: int, handler: TrapHandler, group: VcpuGroup | None = None) -> None:
        self.index = index
        self.handler = handler
        self.uc = new_uc()
        self._uch = qs.uc_handle(self.uc)
        self.q = qs.QemuState(self.uc)
        lib = fastpath()
        self._lib = lib
        self._regs = (ctypes.c_uint64 * 16).from_address(self.q.env)
        self._eip = ctypes.c_uint64.from_address(self.q.env + qs.ENV_EIP)
        self._eflags = ctypes.c_uint64.from_address(self.q.env + qs.ENV_EFLAGS)
        self._hflags = ctypes.c_uint32.from_address(self.q.env + qs.ENV_HFLAGS)
        self._old_exception = ctypes.c_int32.from_address(self.q.env + qs.ENV_OLD_EXCEPTION)
        hv = _HdVcpu()
        hv.uc = qs.uc_handle(self.uc)
        hv.cpu = self.q.cpu
        hv.env = self.q.env
        lay = hv.lay
        lay.env_eip, lay.env_eflags, lay.env_hflags = qs.ENV_EIP, qs.ENV_EFLAGS, qs.ENV_HFLAGS
        lay.env_segs, lay.seg_size = qs.ENV_SEGS, qs.SEG_SIZE
        lay.env_star, lay.env_lstar = self.q.msr[qs.MSR_STAR], self.q.msr[qs.MSR_LSTAR]
        lay.env_cstar, lay.env_fmask = self.q.msr[qs.MSR_CSTAR], self.q.msr[qs.MSR_FMASK]
        lay.cpu_halted, lay.cpu_exception_index = qs.CPU_HALTED, qs.CPU_EXCEPTION_INDEX
        lay.uc_nested_level, lay.uc_jmp_bufs = qs.UC_NESTED_LEVEL, qs.UC_JMP_BUFS
        self._hypercall_cb = HYPERCALL_CB(self._on_hypercall)  # kept alive with the vCPU
        hv.hypercall = self._hypercall_cb
        self._msr_cb = MSR_CB(self._on_msr)
        hv.msr_cb = self._msr_cb
        self._msr_table: ctypes.Array[_MsrRule] | None = None
        self._hv = hv
        self._hvp = ctypes.addressof(hv)
        rc = lib.hd_install(self._hvp)
        if rc != 0:
            raise EngineError(f"hyperdisco: installing the tcg fast path hooks failed ({rc})")
        self._cpuid_table: ctypes.Array[_CpuidEntry] | None = None
        self._py_cpuid_hook = self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_cpuid, None, 1, 0,
                                               X.UC_X86_INS_CPUID)
        self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        # physical memory with nothing behind it: to the handler's unbacked_read/unbacked_write (unbacked.py);
        # the hook is added when RAM is mapped at 0, for the addresses above it
        self._unbacked = UnbackedWindows(self.uc, self._on_unbacked_read, self._on_unbacked_write,
                                         self._unmap_keeping_state)
        self._unmapped_hook: int | None = None
        # No exit addresses: otherwise every emu_start ends by fetching at `until-1`, which faults once the
        # guest unmaps that page and leaves stale exception state behind (the prototype's silent stall).
        self.uc.ctl_exits_enabled(True)
        self.q.stop_only_at_block_starts()
        self._stop_requested = False
        self._closed = False
        self._stop_reason = StopReason.STOP
        self._io = self._cpuid = self._mmio = self._halts = self._slices = self._injected = 0
        self._error: str | None = None
        self._atomic_steps = 0
        self._cflags = 0  # what this instance translates with (uc_hd_set_cflags)
        self._kicked = False
        self.group = group if group is not None else VcpuGroup()
        self._kick_fn = self.kick  # one bound method: the group tells its members apart by identity
        self.group.join(self._kick_fn, lib, self._hvp)

    # -- traps that reach Python ------------------------------------------------------------------------
    def _guard(self, what: str, exc: BaseException) -> None:
        """An exception in a trap handler must not unwind through QEMU: record it and stop the vCPU."""
        self._error = f"{what}: {type(exc).__name__}: {exc}"
        self._stop_reason = StopReason.FATAL
        self.uc.emu_stop()

    def _on_hypercall(self, _opaque: int | None) -> None:
        try:
            self.handler.hypercall(self)
        except BaseException as exc:  # noqa: BLE001 - isolated per domain, reported by the core
            self._guard("hypercall", exc)

    def _on_msr(self, _opaque: int | None, msr: int, op: int, value: ctypes._Pointer[ctypes.c_uint64]) -> int:
        try:
            if op & MSR_OP_DENIED:
                self.handler.msr_denied(self, msr, bool(op & MSR_OP_WRITE), int(value[0]))
                return 1
            if op & MSR_OP_WRITE:
                return 0 if self.handler.wrmsr(self, msr, int(value[0])) else 1
            got = self.handler.rdmsr(self, msr)
            if got is None:
                return 1
            value[0] = got & 0xFFFFFFFFFFFFFFFF
            return 0
        except BaseException as exc:  # noqa: BLE001 - isolated per domain, reported by the core
            self._guard("msr", exc)
            return 1

    def load_control_policy(self, policy: ControlPolicy) -> None:
        table = (_MsrRule * len(policy.msrs))()
        for e, (msr, rule) in zip(table, sorted(policy.msrs.items()), strict=True):
            e.msr, e.flags, e.reserved = msr, rule.flags, rule.reserved & 0xFFFFFFFFFFFFFFFF
        self._msr_table = table  # kept alive as long as C reads it
        hv = self._hv
        hv.msrs, hv.nmsrs = ctypes.addressof(table), len(table)
        hv.cr4_valid, hv.efer_valid = policy.cr4_valid, policy.efer_valid
        hv.cr3_reserved = policy.cr3_reserved & 0xFFFFFFFFFFFFFFFF
        rc = self._lib.hd_install_policy(self._hvp)
        if rc != 0:
            raise EngineError("hyperdisco: this unicorn does not intercept RDMSR/WRMSR and control registers "
                              f"(not the project's patched build: scripts/setup.sh builds it) ({rc})")

    def _on_cpuid(self, uc: unicorn.Uc, _ud: object) -> bool:
        self._cpuid += 1
        try:
            regs = self._regs
            a, b, c, d = self.handler.cpuid(self, regs[0] & 0xFFFFFFFF, regs[1] & 0xFFFFFFFF)
            regs[0], regs[3], regs[1], regs[2] = a, b, c, d
        except BaseException as exc:  # noqa: BLE001
            self._guard("cpuid", exc)
        return True

    def _on_in(self, uc: unicorn.Uc, port: int, size: int, _ud: object) -> int:
        self._io += 1
        try:
            return self.handler.io_in(self, port, size) & ((1 << (8 * size)) - 1)
        except BaseException as exc:  # noqa: BLE001
            self._guard("port input", exc)
            return 0

    def _on_out(self, uc: unicorn.Uc, port: int, size: int, value: int, _ud: object) -> None:
        self._io += 1
        try:
            self.handler.io_out(self, port, size, value & ((1 << (8 * size)) - 1))
        except BaseException as exc:  # noqa: BLE001
            self._guard("port output", exc)

    def _on_mmio_read(self, uc: unicorn.Uc, offset: int, size: int, base: int) -> int:
        self._mmio += 1
        try:
            return self.handler.mmio_read(self, base + offset, size)
        except BaseException as exc:  # noqa: BLE001
            self._guard("mmio read", exc)
            return 0

    def _on_mmio_write(self, uc: unicorn.Uc, offset: int, size: int, value: int, base: int) -> None:
        self._mmio += 1
        try:
            self.handler.mmio_write(self, base + offset, size, value)
        except BaseException as exc:  # noqa: BLE001
            self._guard("mmio write", exc)

    def _on_unmapped(self, uc: unicorn.Uc, access: int, addr: int, size: int, value: int, ud: object) -> bool:
        try:
            return self._unbacked.on_unmapped(uc, access, addr, size, value, ud)
        except BaseException as exc:  # noqa: BLE001
            self._guard("unbacked memory", exc)
            return False

    def _on_unbacked_read(self, uc: unicorn.Uc, offset: int, size: int, base: int) -> int:
        try:
            return self.handler.unbacked_read(self, base + offset, size) & ((1 << (8 * size)) - 1)
        except BaseException as exc:  # noqa: BLE001
            self._guard("unbacked read", exc)
            return 0

    def _on_unbacked_write(self, uc: unicorn.Uc, offset: int, size: int, value: int, base: int) -> None:
        try:
            self.handler.unbacked_write(self, base + offset, size, value)
        except BaseException as exc:  # noqa: BLE001
            self._guard("unbacked write", exc)

    def load_cpuid(self, table: dict[tuple[int, int | None], tuple[int, int, int, int]]) -> None:
        """Answer CPUID from `table` in C from now on ((leaf, None) matches any subleaf; anything else is
        zeros), instead of calling the handler."""
        entries = (_CpuidEntry * len(table))()
        ordered = sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
        for e, ((leaf, sub), regs) in zip(entries, ordered, strict=True):
            e.leaf, e.subleaf, e.any_sub = leaf, sub or 0, sub is None
            e.eax, e.ebx, e.ecx, e.edx = regs
        first = self._cpuid_table is None
        self._cpuid_table = entries  # kept alive as long as C reads it
        self._hv.cpuid, self._hv.ncpuid = ctypes.addressof(entries), len(table)
        if first:
            self.uc.hook_del(self._py_cpuid_hook)
            if self._lib.hd_install_cpuid(self._hvp) != 0:
                raise EngineError("hyperdisco: installing the CPUID fast path failed")

    # -- memory -----------------------------------------------------------------------------------------
    def map_ram(self, gpa: int, size: int, host_address: int, writable: bool = True) -> None:
        prot = unicorn.UC_PROT_ALL if writable else unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
        self._unbacked.clear(gpa, size)
        self.uc.mem_map_ptr(gpa, size, prot, host_address)
        if gpa == 0 and self._unmapped_hook is None:
            # Bounded to the addresses above RAM: while any memory hook covers an address, unicorn keeps
            # the page's TLB entry on its slow write path once code was translated from it
            # (uc_mem_hook_installed in cputlb.c's notdirty_write); RAM must keep the fast one.
            self._unmapped_hook = self.uc.hook_add(
                unicorn.UC_HOOK_MEM_READ_UNMAPPED | unicorn.UC_HOOK_MEM_WRITE_UNMAPPED, self._on_unmapped,
                None, size, (1 << 64) - 1)

    def unmap_ram(self, gpa: int, size: int) -> None:
        self._unmap_keeping_state(gpa, size)

    def _unmap_keeping_state(self, gpa: int, size: int) -> None:
        """Remove a range (inside a hypercall too: a grant or grant-frame unmap). unicorn's mem_unmap
        leaves a page fault's state behind (old_exception 14, exception_index, CR2 = the range), so the
        guest's next ordinary page fault would be taken as a fault while delivering one (#DF): the
        vCPU's exception state is put back as it was (found with tests/integration/
        test_interdomain_grants.py: every unmap of a grant killed the grantee)."""
        exc_index = ctypes.c_int32.from_address(self.q.cpu + qs.CPU_EXCEPTION_INDEX)
        saved = (self._old_exception.value, exc_index.value, self.uc.reg_read(X.UC_X86_REG_CR2))
        try:
            self.uc.mem_unmap(gpa, size)
        finally:
            self._old_exception.value, exc_index.value = saved[0], saved[1]
            self.uc.reg_write(X.UC_X86_REG_CR2, saved[2])

    def map_mmio(self, gpa: int, size: int) -> None:
        self._unbacked.clear(gpa, size)
        self.uc.mmio_map(gpa, size, self._on_mmio_read, gpa, self._on_mmio_write, gpa)

    # -- entry ------------------------------------------------------------------------------------------
    def set_pvh_entry(self, entry: int, start_info: int, scratch: int) -> None:
        """unicorn starts in 64-bit mode; drop to flat 32-bit protected mode with paging off and far-jump
        from a trampoline (in the scratch page) to the PVH entry, as the PVH boot ABI requires."""
        uc = self.uc
        gdt = struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
        uc.mem_write(scratch, gdt)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, scratch, len(gdt) - 1, 0))
        uc.msr_write(qs.MSR_EFER, 0)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80000011)  # paging on then off clears long mode
        uc.reg_write(X.UC_X86_REG_CR0, 0x11)
        for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(r, 0x10)
        self._flat_data_segments()
        tramp = scratch + 0x100
        uc.mem_write(tramp, b"\xea" + struct.pack("<IH", entry, 0x08))  # ljmp 0x08:entry
        uc.reg_write(X.UC_X86_REG_RBX, start_info)
        uc.reg_write(X.UC_X86_REG_ESP, 0)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        self._eip.value = tramp

    def _flat_data_segments(self) -> None:
        """In unicorn's 64-bit mode a segment register write sets the selector only; the caches kept the
        flags unicorn started with, SS without its B bit, so the guest's first push/call used a 16-bit
        SP (found with a 32-bit PVH kernel whose stack lived above 64 KiB: its arguments were read
        0x100000 away from where they were pushed). The PVH ABI wants flat 32-bit read/write data
        segments (xen/include/public/arch-x86/hvm/start_info.h): fill ES, SS, DS, FS, GS as loading GDT
        entry 2 does (base 0, limit 4 GiB, flags = its high word) and mark SS 32-bit (QEMU's HF_SS32)."""
        for seg in (0, 2, 3, 4, 5):  # QEMU's R_ES, R_SS, R_DS, R_FS, R_GS
            at = self.q.env + qs.ENV_SEGS + seg * qs.SEG_SIZE
            ctypes.c_uint32.from_address(at).value = 0x10
            ctypes.c_uint64.from_address(at + 8).value = 0
            ctypes.c_uint32.from_address(at + 16).value = 0xFFFFFFFF
            ctypes.c_uint32.from_address(at + 20).value = 0x00CF9200
        self._hflags.value = (self._hflags.value | HF_SS32_MASK) & ~HF_ADDSEG_MASK

    def start_at_sipi(self, vector: int) -> None:
        """INIT then STARTUP (SDM vol. 3, table 9-1 and 8.4.4): real mode at vector << 12. Long mode is
        left the way set_pvh_entry leaves it (EFER.LME off, then CR0.PG off clears EFER.LMA: QEMU's
        cpu_x86_update_cr0), then protection; the segments are loaded as in real mode (base = selector
        << 4: qemu_state.load_real_mode_segment, which unicorn's register API cannot do in 64-bit mode)."""
        uc = self.uc
        uc.msr_write(qs.MSR_EFER, 0)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80000011)
        uc.reg_write(X.UC_X86_REG_CR0, 0x11)
        uc.reg_write(X.UC_X86_REG_CR0, 0x10)  # ET only: real mode
        uc.reg_write(X.UC_X86_REG_CR3, 0)
        uc.reg_write(X.UC_X86_REG_CR2, 0)
        for i in range(16):
            self._regs[i] = 0
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        uc.msr_write(0xC0000100, 0)  # FS.base
        uc.msr_write(0xC0000101, 0)  # GS.base
        uc.msr_write(0xC0000102, 0)  # KERNEL_GS_BASE
        for seg in (qs.R_ES, qs.R_SS, qs.R_DS, qs.R_FS, qs.R_GS):
            self.q.load_real_mode_segment(seg, 0)
        self.q.load_real_mode_segment(qs.R_CS, (vector & 0xFF) << 8)
        self.q.enter_real_mode_hflags()
        self._old_exception.value = -1
        self._eip.value = 0

    # -- running ----------------------------------------------------------------------------------------
    def run(self, slice_ns: int) -> RunResult:
        self._stop_requested = False
        self._stop_reason = StopReason.SLICE_END
        self.q.clear_halted()
        self._slices += 1
        group = self.group
        parallel = group.parallel
        if self._cflags != (CF_PARALLEL if parallel else 0):
            self._set_translation(parallel)
        self._kicked = False
        hv, hvp, drain = self._hv, self._hvp, self._lib.hd_drain
        tk = ticker()
        deadline = time.monotonic() + slice_ns / 1e9
        tk.arm(id(self), deadline, self.uc.emu_stop)
        try:
            while True:
                drain(hvp)  # code that others wrote is dropped before this vCPU runs on (fastpath.c)
                if parallel:
                    group.enter()
                    try:
                        self.uc.emu_start(self._eip.value, 0)
                    finally:
                        group.exit()
                else:
                    self.uc.emu_start(self._eip.value, 0)
                if hd.uc_hd_take_atomic(self._uch):
                    # a misaligned or MMIO locked access (EXCP_ATOMIC): run it with the domain's other
                    # vCPUs out of unicorn (smp.py)
                    tk.disarm(id(self))
                    group.exclusive(self._kick_fn, self._step_one)
                    tk.arm(id(self), deadline, self.uc.emu_stop)
                elif not hv.pending:
                    break  # stopped for a reason of its own: the slice ended, a trap, a halt, a kick
                # stopped only to run an instruction alone or to drop code others wrote: carry on
                if (self._kicked or self._stop_requested or self._error is not None or self.q.halted()
                        or hv.bad_intno or self._old_exception.value == 8 or time.monotonic() >= deadline):
                    break
        except unicorn.UcError as exc:
            return RunResult(StopReason.FATAL, f"engine error at rip {self._eip.value:#x}: {exc}")
        finally:
            tk.disarm(id(self))
        if self._error is not None:
            err, self._error = self._error, None
            return RunResult(StopReason.FATAL, err)
        if self._hv.bad_intno or self._old_exception.value == 8:
            # QEMU's check_exception() ends a fault while delivering #DF as a reset request and leaves
            # old_exception at #DF: a triple fault, which ends the domain as on real hardware under Xen
            return RunResult(StopReason.FATAL, "triple fault")
        if self._stop_requested:
            return RunResult(self._stop_reason)
        if self.q.halted():
            self._halts += 1
            return RunResult(StopReason.HALT)
        return RunResult(StopReason.SLICE_END)

    def _set_translation(self, parallel: bool) -> None:
        """On the vCPU's own thread, between runs: translate with CF_PARALLEL (locked instructions as host
        atomics) or not, and drop what was translated the other way (its blocks are chained together)."""
        self._cflags = CF_PARALLEL if parallel else 0
        hd.uc_hd_set_cflags(self._uch, self._cflags)
        self.uc.ctl_flush_tb()  # type: ignore[attr-defined]

    def _step_one(self) -> None:
        """The instruction at rip, alone and translated without CF_PARALLEL (unicorn_patches.py
        "step-one"). If a stop request was pending it does not run; the slice then meets it again."""
        self._atomic_steps += 1
        hd.uc_hd_set_step(self._uch, 1)
        try:
            self.uc.emu_start(self._eip.value, 0)
        finally:
            hd.uc_hd_set_step(self._uch, 0)

    def kick(self) -> None:
        self._kicked = True
        if not self._closed:  # a late wake-up of a destroyed domain must not reach a freed instance
            self.uc.emu_stop()

    def request_stop(self) -> None:
        self._stop_requested = True
        self._stop_reason = StopReason.STOP
        self.uc.emu_stop()

    def host_wrote(self, gpa: int, size: int) -> None:
        self.group.host_wrote(gpa, size)

    # -- state ------------------------------------------------------------------------------------------
    def gpr(self, index: int) -> int:
        return int(self._regs[index])

    def set_gpr(self, index: int, value: int) -> None:
        self._regs[index] = value & 0xFFFFFFFFFFFFFFFF

    @property
    def rip(self) -> int:
        return int(self._eip.value)

    def translate(self, va: int) -> int | None:
        pa = int(self._lib.hd_translate(self._hvp, va & 0xFFFFFFFFFFFFFFFF))
        return None if pa < 0 else pa

    def cpl(self) -> int:
        return self._hflags.value & 3

    def paging_state(self) -> tuple[int, int, int, bool] | None:
        uc = self.uc
        return (uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3), uc.reg_read(X.UC_X86_REG_CR4),
                bool(self._hflags.value & HF_LMA_MASK))

    def in_64bit_mode(self) -> bool:
        return bool(self._hflags.value & HF_CS64_MASK)

    def interrupts_enabled(self) -> bool:
        return bool(self._lib.hd_can_inject(self._hvp))

    def inject_interrupt(self, vector: int) -> str | None:
        self._injected += 1
        self._lib.hd_drain(self._hvp)  # the handler must not run code another thread already rewrote
        rc = self._lib.hd_inject(self._hvp, vector)
        if rc < 0:
            raise EngineError("hyperdisco: interrupt injection attempted while the vCPU runs")
        return (None, "IDT or stack not in guest memory", "triple fault")[rc]

    def export_state(self, inside_trap: bool = False) -> bytes:
        return cpu_state.export_state(self.uc, self.q, inside_trap)

    def import_state(self, state: bytes) -> None:
        cpu_state.import_state(self.uc, self.q, state)

    def counts(self) -> TrapCounts:
        hv = self._hv
        return TrapCounts(
            exceptions={v: int(n) for v, n in enumerate(hv.vectors) if n},
            page_faults_user=int(hv.pf_user), page_faults_kernel=int(hv.pf_kernel),
            syscalls=int(hv.syscalls), hypercalls=int(hv.hypercalls), io=self._io,
            cpuid=self._cpuid + int(hv.cpuid_count),
            mmio=self._mmio, halts=self._halts, slices=self._slices, injected=self._injected,
            first_syscall_tsc=int(hv.first_syscall_tsc),
            msr=int(hv.msr_count), msr_gp=int(hv.msr_gp), cr_gp=int(hv.cr_gp),
            engine={k: n for k, n in (
                ("atomic_steps", self._atomic_steps),  # EXCP_ATOMIC: run alone (smp.py)
                ("code.pages_dropped", int(hv.code_invalidations)),  # another's store or the host's write
                ("code.caches_dropped", int(hv.code_flushes)),  # more than 64 pages at once
                ("code.protects", int(hv.code_protects)),  # TLB entries older than another's code
            ) if n},
        )

    def close(self) -> None:
        """Free the unicorn instance now (its translated code is tens of MiB), not whenever the garbage
        collector gets to it. The vCPU must not run again."""
        self._closed = True
        self.group.leave_group(self._kick_fn, self._lib, self._hvp)
        ticker().disarm(id(self))
        finalizer = getattr(self.uc, "_Uc__finalizer", None)  # the binding's own uc_close, run once
        if finalizer is not None:
            finalizer()


class TcgEngine(Engine):
    name = "tcg"

    def guest_tsc(self) -> int:
        return host_tsc()

    def native_cpuid(self) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        return native_cpuid_table()

    def create_vcpu(self, index: int, handler: TrapHandler, sibling: Vcpu | None = None) -> Vcpu:
        return TcgVcpu(index, handler, sibling.group if isinstance(sibling, TcgVcpu) else None)


def host_tsc() -> int:
    """The host TSC, which guest rdtsc also reads on this engine."""
    return int(fastpath().hd_rdtsc())


@functools.lru_cache(maxsize=1)
def native_cpuid_table() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """CPUID of the CPU model TCG emulates, read by running the instruction in a scratch instance."""
    u = new_uc()
    u.mem_map(0, 0x1000)
    u.mem_write(0, b"\x0f\xa2")
    regs = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)

    def q(leaf: int, sub: int) -> tuple[int, int, int, int]:
        u.reg_write(X.UC_X86_REG_RAX, leaf)
        u.reg_write(X.UC_X86_REG_RCX, sub)
        u.emu_start(0, 2)
        a, b, c, d = (u.reg_read(r) & 0xFFFFFFFF for r in regs)
        return (a, b, c, d)

    table: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for base in (0, 0x80000000):
        top = q(base, 0)[0]
        for leaf in range(base, min(top, base + 0x40) + 1):
            for sub in range(8 if leaf in (4, 7, 0xB, 0xD, 0xF, 0x10, 0x14) else 1):
                table[(leaf, sub)] = q(leaf, sub)
    return table
