"""A domain written by vmm/snapshot.write_save and built again with restore_into: RAM, the special
pages and the vCPU come back, the kernel is not loaded over them; a file that does not fit the domain
(memory outside it, another vCPU count) is refused with one line."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from unit_support import KERNEL_PADDR, DomainHarness

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.core.evtchn import EvtchnError, Port
from hyperdisco.core.savefile import PAGE, SaveWriter, read_save
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.errors import HyperdiscoError
from hyperdisco.loader.elf import KernelImage
from hyperdisco.vmm.snapshot import restore_into, write_save
from hyperdisco.xen import abi


def _restored(kernel: KernelImage, engine: TcgEngine, clock: Clock, path: Path, vcpus: int = 1) -> Domain:
    save = read_save(str(path))
    cfg = DomainConfig("restored", kernel, None, "", 32, vcpus=vcpus)
    return Domain(2, cfg, engine, clock, lambda b: None, lambda s: None,
                  restore=lambda d: restore_into(d, save))


def _save(dh: DomainHarness, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    assert write_save(dh.dom, fd, {"record": {"name": "unit"}}).startswith("saved")


def test_round_trip(make_domain: Callable[..., DomainHarness], kernel: KernelImage, engine: TcgEngine,
                    clock: Clock, tmp_path: Path) -> None:
    dh = make_domain()
    mem = dh.dom.memory
    mem.write(0x300000, b"guest data")
    mem.write(KERNEL_PADDR, bytes(16))  # the guest overwrote its kernel's first bytes
    dh.dom.special.mem[0:5] = b"rings"
    dh.ctx.ev.set_gpr(3, 0xABCDEF)
    rip = dh.ctx.ev.rip
    _save(dh, tmp_path / "s")
    dom = _restored(kernel, engine, clock, tmp_path / "s")
    try:
        assert dom.memory.read(0x300000, 10) == b"guest data"
        assert dom.memory.read(KERNEL_PADDR, 16) == bytes(16)  # not loaded again over the saved memory
        assert bytes(dom.special.mem[0:5]) == b"rings"
        assert dom.vcpus[0].ev.gpr(3) == 0xABCDEF and dom.vcpus[0].ev.rip == rip
        assert dom.paused  # until domain 0 has plugged its devices in (dom0/host.py create unpauses it)
    finally:
        dom.close()


def test_file_that_does_not_fit_refused(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                        engine: TcgEngine, clock: Clock, tmp_path: Path) -> None:
    dh = make_domain()
    _save(dh, tmp_path / "s")
    with pytest.raises(HyperdiscoError, match="holds 1 vCPUs, the domain has 2"):
        _restored(kernel, engine, clock, tmp_path / "s", vcpus=2)
    # memory beyond the domain's RAM (a 32 MiB domain, a page at 64 MiB)
    with open(tmp_path / "big", "wb") as f:
        w = SaveWriter(f, {})
        w.section(b"VCPU", (0).to_bytes(4, "little") + dh.ctx.ev.export_state())
        w.memory_section(64 << 20, b"\x01" * PAGE)
        w.finish()
    with pytest.raises(HyperdiscoError, match="is not in this domain") as e:
        _restored(kernel, engine, clock, tmp_path / "big")
    assert "\n" not in str(e.value)


def test_clones_map_the_file_copy_on_write(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                           engine: TcgEngine, clock: Clock, tmp_path: Path) -> None:
    """Two domains restored from one file: RAM is a private mapping of the file (its pages in the host's
    page cache, shared), a write in one is seen neither by the other nor in the file."""
    dh = make_domain()
    dh.dom.memory.write(0x300000, b"template")
    _save(dh, tmp_path / "s")
    before = (tmp_path / "s").read_bytes()
    a = _restored(kernel, engine, clock, tmp_path / "s")
    b = _restored(kernel, engine, clock, tmp_path / "s")
    try:
        maps = Path("/proc/self/maps").read_text()
        assert str(tmp_path / "s") in maps  # RAM runs are mapped from the file, not copied
        assert a.memory.shared_bytes > 0
        a.memory.write(0x300000, b"clone  a")
        assert a.memory.read(0x300000, 8) == b"clone  a"
        assert b.memory.read(0x300000, 8) == b"template"
        assert (tmp_path / "s").read_bytes() == before
        # a page given back by a clone's balloon gets fresh memory; the file's page is left alone
        a.memory.release_ram_page(0x300000 // PAGE)
        assert b.memory.read(0x300000, 8) == b"template"
    finally:
        a.close()
        b.close()


def test_each_restore_gets_a_new_generation_id(make_domain: Callable[..., DomainHarness], kernel: KernelImage,
                                               engine: TcgEngine, clock: Clock, tmp_path: Path) -> None:
    """The VM Generation ID (platform/vmgenid.py) of every restored domain is new: the saved one, and
    each clone's, all differ."""
    from hyperdisco.platform.vmgenid import CHANGED_GPA, GENID_GPA, GENID_SIZE

    dh = make_domain()
    dh.dom.memory.write(GENID_GPA, b"saved-generation")
    _save(dh, tmp_path / "s")
    a = _restored(kernel, engine, clock, tmp_path / "s")
    b = _restored(kernel, engine, clock, tmp_path / "s")
    try:
        ids = {a.memory.read(GENID_GPA, GENID_SIZE), b.memory.read(GENID_GPA, GENID_SIZE)}
        assert len(ids) == 2 and b"saved-generation" not in ids
        # and the change word the guest's _PS0 clears (platform/vmgenid.py) is set in each
        assert a.memory.u32(CHANGED_GPA) == 1 and b.memory.u32(CHANGED_GPA) == 1
    finally:
        a.close()
        b.close()


def test_a_clone_from_the_sealed_copy_ignores_the_file_rewritten_or_cut(
        make_domain: Callable[..., DomainHarness], kernel: KernelImage, engine: TcgEngine, clock: Clock,
        tmp_path: Path) -> None:
    """Restored as the daemon restores (dom0/sealed_saves.py, vmm/snapshot.open_save): RAM maps the sealed
    memfd, not the file; writing over the file or truncating it afterwards does not reach the clone's
    pages it has not written (a MAP_PRIVATE mapping of the file would show the one, SIGBUS on the other)."""
    from hyperdisco.dom0.sealed_saves import SealedSaves
    from hyperdisco.vmm.snapshot import open_save

    dh = make_domain()
    dh.dom.memory.write(0x300000, b"template")
    _save(dh, tmp_path / "s")
    cache = SealedSaves()
    fds = [cache.acquire(str(tmp_path / "s"))[0] for _ in range(2)]
    saves = [open_save(fd) for fd in fds]
    cfg = DomainConfig("restored", kernel, None, "", 32)
    a, b = (Domain(2 + i, cfg, engine, clock, lambda b: None, lambda s: None,
                   restore=lambda d, s=s: restore_into(d, s)) for i, s in enumerate(saves))
    try:
        maps = Path("/proc/self/maps").read_text()
        assert "hyperdisco-save" in maps and str(tmp_path / "s") not in maps
        raw = bytearray((tmp_path / "s").read_bytes())
        at = raw.index(b"template")
        raw[at:at + 8] = b"REWRITE!"
        with open(tmp_path / "s", "r+b") as f:  # in place: the same inode's page cache
            f.write(raw)
        assert a.memory.read(0x300000, 8) == b"template" and b.memory.read(0x300000, 8) == b"template"
        os.truncate(tmp_path / "s", 0)
        assert a.memory.read(0x300000, 8) == b"template"  # no SIGBUS: the memfd backs it
        a.memory.write(0x300000, b"clone  a")
        assert b.memory.read(0x300000, 8) == b"template"
    finally:
        a.close()
        b.close()
        cache.close()


def test_restored_domain_allocates_event_channels_above_the_saved_ones(
        make_domain: Callable[..., DomainHarness], kernel: KernelImage, engine: TcgEngine, clock: Clock,
        tmp_path: Path) -> None:
    """A driver that frees its pre-save port during its resume (hvc_xen's xencons_resume) must not close
    the port another driver was just given: the restored domain allocates above every saved port."""
    dh = make_domain()
    ec = dh.dom.evtchn
    held = [ec.alloc(Port(abi.EVTCHNSTAT_unbound, remote_dom=0)) for _ in range(7)]
    _save(dh, tmp_path / "s")
    dom = _restored(kernel, engine, clock, tmp_path / "s")
    try:
        new = dom.evtchn.alloc(Port(abi.EVTCHNSTAT_unbound, remote_dom=0))
        assert new == max(held) + 1
        with pytest.raises(EvtchnError):  # the console's late close of its old number hits a free port
            dom.evtchn.close(max(held))
        assert new in dom.evtchn.ports
    finally:
        dom.close()


@pytest.mark.parametrize("floor", [0, -1, True, "5", 1.5, 10 ** 9])
def test_saved_event_channel_floor_out_of_range_refused(
        make_domain: Callable[..., DomainHarness], kernel: KernelImage, engine: TcgEngine, clock: Clock,
        tmp_path: Path, floor: object) -> None:
    dh = make_domain()
    ec = dh.dom.evtchn
    with pytest.raises(ValueError, match="event-channel floor"):
        ec.set_floor(floor)
    assert ec.floor == 1
