"""Several vCPUs through the save file (core/vcpu_save.py, vmm/snapshot.py): each vCPU's state outside the
engine (up, context, parked offline, halted, timers as time left, local APIC) comes back in the restored
domain; the guest's own resume sequence (Linux's xen_vcpu_restore: is_up, down, register vcpu_info, up)
then works on it; a malformed record is one line; a file without the records (written before them)
restores vCPU 0 up and the others down."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from unit_support import SCRATCH_VA, DomainHarness

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.core.savefile import SaveWriter, read_save
from hyperdisco.core.vcpu_save import apply_vcpu_record, vcpu_record
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.errors import HyperdiscoError
from hyperdisco.loader.elf import KernelImage
from hyperdisco.platform import lapic
from hyperdisco.vmm.snapshot import restore_into, write_save
from hyperdisco.xen import abi

MS = 1_000_000


def _save(dh: DomainHarness, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    assert write_save(dh.dom, fd, {"record": {"name": "unit"}}).startswith("saved")


def _restored(kernel: KernelImage, engine: TcgEngine, clock: Clock, path: Path, vcpus: int) -> DomainHarness:
    save = read_save(str(path))
    cfg = DomainConfig("restored", kernel, None, "", 32, vcpus=vcpus)
    dom = Domain(2, cfg, engine, clock, lambda b: None, lambda s: None,
                 restore=lambda d: restore_into(d, save))
    return DomainHarness(dom, [])


def test_three_vcpus_round_trip(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                engine: TcgEngine, clock: Clock, tmp_path: Path) -> None:
    dh = make_domain(vcpus=3)
    boot, ap, parked = dh.dom.vcpus
    now = dh.dom.clock.now_ns()
    # the boot CPU inside its suspend hypercall, with a timer 5 s away; an AP spinning in stop_machine
    # (running, interrupts off) with a timer 3 s away and its LDR set; another AP taken offline before
    # (native_play_dead: HLT with interrupts off)
    boot.set_timer(now + 5000 * MS)
    ap.up = ap.initialised = True
    ap.set_timer(now + 3000 * MS, own_thread=False)
    ap.lapic.write(lapic.LDR, 0x02000000)
    ap.lapic.write(lapic.TPR, 0x20)
    ap.lapic.accept(0xF3)
    ap.ev.set_gpr(3, 0x1234)
    parked.up = parked.initialised = parked.stopped = parked.halted = True
    parked.periodic_ns, parked.periodic_next = 10 * MS, now + 4 * MS
    _save(dh, tmp_path / "s")
    lapc = read_save(str(tmp_path / "s")).json(b"LAPC")[0]
    assert [r["index"] for r in lapc["vcpus"]] == [0, 1, 2]
    assert 1000 * MS < lapc["vcpus"][1]["timer_in_ns"] <= 3000 * MS  # the time left at the save
    start = clock.now_ns()  # the restored domain's timers run from a moment between start and rnow
    r = _restored(kernel, engine, clock, tmp_path / "s", 3)
    try:
        rboot, rap, rparked = r.dom.vcpus
        rnow = r.dom.clock.now_ns()
        assert (rboot.up, rboot.initialised, rboot.stopped) == (True, True, False)
        assert (rap.up, rap.initialised, rap.stopped, rap.halted) == (True, True, False, False)
        assert (rparked.up, rparked.initialised, rparked.stopped, rparked.halted) == (True, True, True, True)
        assert rap.ev.gpr(3) == 0x1234
        # timers wait for the guest to bind the vCPU's VIRQ_TIMER again (xen_irq_resume, on the boot CPU)
        assert rap.timer_ns is None and rap.restored_timer_ns is not None
        assert start < rap.restored_timer_ns <= rnow + 3000 * MS
        assert rboot.restored_timer_ns is not None
        assert rap.restored_timer_ns < rboot.restored_timer_ns <= rnow + 5000 * MS
        for vcpu in (0, 1):
            arg = r.put(abi.EVTCHN_BIND_VIRQ, abi.VIRQ_TIMER, vcpu, 0)
            assert r.call("event_channel_op", abi.EVTCHNOP_bind_virq, arg) == 0
        assert rap.timer_ns is not None and start < rap.timer_ns <= rnow + 3000 * MS
        assert rboot.timer_ns is not None and rap.timer_ns < rboot.timer_ns
        assert rap.restored_timer_ns is None and rboot.restored_timer_ns is None
        assert rparked.timer_ns is None and rparked.periodic_ns == 10 * MS
        assert start <= rparked.periodic_next <= rnow + 4 * MS  # at most 4 ms left (0 after a slow save)
        assert rap.lapic.read(lapic.LDR) == 0x02000000 and rap.lapic.read(lapic.TPR) == 0x20
        assert rap.lapic.pending == {0xF3} and rap.lapic.apic_id == 1 and rparked.lapic.apic_id == 2
        assert not any(c.vcpu_info_registered for c in r.dom.vcpus)  # the guest registers them again
        # Linux's xen_vcpu_restore on the boot CPU: for each other CPU that is up, down, its vcpu_info
        # registered again, up (a BUG() in the guest if down or up failed)
        arg = r.put(abi.REGISTER_VCPU_INFO, 0x400, 0x40, 0)
        assert r.call("vcpu_op", abi.VCPUOP_is_up, 1, 0) == 1
        assert r.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 1, arg) == -abi.EINVAL  # running
        assert r.call("vcpu_op", abi.VCPUOP_down, 1, 0) == 0
        assert r.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 1, arg) == 0
        assert r.call("vcpu_op", abi.VCPUOP_up, 1, 0) == 0
        assert rap.online
        # the parked CPU is down to Xen (hvm_hlt: HLT with interrupts off is hvm_vcpu_down), so the guest
        # leaves it alone, and registers its vcpu_info when it brings it back (xen_cpu_up_prepare_hvm,
        # before INIT and STARTUP)
        assert r.call("vcpu_op", abi.VCPUOP_is_up, 2, 0) == 0 and not rparked.online
        arg2 = r.put(abi.REGISTER_VCPU_INFO, 0x400, 0x80, 0, at=SCRATCH_VA + 64)
        assert r.call("vcpu_op", abi.VCPUOP_register_vcpu_info, 2, arg2) == 0
    finally:
        r.dom.close()


def test_down_and_waiting_vcpus_stay_so(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                         engine: TcgEngine, clock: Clock, tmp_path: Path) -> None:
    dh = make_domain(vcpus=2)
    dh.dom.vcpus[1].wait_for_sipi = True  # INIT received, no STARTUP yet
    _save(dh, tmp_path / "s")
    r = _restored(kernel, engine, clock, tmp_path / "s", 2)
    try:
        ap = r.dom.vcpus[1]
        assert (ap.up, ap.initialised, ap.wait_for_sipi) == (False, False, True)
        assert r.call("vcpu_op", abi.VCPUOP_is_up, 1, 0) == 0
        assert r.call("vcpu_op", abi.VCPUOP_up, 1, 0) == -abi.EINVAL  # never had a context, as before
    finally:
        r.dom.close()


def test_file_without_vcpu_records(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                   engine: TcgEngine, clock: Clock, tmp_path: Path) -> None:
    dh = make_domain(vcpus=2)
    with open(tmp_path / "old", "wb") as f:
        w = SaveWriter(f, {})
        for ctx in dh.dom.vcpus:
            w.section(b"VCPU", ctx.index.to_bytes(4, "little") + ctx.ev.export_state())
        w.json_section(b"LAPC", {"system_time_ns": 1, "wall_time": 2.0})
        w.finish()
    r = _restored(kernel, engine, clock, tmp_path / "old", 2)
    try:
        assert [c.up for c in r.dom.vcpus] == [True, False]
    finally:
        r.dom.close()


GOOD: dict[str, Any] = {"index": 1, "up": True, "initialised": True, "stopped": False, "halted": False,
                        "wait_for_sipi": False, "timer_in_ns": None, "periodic_ns": None,
                        "periodic_in_ns": None, "lapic_regs": {"0xd0": 1 << 24}, "lapic_pending": []}


@pytest.mark.parametrize("change, what", [
    ({"up": 1}, "bad up"),
    ({"halted": None}, "bad halted"),
    ({"timer_in_ns": -1}, "bad timer_in_ns"),
    ({"timer_in_ns": 1 << 63}, "bad timer_in_ns"),
    ({"timer_in_ns": True}, "bad timer_in_ns"),
    ({"periodic_ns": 0}, "bad periodic_ns"),
    ({"lapic_regs": []}, "bad lapic_regs"),
    ({"lapic_regs": {"0x400": 0}}, "bad lapic_regs"),
    ({"lapic_regs": {"0xd4": 0}}, "bad lapic_regs"),
    ({"lapic_regs": {"208": 0}}, "bad lapic_regs"),
    ({"lapic_regs": {"0xzz": 0}}, "bad lapic_regs"),
    ({"lapic_regs": {"0xd0": 1 << 32}}, "bad lapic_regs"),
    ({"lapic_pending": [256]}, "bad lapic_pending"),
    ({"lapic_pending": "x"}, "bad lapic_pending"),
    ({"initialised": False}, "up without a context"),
    ({"wait_for_sipi": True}, "up and waiting"),
])
def test_malformed_record_one_line(make_domain: Callable[..., DomainHarness], change: dict[str, Any],
                                   what: str) -> None:
    dh = make_domain(vcpus=2)
    ap = dh.dom.vcpus[1]
    with pytest.raises(HyperdiscoError) as e:
        apply_vcpu_record(ap, {**GOOD, **change}, 0)
    assert what in str(e.value) and "\n" not in str(e.value)
    assert not ap.up  # nothing applied
    apply_vcpu_record(ap, json.loads(json.dumps(GOOD)), 0)
    assert ap.up and ap.lapic.read(lapic.LDR) == 1 << 24


def test_record_is_json(make_domain: Callable[..., DomainHarness]) -> None:
    dh = make_domain(vcpus=2)
    rec = vcpu_record(dh.dom.vcpus[1], dh.dom.clock.now_ns())
    assert json.loads(json.dumps(rec)) == rec and rec["up"] is False and rec["timer_in_ns"] is None


def test_index_mismatch_refused(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                engine: TcgEngine, clock: Clock, tmp_path: Path) -> None:
    dh = make_domain(vcpus=2)
    with open(tmp_path / "dup", "wb") as f:
        w = SaveWriter(f, {})
        for ctx in dh.dom.vcpus:
            w.section(b"VCPU", ctx.index.to_bytes(4, "little") + ctx.ev.export_state())
        w.json_section(b"LAPC", {"vcpus": [GOOD, GOOD]})
        w.finish()
    with pytest.raises(HyperdiscoError, match="do not match the vCPUs"):
        _restored(kernel, engine, clock, tmp_path / "dup", 2)
