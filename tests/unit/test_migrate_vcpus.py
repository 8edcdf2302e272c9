"""vmm/migration.py receive with several vCPUs: the stream carries one VCPU record per vCPU and the LAPC
record, both written by the save path's own functions (vmm/snapshot.py vcpu_sections, lapc_section), and
the destination imports them as a restore does; a vCPU record beyond the domain's vCPUs, a missing or a
repeated one is refused in one line before anything of the domain runs."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
from unit_support import DomainHarness

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.core.migstream import StreamError, StreamWriter
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import KernelImage
from hyperdisco.platform import lapic
from hyperdisco.vmm.migration import receive
from hyperdisco.vmm.snapshot import lapc_section, vcpu_sections

MS = 1_000_000
PAGE = 4096


def _stream(build: Callable[[StreamWriter], None]) -> bytes:
    a, b = socket.socketpair()
    out = bytearray()

    def drain() -> None:
        while chunk := b.recv(1 << 16):
            out.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    build(StreamWriter(a))
    a.close()
    t.join()
    b.close()
    return bytes(out)


def _destination(kernel: KernelImage, engine: TcgEngine, clock: Clock, vcpus: int) -> Domain:
    cfg = DomainConfig("incoming", kernel, None, "", 32, vcpus=vcpus)
    return Domain(2, cfg, engine, clock, lambda b: None, lambda s: None, restore=lambda d: None)


def _receive(dom: Domain, data: bytes) -> dict[str, Any]:
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: (a.sendall(data), a.close()))
    t.start()
    try:
        return receive(dom, b, lambda: False)
    finally:
        t.join()
        b.close()


def _source(make_domain: Callable[..., DomainHarness]) -> DomainHarness:
    dh = make_domain(vcpus=2)
    boot, ap = dh.dom.vcpus
    now = dh.dom.clock.now_ns()
    # the boot CPU in its suspend hypercall; the AP spinning in stop_machine with a timer 3 s away
    boot.ev.set_gpr(3, 0xB007)
    ap.up = ap.initialised = True
    ap.set_timer(now + 3000 * MS, own_thread=False)
    ap.lapic.write(lapic.LDR, 0x02000000)
    ap.lapic.accept(0xF3)
    ap.ev.set_gpr(3, 0xA9)
    dh.dom.memory.write(0x5000, b"migrated page")
    return dh


def _pages(w: StreamWriter, dom: Domain) -> None:
    ram = memoryview(dom.memory.regions[0].mem)
    w.pages_from(0x5000, ram[0x5000:0x6000])


def test_two_vcpu_records_carried(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                  engine: TcgEngine, clock: Clock) -> None:
    src = _source(make_domain).dom

    def build(w: StreamWriter) -> None:
        _pages(w, src)
        for payload in vcpu_sections(src, current=src.vcpus[0]):
            w.vcpu_section(payload)
        w.lapc(lapc_section(src))
        w.done({"rounds": 1, "pages": 1})

    data = _stream(build)
    assert data.count(b"VCPU") >= 2 and b"LAPC" in data
    dst = _destination(kernel, engine, clock, 2)
    try:
        assert _receive(dst, data) == {"rounds": 1, "pages": 1}
        rboot, rap = dst.vcpus
        assert dst.memory.read(0x5000, 13) == b"migrated page"
        assert rboot.ev.gpr(3) == 0xB007 and rap.ev.gpr(3) == 0xA9
        assert (rap.up, rap.initialised, rap.stopped, rap.halted) == (True, True, False, False)
        assert rap.restored_timer_ns is not None  # armed once the guest binds its VIRQ_TIMER again
        assert rap.lapic.read(lapic.LDR) == 0x02000000 and rap.lapic.pending == {0xF3}
    finally:
        dst.close()


def _bad_stream(src: Domain, payloads: list[bytes]) -> bytes:
    def build(w: StreamWriter) -> None:
        _pages(w, src)
        for p in payloads:
            w.vcpu_section(p)
        w.lapc(lapc_section(src))
        w.done({"rounds": 1, "pages": 1})

    return _stream(build)


@pytest.mark.parametrize("which, match", [
    ("beyond", "vCPU 2 is not one of this domain's"),
    ("third", "vCPU 1 is not one of this domain's"),
    ("repeated", "vCPU 0 is not one of this domain's"),
    ("missing", "the stream holds 1 vCPUs, the domain has 2"),
])
def test_vcpu_records_that_do_not_fit_are_refused(make_domain: Callable[..., DomainHarness],
                                                  kernel: KernelImage, engine: TcgEngine, clock: Clock,
                                                  which: str, match: str) -> None:
    src = _source(make_domain).dom
    p0, p1 = vcpu_sections(src, current=src.vcpus[0])
    beyond = struct.pack("<I", 2) + p1[4:]
    payloads = {"beyond": [p0, beyond], "third": [p0, p1, p1], "repeated": [p0, p0],
                "missing": [p0]}[which]
    dst = _destination(kernel, engine, clock, 2)
    try:
        with pytest.raises(StreamError, match=match):
            _receive(dst, _bad_stream(src, payloads))
    finally:
        dst.close()


def test_lapc_record_that_does_not_fit_is_refused(make_domain: Callable[..., DomainHarness],
                                                  kernel: KernelImage, engine: TcgEngine,
                                                  clock: Clock) -> None:
    src = _source(make_domain).dom
    lapc = lapc_section(src)
    lapc["vcpus"] = lapc["vcpus"][:1]

    def build(w: StreamWriter) -> None:
        for p in vcpu_sections(src, current=src.vcpus[0]):
            w.vcpu_section(p)
        w.lapc(lapc)
        w.lapc(lapc)
        w.done({})

    dst = _destination(kernel, engine, clock, 2)
    try:
        with pytest.raises(StreamError, match="repeated record"):
            _receive(dst, _stream(build))
    finally:
        dst.close()

    def build1(w: StreamWriter) -> None:
        for p in vcpu_sections(src, current=src.vcpus[0]):
            w.vcpu_section(p)
        w.lapc(lapc)
        w.done({})

    dst = _destination(kernel, engine, clock, 2)
    try:
        with pytest.raises(StreamError, match="saved vCPU states do not match"):
            _receive(dst, _stream(build1))
    finally:
        dst.close()
