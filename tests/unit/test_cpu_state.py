"""A tcg vCPU's state exported after it ran and imported into a fresh vCPU (a new unicorn instance, as in
a restored domain's new process) carries on: general and XMM registers, the 32-bit protected mode the
fresh instance does not start in (CS and SS hidden parts), the stack; a foreign or cut blob is refused."""

from __future__ import annotations

import ctypes
import mmap
import struct

import pytest
from unit_support import QuietTraps

from hyperdisco.engine.base import StopReason
from hyperdisco.engine.tcg.engine import TcgVcpu
from hyperdisco.errors import EngineError

RAM = 4 << 20
ENTRY = 0x100000

# 32-bit protected mode (the PVH entry): state to carry over, then hlt; after the restore: use it, hlt
BEFORE = (b"\x0f\x20\xe0\x0d\x00\x02\x00\x00\x0f\x22\xe0"  # CR4.OSFXSR: SSE allowed
          b"\xbc\x00\x50\x10\x00"  # mov esp, 0x105000
          b"\xb8\x44\x33\x22\x11"  # mov eax, 0x11223344
          b"\x66\x0f\x6e\xc0"  # movd xmm0, eax
          b"\xb9\x05\x00\x00\x00"  # mov ecx, 5
          b"\x6a\x77"  # push 0x77
          b"\xf4")  # hlt
AFTER = (b"\x5a"  # pop edx (SS must still be 32-bit: ESP is above 64 KiB)
         b"\x66\x0f\x7e\xc3"  # movd ebx, xmm0
         b"\x01\xcb"  # add ebx, ecx
         b"\xf4")


def _vcpu(ram: mmap.mmap) -> TcgVcpu:
    v = TcgVcpu(0, QuietTraps())
    v.map_ram(0, RAM, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    return v


def _saved() -> tuple[bytes, bytes]:
    ram = mmap.mmap(-1, RAM)
    ram[ENTRY:ENTRY + len(BEFORE + AFTER)] = BEFORE + AFTER
    v = _vcpu(ram)
    v.set_pvh_entry(ENTRY, 0x6000, 0x1000)
    assert v.run(50_000_000).reason is StopReason.HALT
    state = v.export_state()
    v.close()
    return state, bytes(ram)


def test_state_carries_over_to_a_fresh_vcpu() -> None:
    state, memory = _saved()
    ram = mmap.mmap(-1, RAM)
    ram[:] = memory
    v = _vcpu(ram)
    v.import_state(state)
    assert v.rip == ENTRY + len(BEFORE)
    assert v.run(50_000_000).reason is StopReason.HALT
    assert v.gpr(2) == 0x77  # edx: popped from the saved stack
    assert v.gpr(4) == 0x105000  # esp
    assert v.gpr(3) == 0x11223349  # ebx = xmm0 + ecx
    assert not v.in_64bit_mode()
    v.close()


def test_foreign_or_cut_state_refused() -> None:
    state, memory = _saved()
    ram = mmap.mmap(-1, RAM)
    ram[:] = memory
    v = _vcpu(ram)
    for bad in (state[:10], state[:-1], b"XXXX" + state[4:],
                state[:4] + b"9.9.9".ljust(16, b"\0") + state[20:],
                state[:20] + struct.pack("<I", 16) + state[24:]):
        with pytest.raises(EngineError) as e:
            v.import_state(bad)
        assert "\n" not in str(e.value)
    v.close()
