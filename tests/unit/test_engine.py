"""The tcg engine behind the engine interface, with a fake trap handler (no domain, no core)."""

from __future__ import annotations

import mmap
import time
from collections.abc import Iterator

import pytest
from unit_support import QuietTraps

from hyperdisco.engine.base import RAX, RBX, RDI, StopReason, Vcpu, get_engine
from hyperdisco.engine.tcg.engine import TcgEngine, TcgVcpu, host_tsc, native_cpuid_table
from hyperdisco.errors import EngineError

RAM = 4 << 20
ENTRY = 0x100000


class FakeHandler(QuietTraps):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.outs: list[tuple[int, int, int]] = []
        self.on_hypercall = None

    def hypercall(self, vcpu: Vcpu) -> None:
        self.calls.append(("hypercall", vcpu.gpr(RAX)))
        if self.on_hypercall is not None:
            self.on_hypercall(vcpu)

    def io_in(self, vcpu: Vcpu, port: int, size: int) -> int:
        self.calls.append(("in", port))
        return 0x1234_5678_9A

    def io_out(self, vcpu: Vcpu, port: int, size: int, value: int) -> None:
        self.outs.append((port, size, value))

    def cpuid(self, vcpu: Vcpu, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        self.calls.append(("cpuid", leaf))
        return (leaf, 2, 3, 4)


@pytest.fixture
def ram() -> Iterator[mmap.mmap]:
    m = mmap.mmap(-1, RAM)
    yield m


def boot(ram: mmap.mmap, code: bytes) -> tuple[TcgVcpu, FakeHandler]:
    import ctypes

    h = FakeHandler()
    v = TcgVcpu(0, h)
    v.map_ram(0, RAM, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    ram[ENTRY:ENTRY + len(code)] = code
    v.set_pvh_entry(ENTRY, 0x6000, 0x1000)
    return v, h


def test_get_engine() -> None:
    assert isinstance(get_engine("tcg"), TcgEngine)
    with pytest.raises(EngineError, match="unknown CPU engine"):
        get_engine("kvm-but-not-really")


def test_host_tsc_advances() -> None:
    a = host_tsc()
    time.sleep(0.001)
    assert host_tsc() > a


def test_native_cpuid_table() -> None:
    t = native_cpuid_table()
    assert (0, 0) in t and (1, 0) in t
    assert t[(0, 0)][0] >= 1
    assert (0x80000000, 0) in t


def test_gpr_round_trip(ram: mmap.mmap) -> None:
    v, _ = boot(ram, b"\xf4")
    for i in range(16):
        v.set_gpr(i, (1 << 64) + i * 0x1111)  # masked to 64 bits
    assert [v.gpr(i) for i in range(16)] == [i * 0x1111 for i in range(16)]
    v.set_gpr(RAX, -1)
    assert v.gpr(RAX) == (1 << 64) - 1
    v.close()


def test_pvh_entry_state(ram: mmap.mmap) -> None:
    v, _ = boot(ram, b"\xf4")
    assert v.gpr(RBX) == 0x6000
    assert v.cpl() == 0
    assert not v.interrupts_enabled()
    assert v.translate(0x123456) == 0x123456  # paging off
    v.close()


def test_run_to_halt_and_port_io(ram: mmap.mmap) -> None:
    code = (b"\xb0\x5a\xe6\x80"  # mov al,0x5a; out 0x80,al
            b"\x66\xba\x34\x12\xed"  # mov dx,0x1234; in eax,dx
            b"\x66\xba\x00\x05\xef"  # mov dx,0x500; out dx,eax
            b"\xf4")
    v, h = boot(ram, code)
    res = v.run(50_000_000)
    assert res.reason is StopReason.HALT
    assert h.outs == [(0x80, 1, 0x5A), (0x500, 4, 0x3456789A)]
    assert ("in", 0x1234) in h.calls
    c = v.counts()
    assert c.io == 3 and c.halts == 1 and c.slices == 1
    v.close()


def test_cpuid_goes_to_handler(ram: mmap.mmap) -> None:
    code = b"\xb8\x00\x00\x00\x40\x0f\xa2\x89\xd8\xe6\x80\xf4"  # mov eax,0x40000000; cpuid; mov eax,ebx; out
    v, h = boot(ram, code)
    assert v.run(50_000_000).reason is StopReason.HALT
    assert ("cpuid", 0x40000000) in h.calls
    assert h.outs == [(0x80, 1, 2)]
    v.close()


def test_vmcall_reaches_handler_and_returns_rax(ram: mmap.mmap) -> None:
    code = b"\xb8\x11\x00\x00\x00\x0f\x01\xc1\xe6\x80\x0f\x01\xd9\xe6\x80\xf4"  # vmcall, vmmcall
    v, h = boot(ram, code)

    def answer(vcpu: Vcpu) -> None:
        vcpu.set_gpr(RAX, 0x42 + vcpu.gpr(RDI))

    h.on_hypercall = answer
    v.set_gpr(RDI, 1)
    assert v.run(50_000_000).reason is StopReason.HALT
    assert [c for c in h.calls if c[0] == "hypercall"] == [("hypercall", 17), ("hypercall", 0x43)]
    assert h.outs == [(0x80, 1, 0x43), (0x80, 1, 0x43)]
    assert v.counts().hypercalls == 2
    v.close()


def test_request_stop_from_handler(ram: mmap.mmap) -> None:
    code = b"\x0f\x01\xc1\xe6\x80\xf4"
    v, h = boot(ram, code)
    h.on_hypercall = lambda vcpu: vcpu.request_stop()
    assert v.run(50_000_000).reason is StopReason.STOP
    assert h.outs == []
    assert v.run(50_000_000).reason is StopReason.HALT  # resumes after the hypercall
    assert h.outs == [(0x80, 1, 0)]
    v.close()


def test_exception_in_handler_is_fatal_not_propagated(ram: mmap.mmap) -> None:
    code = b"\x0f\x01\xc1\xf4"
    v, h = boot(ram, code)

    def boom(vcpu: Vcpu) -> None:
        raise RuntimeError("handler bug")

    h.on_hypercall = boom
    res = v.run(50_000_000)
    assert res.reason is StopReason.FATAL
    assert "RuntimeError" in res.detail and "handler bug" in res.detail
    v.close()


def test_slice_ends_on_time(ram: mmap.mmap) -> None:
    v, _ = boot(ram, b"\xeb\xfe")  # jmp $
    t0 = time.monotonic()
    assert v.run(20_000_000).reason is StopReason.SLICE_END
    assert time.monotonic() - t0 < 1.0
    v.close()


def test_fetch_outside_ram_is_fatal(ram: mmap.mmap) -> None:
    import ctypes

    v = TcgVcpu(0, FakeHandler())
    v.map_ram(0, RAM, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    v.set_pvh_entry(0x8000_0000, 0x6000, 0x1000)  # jumps to unmapped memory
    assert v.run(50_000_000).reason is StopReason.FATAL
    v.close()


def test_pvh_entry_stack_is_32_bit(ram: mmap.mmap) -> None:
    """The PVH entry's SS is a flat 32-bit segment: a push above 64 KiB lands at ESP, not at SP."""
    code = b"\xbc\x00\x50\x10\x00\x68\x78\x56\x34\x12\xf4"  # mov esp, 0x105000; push 0x12345678; hlt
    v, _ = boot(ram, code)
    assert v.run(50_000_000).reason is StopReason.HALT
    assert v.gpr(4) == 0x104FFC
    assert ram[0x104FFC:0x105000] == b"\x78\x56\x34\x12"
    assert ram[0x4FFC:0x5000] == bytes(4)
    v.close()
