"""Unbacked guest-physical memory reads as all ones and ignores writes, as Xen's null handler for a PVH
guest: on the tcg engine (hand-assembled 32-bit code at the PVH entry), through the core (counted,
logged once per page, the domain keeps running), and on the scripted engine through the same interface."""

from __future__ import annotations

import ctypes
import mmap
import struct

import pytest
from unit_support import make_elf

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.engine.base import StopReason, Vcpu
from hyperdisco.engine.scripted import ScriptedEngine
from hyperdisco.engine.tcg.engine import TcgEngine, TcgVcpu
from hyperdisco.engine.tcg.unbacked import WINDOW, free_window
from hyperdisco.loader.elf import parse_kernel

RAM = 4 << 20
ENTRY = 0x100000
POWEROFF = b"\xb0\x20\x66\xba\x00\x06\xee\xf4"  # mov al,SLP_EN; mov dx,0x600; out dx,al; hlt


class Recorder:
    """A trap handler that records port output and unbacked accesses, and answers as Xen does."""

    def __init__(self) -> None:
        self.outs: list[tuple[int, int, int]] = []
        self.unbacked: list[tuple[str, int, int, int]] = []

    def hypercall(self, vcpu: Vcpu) -> None:
        pass

    def io_in(self, vcpu: Vcpu, port: int, size: int) -> int:
        return 0

    def io_out(self, vcpu: Vcpu, port: int, size: int, value: int) -> None:
        self.outs.append((port, size, value))

    def cpuid(self, vcpu: Vcpu, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return (0, 0, 0, 0)

    def mmio_read(self, vcpu: Vcpu, addr: int, size: int) -> int:
        return 0

    def mmio_write(self, vcpu: Vcpu, addr: int, size: int, value: int) -> None:
        pass

    def unbacked_read(self, vcpu: Vcpu, addr: int, size: int) -> int:
        self.unbacked.append(("read", addr, size, 0))
        return (1 << (8 * size)) - 1

    def unbacked_write(self, vcpu: Vcpu, addr: int, size: int, value: int) -> None:
        self.unbacked.append(("write", addr, size, value))


def boot(code: bytes) -> tuple[TcgVcpu, Recorder, mmap.mmap]:
    ram = mmap.mmap(-1, RAM)
    h = Recorder()
    v = TcgVcpu(0, h)
    v.map_ram(0, RAM, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    ram[ENTRY:ENTRY + len(code)] = code
    v.set_pvh_entry(ENTRY, 0x6000, 0x1000)
    return v, h, ram


def test_tcg_unbacked_reads_all_ones_and_drops_writes() -> None:
    code = (b"\xa1\x00\x00\xd0\xfe"  # mov eax, [0xfed00000]      (the HPET's place)
            b"\x66\xba\x00\x05\xef"  # mov dx, 0x500; out dx, eax
            b"\xc7\x05\x10\x00\xd0\xfe\x78\x56\x34\x12"  # mov dword [0xfed00010], 0x12345678
            b"\xa0\x00\x00\xc0\xfe"  # mov al, [0xfec00000]       (the IO-APIC's place)
            b"\xe6\x80"  # out 0x80, al
            b"\x8b\x1d\x00\x70\x56\x34"  # mov ebx, [0x34567000]  (nothing at all)
            b"\x89\xd8\xef"  # mov eax, ebx; out dx, eax
            b"\x66\xc7\x05\x04\x70\x56\x34\xcd\xab"  # mov word [0x34567004], 0xabcd
            b"\xf4")
    v, h, _ram = boot(code)
    res = v.run(200_000_000)
    assert res.reason is StopReason.HALT, res.detail
    assert h.outs == [(0x500, 4, 0xFFFFFFFF), (0x80, 1, 0xFF), (0x500, 4, 0xFFFFFFFF)]
    assert h.unbacked == [("read", 0xFED00000, 4, 0), ("write", 0xFED00010, 4, 0x12345678),
                          ("read", 0xFEC00000, 1, 0), ("read", 0x34567000, 4, 0),
                          ("write", 0x34567004, 2, 0xABCD)]
    # two windows, not one per page: [4 MiB, 1 GiB) beside RAM and the gigabyte below 4 GiB
    assert v._unbacked.windows == {RAM: WINDOW - RAM, 0xC0000000: WINDOW}
    v.close()


def test_tcg_ram_mapped_over_a_window_replaces_it() -> None:
    code = (b"\x66\xba\x00\x05"  # mov dx, 0x500
            b"\xa1\x00\x70\x56\x34\xef"  # mov eax, [0x34567000]; out dx, eax
            b"\xf4"  # hlt: the test maps a RAM page there
            b"\xa1\x00\x70\x56\x34\xef"  # the same read again
            b"\xa1\x00\x80\x56\x34\xef"  # and one on the next page, still unbacked
            b"\xf4")
    v, h, _ram = boot(code)
    assert v.run(200_000_000).reason is StopReason.HALT
    page = mmap.mmap(-1, 0x1000)
    page[0:4] = struct.pack("<I", 0xC0FFEE)
    v.map_ram(0x34567000, 0x1000, ctypes.addressof(ctypes.c_char.from_buffer(page)))
    assert v.run(200_000_000).reason is StopReason.HALT
    assert h.outs == [(0x500, 4, 0xFFFFFFFF), (0x500, 4, 0xC0FFEE), (0x500, 4, 0xFFFFFFFF)]
    assert [a for _k, a, _s, _v in h.unbacked] == [0x34567000, 0x34568000]
    assert 0x34568000 in v._unbacked.windows  # a new window above the RAM page
    v.close()


def test_tcg_fetch_from_unbacked_memory_stays_fatal() -> None:
    v, _h, _ram = boot(b"\xa1\x00\x00\xd0\xfe" b"\xb8\x00\x00\x00\xf0\xff\xe0")  # read; jmp 0xf0000000
    res = v.run(200_000_000)
    assert res.reason is StopReason.FATAL
    v.close()
    # also inside a window an earlier read made: MMIO is never executable
    v, h, _ram = boot(b"\xa1\x00\x00\xd0\xfe" b"\xb8\x10\x00\xd0\xfe\xff\xe0")  # read; jmp 0xfed00010
    res = v.run(200_000_000)
    assert res.reason is StopReason.FATAL and "FETCH" in res.detail, res.detail
    assert h.unbacked == [("read", 0xFED00000, 4, 0)]
    v.close()


@pytest.mark.parametrize("mapped,addr,window", [
    ([], 0x1234, (0, WINDOW)),
    ([(0, RAM - 1)], RAM + 5, (RAM, WINDOW - RAM)),
    ([(0, RAM - 1), (0xFEE00000, 0xFEE00FFF)], 0xFED00000, (0xC0000000, 0xFEE00000 - 0xC0000000)),
    ([(0, RAM - 1), (0xFEE00000, 0xFEE00FFF)], 0xFEE01000, (0xFEE01000, 0x100000000 - 0xFEE01000)),
    ([(0x40000000, 0x40000FFF)], 0x3FFFF000, (0, 0x40000000)),
])
def test_free_window(mapped: list[tuple[int, int]], addr: int, window: tuple[int, int]) -> None:
    assert free_window(mapped, addr) == window


def test_free_window_refuses_a_mapped_address() -> None:
    with pytest.raises(ValueError):
        free_window([(0, 0xFFF)], 0x10)


# -- the core: counted, logged once per page, the domain keeps running ----------------------------------
def test_domain_keeps_running_and_counts(engine: TcgEngine, clock: Clock) -> None:
    loop = (b"\xa1\x00\x00\xd0\xfe"  # mov eax, [0xfed00000]
            b"\xa3\x10\x00\xd0\xfe"  # mov [0xfed00010], eax
            b"\x8b\x15\x00\x00\x00\x80"  # mov edx, [0x80000000] (the domain has 32 MiB)
            b"\xe2\xee")  # loop back, 1000 times
    code = (b"\xb9\xe8\x03\x00\x00" + loop
            + b"\x3d\xff\xff\xff\xff\x75\x04"  # cmp eax, -1; jne past the output
            b"\xb0\x41\xe6\xe9"  # mov al,'A'; out 0xe9,al
            + POWEROFF)
    out: list[bytes] = []
    logs: list[str] = []
    dom = Domain(2, DomainConfig("probe", parse_kernel(make_elf(code=code)), None, "", 32), engine, clock,
                 out.append, logs.append)
    for _ in range(200):
        if dom.finished:
            break
        dom.vcpus[0].step()
    assert dom.outcome == "poweroff", dom.outcome_detail
    assert b"".join(out) == b"A"
    assert dom.stats["unbacked.read"] == 2000 and dom.stats["unbacked.write"] == 1000
    lines = [m for m in logs if "unbacked memory" in m]
    assert len(lines) == 2, lines  # one per page, not per access
    assert "(d2) unbacked memory: read of 4 bytes at 0xfed00000 (where a PC has its HPET" in lines[0]
    assert "at 0x80000000," in lines[1] and "reads as all ones" in lines[1]
    assert dom.unbacked.pages == 2
    dom.close()


def test_scripted_engine_has_the_same_interface(clock: Clock) -> None:
    logs: list[str] = []
    out: list[bytes] = []
    cmd = "scripted=read:0xfec00000,write:0xfec00010:7,read:0x100000,read:0xfee00020,say:alive"
    dom = Domain(4, DomainConfig("s", parse_kernel(make_elf()), None, cmd, 32), ScriptedEngine(), clock,
                 out.append, logs.append)
    for _ in range(10):
        dom.vcpus[0].step()
    assert b"".join(out) == b"alive\n"
    assert dom.stats["unbacked.read"] == 1 and dom.stats["unbacked.write"] == 1  # RAM and LAPIC are not
    assert len([m for m in logs if "IO-APIC" in m]) == 1
    dom.close()
