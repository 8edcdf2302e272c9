"""Are x86 locked instructions atomic across unicorn instances that share guest RAM? (issue 9)

Each "vCPU" is its own unicorn 2.1.4 instance (own TCG context, TB cache, CPU state) on its own Python
thread (ctypes drops the GIL inside uc_emu_start); all map the same host buffer with uc_mem_map_ptr.

    .venv/bin/python bench/smp_probe/atomic_probe.py                 # the wheel's libunicorn (stock)
    LIBUNICORN_PATH=DIR .venv/bin/python bench/smp_probe/atomic_probe.py
        # DIR/libunicorn.so.2 built by build_parallel_unicorn.sh: curr_cflags() returns the exported
        # global uc_hd_curr_cflags, so translation with CF_PARALLEL (0x80000) can be switched on

Sections: atomicity (10 runs per test, with and without CF_PARALLEL when available), single-thread
throughput, stop-the-world cases (misaligned / MMIO locked ops, in a child process with a time limit),
cross-instance self-modifying code, and the fallback (vCPUs taking turns on one host thread).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time

import unicorn
from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as _ucmod

CF_PARALLEL = 0x00080000
RAM_SIZE = 0x40000
CODE = 0x1000  # vCPU code (one copy in shared RAM, translated by every instance)
VICTIM = 0x3000  # SMC victim function
COUNTER = 0x10000  # 16-byte aligned counter
LOCK = 0x10040  # spinlock word, own cache line
MMIO = 0x100000

# Each program: rsi = &counter, rdi = &lock, rcx = iterations (r10 for the cmpxchg8b/16b loops), rdx = a
# per-thread bit (lock_or_and); ends at `done` (emu_start's until address). Counter tests expect
# threads * n at the end; r11 counts anomalies the program itself sees.
PROGRAMS = {
    "lock_inc": "1: lock inc qword ptr [rsi]\n dec rcx\n jnz 1b\n",
    "lock_add": "1: lock add qword ptr [rsi], 1\n dec rcx\n jnz 1b\n",
    "lock_xadd": "1: mov edx, 1\n lock xadd qword ptr [rsi], rdx\n dec rcx\n jnz 1b\n",
    # spinlocks protecting a plain (non-atomic) load/increment/store of the counter
    "cmpxchg_spinlock": (
        "1: xor eax, eax\n mov edx, 1\n lock cmpxchg dword ptr [rdi], edx\n jnz 1b\n"
        " mov r8, [rsi]\n inc r8\n mov [rsi], r8\n mov dword ptr [rdi], 0\n dec rcx\n jnz 1b\n"
    ),
    "xchg_spinlock": (
        "1: mov edx, 1\n xchg dword ptr [rdi], edx\n test edx, edx\n jnz 1b\n"
        " mov r8, [rsi]\n inc r8\n mov [rsi], r8\n mov dword ptr [rdi], 0\n dec rcx\n jnz 1b\n"
    ),
    "bts_spinlock": (
        "1: lock bts dword ptr [rdi], 0\n jc 1b\n"
        " mov r8, [rsi]\n inc r8\n mov [rsi], r8\n mov dword ptr [rdi], 0\n dec rcx\n jnz 1b\n"
    ),
    # 64-bit counter through lock cmpxchg8b (edx:eax, ecx:ebx) and 128-bit through lock cmpxchg16b
    "cmpxchg8b": (
        "1: mov eax, [rsi]\n mov edx, [rsi+4]\n"
        "2: mov ebx, eax\n mov ecx, edx\n add ebx, 1\n adc ecx, 0\n lock cmpxchg8b qword ptr [rsi]\n jnz 2b\n"
        " dec r10\n jnz 1b\n"
    ),
    "cmpxchg16b": (
        "1: mov rax, [rsi]\n mov rdx, [rsi+8]\n"
        "2: mov rbx, rax\n mov rcx, rdx\n add rbx, 1\n adc rcx, 0\n lock cmpxchg16b xmmword ptr [rsi]\n"
        " jnz 2b\n dec r10\n jnz 1b\n"
    ),
    # each thread sets and clears its own bit with lock or / lock and; after its `or` the bit must stay
    # set until its own `and` (a lost update by another thread's read-modify-write clears it)
    "lock_or_and": (
        " mov r8, rdx\n not r8\n"
        "1: lock or qword ptr [rsi], rdx\n test qword ptr [rsi], rdx\n jnz 2f\n inc r11\n"
        "2: lock and qword ptr [rsi], r8\n dec rcx\n jnz 1b\n"
    ),
    # plain (unlocked) increment: the control for the throughput section
    "plain_inc": "1: inc qword ptr [rsi]\n dec rcx\n jnz 1b\n",
}
COUNTED = {"lock_inc", "lock_add", "lock_xadd", "cmpxchg_spinlock", "xchg_spinlock", "bts_spinlock",
           "cmpxchg8b", "cmpxchg16b"}
LOOP_REG = {"cmpxchg8b": X.UC_X86_REG_R10, "cmpxchg16b": X.UC_X86_REG_R10}

_asm_cache: dict[str, bytes] = {}


def assemble(src: str) -> bytes:
    """GNU as (binutils), Intel syntax, to a flat binary; a trailing `nop` marks `done`."""
    if src not in _asm_cache:
        with tempfile.TemporaryDirectory() as d:
            s, o, b = (os.path.join(d, n) for n in ("p.s", "p.o", "p.bin"))
            with open(s, "w") as f:
                f.write(".intel_syntax noprefix\n.text\n" + src + "done: nop\n")
            subprocess.run(["as", "--64", "-o", o, s], check=True)
            subprocess.run(["objcopy", "-O", "binary", "-j", ".text", o, b], check=True)
            with open(b, "rb") as f:
                _asm_cache[src] = f.read()
    return _asm_cache[src]


def cflags_var() -> ctypes.c_uint32 | None:
    try:
        return ctypes.c_uint32.in_dll(_ucmod.uclib, "uc_hd_curr_cflags")
    except ValueError:
        return None


def set_parallel(on: bool) -> None:
    v = cflags_var()
    if v is None:
        if on:
            raise SystemExit("this libunicorn has no uc_hd_curr_cflags (stock): CF_PARALLEL unavailable")
        return
    v.value = CF_PARALLEL if on else 0


class Ram:
    """One host buffer: the domain's guest RAM, shared by every instance."""

    def __init__(self, size: int = RAM_SIZE) -> None:
        self.mm = mmap.mmap(-1, size)
        self.buf = (ctypes.c_char * size).from_buffer(self.mm)
        self.addr = ctypes.addressof(self.buf)
        self.size = size

    def u64(self, gpa: int) -> int:
        return int.from_bytes(self.mm[gpa:gpa + 8], "little")

    def u128(self, gpa: int) -> int:
        return int.from_bytes(self.mm[gpa:gpa + 16], "little")

    def write(self, gpa: int, data: bytes) -> None:
        self.mm[gpa:gpa + len(data)] = data


def new_vcpu(ram: Ram) -> unicorn.Uc:
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_QEMU64)  # the product's CPU model
    uc.mem_map_ptr(0, ram.size, unicorn.UC_PROT_ALL, ram.addr)
    return uc


def close(uc: unicorn.Uc) -> None:
    fin = getattr(uc, "_Uc__finalizer", None)
    if fin is not None:
        fin()


def prepare(uc: unicorn.Uc, test: str, n: int, index: int) -> None:
    uc.reg_write(X.UC_X86_REG_RSI, COUNTER)
    uc.reg_write(X.UC_X86_REG_RDI, LOCK)
    uc.reg_write(LOOP_REG.get(test, X.UC_X86_REG_RCX), n)
    uc.reg_write(X.UC_X86_REG_RDX, 1 << index)
    uc.reg_write(X.UC_X86_REG_R11, 0)


HANG_US = 5_000_000  # a run not done after 5 s is a deadlock (a spinlock word left at 1 with no owner)


def run_threads(test: str, n: int, threads: int) -> tuple[int, int, float]:
    """Fresh instances on `threads` host threads; returns (final counter, anomalies, seconds); the
    counter is -1 when a thread hung (did not reach `done` within HANG_US)."""
    ram = Ram()
    code = assemble(PROGRAMS[test])
    ram.write(CODE, code)
    done = CODE + len(code) - 1
    vcpus = [new_vcpu(ram) for _ in range(threads)]
    for i, uc in enumerate(vcpus):
        prepare(uc, test, n, i)
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(uc: unicorn.Uc) -> None:
        barrier.wait()
        try:
            uc.emu_start(CODE, done, timeout=HANG_US)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=body, args=(uc,)) for uc in vcpus]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    final = ram.u128(COUNTER) if test == "cmpxchg16b" else ram.u64(COUNTER)
    if any(uc.reg_read(X.UC_X86_REG_RIP) != done for uc in vcpus):
        final = -1
    anomalies = sum(uc.reg_read(X.UC_X86_REG_R11) for uc in vcpus)
    if test == "lock_or_and":
        anomalies += final != 0
    if test.endswith("spinlock") and ram.u64(LOCK) & 0xFFFFFFFF:
        anomalies += 1
    for uc in vcpus:
        close(uc)
    return final, anomalies, dt


def section_atomicity(runs: int, threads: int, n: int, modes: list[bool]) -> None:
    print(f"== atomicity: {threads} instances on {threads} host threads, {n} iterations each, {runs} runs")
    for parallel in modes:
        set_parallel(parallel)
        label = "CF_PARALLEL" if parallel else "stock cflags=0"
        for test in PROGRAMS:
            if test == "plain_inc":
                continue
            results = []
            total_dt = 0.0
            for _ in range(runs):
                final, anomalies, dt = run_threads(test, n, threads)
                total_dt += dt
                results.append((final, anomalies))
            if test in COUNTED:
                expect = threads * n
                lost = ["HUNG" if f < 0 else str(expect - f) for f, _ in results]
                ok = sum(1 for f, a in results if f == expect and a == 0)
                detail = "lost per run: " + " ".join(lost)
            else:
                ok = sum(1 for _, a in results if a == 0)
                detail = "anomalies per run: " + " ".join(str(a) for _, a in results)
            hung = sum(1 for f, _ in results if f < 0)
            rate = "   hung" if hung == runs else f"{threads * n * runs / total_dt / 1e6:6.1f} M iter/s total"
            print(f"  [{label:14}] {test:17} exact {ok:2}/{runs}  {rate}  ({detail})")
    set_parallel(False)


def section_throughput(n: int, modes: list[bool]) -> None:
    print(f"== single instance, single thread, {n} iterations: M iterations/s (best of 3)")
    for test in ("plain_inc", "lock_inc", "lock_xadd", "cmpxchg_spinlock", "xchg_spinlock", "cmpxchg16b"):
        row = []
        for parallel in modes:
            set_parallel(parallel)
            best = min(run_threads(test, n, 1)[2] for _ in range(3))
            row.append(n / best / 1e6)
        cells = "  ".join(f"{'parallel' if p else 'stock'} {r:7.1f}" for p, r in zip(modes, row, strict=True))
        ratio = f"  slowdown x{row[0] / row[1]:.2f}" if len(row) == 2 else ""
        print(f"  {test:17} {cells}{ratio}")
    set_parallel(False)


def child_stop_the_world(kind: str) -> None:
    """Runs in a child process: one locked op that atomic_mmu_lookup() cannot do on a host address."""
    set_parallel(True)
    ram = Ram()
    uc = new_vcpu(ram)
    if kind == "misaligned":
        code = assemble("lock inc qword ptr [rsi+1]\n")
        target = COUNTER
    else:
        uc.mmio_map(MMIO, 0x1000, lambda *a: 0, None, lambda *a: None, None)
        code = assemble("lock inc qword ptr [rsi]\n")
        target = MMIO
    ram.write(CODE, code)
    uc.reg_write(X.UC_X86_REG_RSI, target)
    t0 = time.perf_counter()
    uc.emu_start(CODE, CODE + len(code) - 1, timeout=2_000_000)  # 2 s, in microseconds
    dt = time.perf_counter() - t0
    rip = uc.reg_read(X.UC_X86_REG_RIP)
    print(f"{kind}: emu_start returned after {dt:.2f}s, rip {rip:#x} (instruction at {CODE:#x}, "
          f"{'completed' if rip != CODE else 'NOT completed'}), memory {ram.u64(COUNTER):#x}")


def section_stop_the_world() -> None:
    print("== locked ops that need stop-the-world under CF_PARALLEL (child process, 2 s unicorn timeout)")
    for kind in ("misaligned", "mmio"):
        try:
            p = subprocess.run([sys.executable, __file__, "--child", kind], capture_output=True, text=True,
                               timeout=30, env=os.environ)
            out = (p.stdout.strip() or p.stderr.strip().splitlines()[-1:] or ["?"])
            print("  " + (out if isinstance(out, str) else out[0]))
        except subprocess.TimeoutExpired:
            print(f"  {kind}: child did not finish in 30 s (livelock not even stoppable)")


def section_smc() -> None:
    print("== self-modifying code across instances (code in the shared RAM)")
    ram = Ram()
    # mov eax, 1 ; jmp VEXIT. The exit (emu_start's `until`) is on another page: unicorn invalidates the
    # TBs covering the until address when emu_start returns, which would hide a stale victim TB.
    vexit = VICTIM + 0x2000
    rel = (vexit - (VICTIM + 10)).to_bytes(4, "little", signed=True)
    ram.write(VICTIM, b"\xb8\x01\x00\x00\x00\xe9" + rel)
    ram.write(vexit, b"\x90")
    a, b = new_vcpu(ram), new_vcpu(ram)

    def call(uc: unicorn.Uc) -> int:
        uc.emu_start(VICTIM, vexit)
        return uc.reg_read(X.UC_X86_REG_RAX)

    def guest_store(uc: unicorn.Uc, value: int) -> None:
        code = assemble(f"mov byte ptr [{VICTIM + 1:#x}], {value}\n")
        ram.write(CODE, code)
        uc.emu_start(CODE, CODE + len(code) - 1)

    def tlb_flush(uc: unicorn.Uc) -> None:  # what the guest's shootdown handler does: mov cr3 (full flush)
        code = assemble("mov rax, cr3\n mov cr3, rax\n")
        ram.write(CODE + 0x800, code)
        uc.emu_start(CODE + 0x800, CODE + 0x800 + len(code) - 1)

    print(f"  B runs victim: {call(b)}  (translated and cached in B)")
    guest_store(a, 2)
    print(f"  A stores 2 into the victim's immediate; B runs victim: {call(b)}   A runs it: {call(a)}")
    tlb_flush(b)
    print(f"  B flushes its TLB (mov cr3), runs victim: {call(b)}")
    b.ctl_remove_cache(VICTIM, VICTIM + 1)
    print(f"  after uc_ctl_remove_cache on B (B stopped, on its own thread): B runs victim: {call(b)}")
    guest_store(b, 3)
    print(f"  B itself stores 3 (same-instance SMC, QEMU's notdirty path): B runs victim: {call(b)}")
    ram.write(VICTIM + 1, bytes([4]))
    print(f"  the host (a backend, through its own mapping) writes 4: B runs victim: {call(b)}")
    t0 = time.perf_counter()
    b.ctl_flush_tb()
    dt = time.perf_counter() - t0
    print(f"  after uc_ctl_flush_tb on B ({dt * 1e6:.0f} us): B runs victim: {call(b)}")
    close(a)
    close(b)


def section_timesliced(n: int, slices_us: list[int]) -> None:
    """The fallback: a domain's vCPUs take turns on one host thread; stops only at TB starts (the product's
    no_exit_request), so a locked instruction is never cut and counts stay exact without CF_PARALLEL."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from hyperdisco.engine.tcg import qemu_state as qs

    set_parallel(False)
    print(f"== fallback: vCPUs time-sliced on one host thread, lock_inc, {n} iterations per vCPU")
    code = assemble(PROGRAMS["lock_inc"])

    def run(nvcpu: int, slice_us: int) -> tuple[float, int, int]:
        ram = Ram()
        ram.write(CODE, code)
        done = CODE + len(code) - 1
        vcpus = []
        for i in range(nvcpu):
            uc = new_vcpu(ram)
            qs.QemuState(uc).stop_only_at_block_starts()
            prepare(uc, "lock_inc", n, i)
            vcpus.append(uc)
        rips = [CODE] * nvcpu
        switches = 0
        t0 = time.perf_counter()
        live = list(range(nvcpu))
        while live:
            for i in list(live):
                vcpus[i].emu_start(rips[i], done, timeout=slice_us)
                switches += 1
                rips[i] = vcpus[i].reg_read(X.UC_X86_REG_RIP)
                if rips[i] == done:
                    live.remove(i)
        dt = time.perf_counter() - t0
        final = ram.u64(COUNTER)
        for uc in vcpus:
            close(uc)
        return dt, switches, final

    base_dt, _, _ = run(1, 0)
    print(f"  1 vCPU, no slicing: {n / base_dt / 1e6:.1f} M iter/s")
    for s in slices_us:
        dt, sw, final = run(2, s)
        print(f"  2 vCPUs, {s:6} us slices: {2 * n / dt / 1e6:5.1f} M iter/s total, {sw} slices, "
              f"counter {'exact' if final == 2 * n else f'LOST {2 * n - final}'}, "
              f"{(dt - 2 * base_dt) / sw * 1e6:.1f} us overhead per slice")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--perf-n", type=int, default=10_000_000)
    ap.add_argument("--sections", default="atomicity,throughput,stw,smc,timesliced")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child_stop_the_world(args.child)
        return
    lib = getattr(_ucmod.uclib, "_name", "?")
    can = cflags_var() is not None
    print(f"unicorn {unicorn.__version__} from {lib}; CF_PARALLEL switch: {'yes' if can else 'no (stock)'}; "
          f"host cpus {os.cpu_count()}")
    modes = [False, True] if can else [False]
    secs = args.sections.split(",")
    if "atomicity" in secs:
        section_atomicity(args.runs, args.threads, args.n, modes)
    if "throughput" in secs:
        section_throughput(args.perf_n, modes)
    if "stw" in secs and can:
        section_stop_the_world()
    if "smc" in secs:
        section_smc()
    if "timesliced" in secs:
        section_timesliced(args.perf_n // 2, [10_000, 1_000, 100])


if __name__ == "__main__":
    main()
