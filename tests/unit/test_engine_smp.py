"""Several tcg vCPUs of one domain on several host threads, sharing guest RAM: locked instructions are
atomic across them (CF_PARALLEL, the atomic xchg helper), and locked accesses that cannot be host atomics
(misaligned, MMIO) complete, alone, with the other vCPUs stopped (unicorn_patches.py, engine/tcg/smp.py)."""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from unit_support import QuietTraps

from hyperdisco.engine.base import RCX, RDI, RSI, StopReason, Vcpu
from hyperdisco.engine.tcg.engine import TcgEngine, TcgVcpu
from hyperdisco.engine.tcg.uc import X

RAM = 1 << 20
CODE = 0x1000
COUNTER = 0x10000
LOCK = 0x10040
MMIO = 0x200000

# 64-bit code (GNU as, Intel syntax); rsi = &counter, rdi = &lock, rcx = iterations; each ends with hlt
LOCK_INC = bytes.fromhex(
    "f048ff06"  # 1: lock inc qword ptr [rsi]
    "48ffc9"  # dec rcx
    "75f7"  # jnz 1b
    "f4"  # hlt
)
# a spinlock taken with xchg (implicitly locked) around a plain load/increment/store of the counter
XCHG_SPINLOCK = bytes.fromhex(
    "ba01000000"  # 1: mov edx, 1
    "8717"  # xchg dword ptr [rdi], edx
    "85d2"  # test edx, edx
    "75f5"  # jnz 1b
    "4c8b06"  # mov r8, [rsi]
    "49ffc0"  # inc r8
    "4c8906"  # mov [rsi], r8
    "c70700000000"  # mov dword ptr [rdi], 0
    "48ffc9"  # dec rcx
    "75e1"  # jnz 1b
    "f4"  # hlt
)
# the same spinlock taken with lock cmpxchg
CMPXCHG_SPINLOCK = bytes.fromhex(
    "31c0"  # 1: xor eax, eax
    "ba01000000"  # mov edx, 1
    "f00fb117"  # lock cmpxchg dword ptr [rdi], edx
    "75f3"  # jnz 1b
    "4c8b06"  # mov r8, [rsi]
    "49ffc0"  # inc r8
    "4c8906"  # mov [rsi], r8
    "c70700000000"  # mov dword ptr [rdi], 0
    "48ffc9"  # dec rcx
    "75df"  # jnz 1b
    "f4"  # hlt
)


class Handler(QuietTraps):
    """The few traps these programs reach: MMIO to a page of device registers (plain bytes)."""

    def __init__(self) -> None:
        self.device = bytearray(0x1000)
        self.mmio: list[tuple[str, int, int]] = []

    def hypercall(self, vcpu: Vcpu) -> None:
        raise AssertionError("no hypercalls here")

    def mmio_read(self, vcpu: Vcpu, addr: int, size: int) -> int:
        self.mmio.append(("r", addr, size))
        return int.from_bytes(self.device[addr - MMIO:addr - MMIO + size], "little")

    def mmio_write(self, vcpu: Vcpu, addr: int, size: int, value: int) -> None:
        self.mmio.append(("w", addr, size))
        self.device[addr - MMIO:addr - MMIO + size] = value.to_bytes(size, "little")


@pytest.fixture
def ram() -> Iterator[mmap.mmap]:
    yield mmap.mmap(-1, RAM)


def domain_vcpus(ram: mmap.mmap, n: int, handler: Handler | None = None) -> list[TcgVcpu]:
    """n vCPUs of one domain, all mapping the same guest RAM, in 64-bit mode (unicorn's initial state)."""
    engine = TcgEngine()
    host = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    vcpus: list[TcgVcpu] = []
    for i in range(n):
        v = engine.create_vcpu(i, handler or Handler(), vcpus[0] if vcpus else None)
        assert isinstance(v, TcgVcpu)
        v.map_ram(0, RAM, host)
        vcpus.append(v)
    return vcpus


def start(v: TcgVcpu, code: int, counter: int, iterations: int) -> None:
    v.uc.reg_write(X.UC_X86_REG_RIP, code)
    v.set_gpr(RSI, counter)
    v.set_gpr(RDI, LOCK)
    v.set_gpr(RCX, iterations)


def run_all(vcpus: list[TcgVcpu], limit_s: float = 120.0) -> list[str]:
    """Run every vCPU on its own thread until it halts; what each ended with."""
    ends = ["running"] * len(vcpus)

    def go(i: int, v: TcgVcpu) -> None:
        stop = time.monotonic() + limit_s
        while time.monotonic() < stop:
            r = v.run(20_000_000)
            if r.reason is not StopReason.SLICE_END:
                ends[i] = r.reason.value + (f": {r.detail}" if r.detail else "")
                return
        ends[i] = "timed out (a lock word left held?)"

    threads = [threading.Thread(target=go, args=(i, v)) for i, v in enumerate(vcpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for v in vcpus:
        v.close()
    return ends


@pytest.mark.parametrize("program", [LOCK_INC, XCHG_SPINLOCK, CMPXCHG_SPINLOCK],
                         ids=["lock_inc", "xchg_spinlock", "cmpxchg_spinlock"])
def test_locked_instructions_are_atomic_across_vcpus(ram: mmap.mmap, program: bytes) -> None:
    n = 1_000_000
    ram[CODE:CODE + len(program)] = program
    vcpus = domain_vcpus(ram, 2)
    assert all(v.group is vcpus[0].group for v in vcpus) and vcpus[0].group.parallel
    for v in vcpus:
        start(v, CODE, COUNTER, n)
    assert run_all(vcpus) == ["halt", "halt"]
    assert struct.unpack_from("<Q", ram, COUNTER)[0] == 2 * n
    assert struct.unpack_from("<I", ram, LOCK)[0] == 0
    assert vcpus[0].group.steps == 0  # aligned RAM accesses: host atomics, never a stop-the-world step


def test_one_vcpu_translates_as_before(ram: mmap.mmap) -> None:
    v = domain_vcpus(ram, 1)[0]
    assert not v.group.parallel
    ram[CODE:CODE + len(LOCK_INC)] = LOCK_INC
    start(v, CODE, COUNTER, 1000)
    assert run_all([v]) == ["halt"]
    assert struct.unpack_from("<Q", ram, COUNTER)[0] == 1000
    assert v._cflags == 0


@pytest.mark.parametrize("offset", [1, 0x3C], ids=["misaligned", "split_cache_line"])
def test_misaligned_lock_inc_completes_exactly(ram: mmap.mmap, offset: int) -> None:
    """Each misaligned locked access is QEMU's EXCP_ATOMIC: before the patches the vCPU re-ran it for
    ever; now it runs alone, with the other vCPU stopped, and the count is exact."""
    n = 20_000
    ram[CODE:CODE + len(LOCK_INC)] = LOCK_INC
    vcpus = domain_vcpus(ram, 2)
    for v in vcpus:
        start(v, CODE, COUNTER + offset, n)
    assert run_all(vcpus) == ["halt", "halt"]
    assert struct.unpack_from("<Q", ram, COUNTER + offset)[0] == 2 * n
    assert vcpus[0].group.steps == 2 * n
    assert sum(v.counts().engine["atomic_steps"] for v in vcpus) == 2 * n  # engine.atomic_steps in stats


def test_locked_access_to_mmio_completes(ram: mmap.mmap) -> None:
    h = Handler()
    struct.pack_into("<Q", h.device, 8, 0x1_FFFF_FFFF)
    ram[CODE:CODE + len(LOCK_INC)] = LOCK_INC
    vcpus = domain_vcpus(ram, 2, h)
    for v in vcpus:
        v.map_mmio(MMIO, 0x1000)
    start(vcpus[0], CODE, MMIO + 8, 1)
    assert run_all(vcpus[:1]) == ["halt"]
    assert struct.unpack_from("<Q", h.device, 8)[0] == 0x2_0000_0000  # the carry crossed unicorn's split
    assert [k for k, _a, _s in h.mmio] == ["r", "r", "w", "w"]  # read once, written once (as 2 halves)
    assert vcpus[0].group.steps == 1
