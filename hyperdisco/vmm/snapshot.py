"""Save and restore inside the domain process (docs/save-format.md).

Save: domain 0 hands over the open save file with "save-to" and then asks the guest to suspend
(control/shutdown = "suspend"). The guest quiesces itself (drivers/xen/manage.c: processes frozen,
devices suspended) and makes SCHEDOP_shutdown(SHUTDOWN_suspend); the domain finishes with outcome
"suspend", and before the process reports it, its vCPUs are off the scheduler and write_save() writes
every vCPU's state, the non-zero pages of RAM and of the special pages (console and xenstore rings).

Restore: a new domain built from the saved configuration, whose build skips the kernel load: RAM and
special pages come from the file, each vCPU's state is imported. The vCPU carries on after its suspend
hypercall, which returned 0: to Linux (HYPERVISOR_suspend) "resumed in a new domain", so the guest itself
re-registers shared info and vcpu_info, rebinds its event channels, re-reads its console and xenstore
rings and reconnects its block and network frontends to the new backends.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from ..core.domain import Domain
from ..core.memory import Region
from ..core.savefile import SaveFile, SaveFileError, SaveWriter
from ..core.vcpu import VcpuContext
from ..core.vcpu_save import apply_vcpu_record, vcpu_record
from ..errors import HyperdiscoError
from ..platform import vmgenid

# what domain 0 sets on its copy (dom0/sealed_saves.py; fcntl(2) F_ADD_SEALS)
REQUIRED_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL

_INDEX = struct.Struct("<I")


def write_save(dom: Domain, fd: int, header: dict[str, Any], current: VcpuContext | None = None) -> str:
    """Write the save file to `fd` (closed here); the domain's vCPUs must be stopped, but for `current`,
    which may be inside its suspend hypercall (a checkpoint). Returns the detail line domain 0 shows
    ("saved N pages")."""
    started = time.monotonic()
    with os.fdopen(fd, "wb", buffering=1 << 20) as f:
        w = SaveWriter(f, {**header, "vcpus": len(dom.vcpus)})
        for payload in vcpu_sections(dom, current):
            w.section(b"VCPU", payload)
        w.json_section(b"LAPC", lapc_section(dom))
        pages = 0
        for region in _regions(dom):
            pages += w.memory_section(region.gpa, memoryview(region.mem)[:region.size])
        w.finish()
        f.flush()
        os.fsync(f.fileno())
    return f"saved {pages} pages in {time.monotonic() - started:.2f} s"


def vcpu_sections(dom: Domain, current: VcpuContext | None = None) -> list[bytes]:
    """Each vCPU's engine state as a VCPU section's payload (index u32 | the engine's blob); the vCPUs
    must be stopped, but for `current`, inside its suspend hypercall. The save file's sections and the
    migration stream's VCPU records (vmm/migration.py) both are these."""
    return [_INDEX.pack(ctx.index) + ctx.ev.export_state(inside_trap=ctx is current) for ctx in dom.vcpus]


def lapc_section(dom: Domain) -> dict[str, Any]:
    """The LAPC section: each vCPU's state outside the engine (core/vcpu_save.py), timers as time left
    now; the save file's and the migration stream's LAPC record's."""
    now = dom.clock.now_ns()
    return {"system_time_ns": now, "wall_time": time.time(), "evtchn_floor": dom.evtchn.resume_floor(),
            "vcpus": [vcpu_record(ctx, now) for ctx in dom.vcpus]}


def checkpoint(dom: Domain, ctx: VcpuContext, fd: int, header: dict[str, Any]) -> tuple[int, str]:
    """save -c, from inside the guest's SCHEDOP_shutdown(suspend) on its own vCPU: the file gets the
    vCPU with the hypercall returning 0 ("resumed in a new domain"); here it returns 1 ("suspend
    cancelled": the guest carries on, as after xl save -c). Returns (hypercall result, detail)."""
    ctx.ev.set_gpr(0, 0)
    try:
        with dom.quiesced(ctx):  # the other vCPUs (spinning in stop_machine) out of guest code meanwhile
            detail = write_save(dom, fd, header, current=ctx)
    except Exception as exc:  # noqa: BLE001 - reported to domain 0 in one line
        detail = f"save failed: {type(exc).__name__}: {exc}"[:400]
    return 1, detail


def _regions(dom: Domain) -> list[Region]:
    ram = dom.memory.regions[0]
    return [Region(ram.gpa, dom.memory.ram_bytes, ram.mem, "ram"), dom.special]


def restore_into(dom: Domain, save: SaveFile) -> None:
    """Fill a freshly built domain (no kernel loaded, no vCPU run) from `save`; HyperdiscoError (one
    line) if the file does not fit this domain."""
    import_vcpu_sections(dom, list(save.payloads(b"VCPU")))
    try:
        lapc = save.json(b"LAPC")
    except ValueError:
        raise HyperdiscoError("hyperdisco: restore: the LAPC section is not JSON") from None
    if lapc:
        apply_lapc_section(dom, lapc[0] if len(lapc) == 1 else None)
    # paused until domain 0 has plugged its devices in (dom0/host.py create), as libxl restores a domain
    # paused: the guest's xenbus_dev_resume reads each frontend's backend nodes at once
    dom.paused = True
    restore_memory(dom, save)
    # every restore may be one of many clones of the file: a new VM Generation ID (platform/vmgenid.py)
    # and the guest's own resume is told of it (its _PSC/_PS0 of \_SB.VGNT: platform/vmgenid.py)
    dom.memory.write(vmgenid.GENID_GPA, vmgenid.new_generation_id() + vmgenid.changed_marker())


def restore_memory(dom: Domain, save: SaveFile) -> None:
    """RAM runs are mapped MAP_PRIVATE from the save file (clones share them until they write); the
    special pages (shared with domain 0) are copied. Pages not in the file stay zero. The mappings
    outlive the descriptor."""
    regions = _regions(dom)
    with save.opened() as f:
        fd = f.fileno()
        for gpa, offset, size in save.memory_extents():
            for r in regions:
                if r.gpa <= gpa and gpa + size <= r.gpa + r.size:
                    if r.name == "ram":
                        dom.memory.map_file_pages(gpa, fd, offset, size)
                    else:
                        off = gpa - r.gpa
                        r.mem[off:off + size] = os.pread(fd, size, offset)
                    break
            else:
                raise HyperdiscoError(f"hyperdisco: restore: saved memory at {gpa:#x} (+{size:#x}) is not "
                                      "in this domain")


def import_vcpu_sections(dom: Domain, payloads: list[bytes], what: str = "restore") -> None:
    """Each vCPU's engine state from its VCPU section's payload (vcpu_sections): one per vCPU of the
    domain, each index once; HyperdiscoError (one line, "hyperdisco: WHAT: ...") otherwise."""
    if len(payloads) != len(dom.vcpus):
        where = "file" if what == "restore" else "stream"
        raise HyperdiscoError(f"hyperdisco: {what}: the {where} holds {len(payloads)} vCPUs, the domain "
                              f"has {len(dom.vcpus)}")
    seen = set()
    for payload in payloads:
        if len(payload) < _INDEX.size:
            raise HyperdiscoError(f"hyperdisco: {what}: a vCPU state is cut short")
        (index,) = _INDEX.unpack_from(payload)
        if not 0 <= index < len(dom.vcpus) or index in seen:
            raise HyperdiscoError(f"hyperdisco: {what}: vCPU {index} is not one of this domain's")
        seen.add(index)
        dom.vcpus[index].ev.import_state(payload[_INDEX.size:])


def apply_lapc_section(dom: Domain, lapc: Any, what: str = "restore") -> None:
    """Each vCPU's state outside the engine (up, parked, timers, local APIC: core/vcpu_save.py) from the
    LAPC section (lapc_section); one without a "vcpus" list (a file written before there was one) leaves
    vCPU 0 up and the others down."""
    if isinstance(lapc, dict) and "evtchn_floor" in lapc:
        try:
            dom.evtchn.set_floor(lapc["evtchn_floor"])
        except ValueError as exc:
            raise HyperdiscoError(f"hyperdisco: {what}: {exc}") from None
    recs = lapc.get("vcpus") if isinstance(lapc, dict) else None
    if recs is None:
        return
    if not isinstance(recs, list) or len(recs) != len(dom.vcpus):
        raise HyperdiscoError(f"hyperdisco: {what}: the saved vCPU states do not match the vCPUs")
    now = dom.clock.now_ns()
    seen = set()
    for rec in recs:
        index = rec.get("index") if isinstance(rec, dict) else None
        if (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(dom.vcpus)
                or index in seen):
            raise HyperdiscoError(f"hyperdisco: {what}: the saved vCPU states do not match the vCPUs")
        seen.add(index)
        apply_vcpu_record(dom.vcpus[index], rec, now)


def open_save(fd: int) -> SaveFile:
    """The save file domain 0 handed over: its sealed copy (dom0/sealed_saves.py), checked whole there.
    Its seals are verified here instead of hashing it again: sealed against writes, growth and shrinking,
    its bytes are the ones domain 0 checked, and stay so under this domain's MAP_PRIVATE mappings."""
    from ..core.savefile import index_sealed_save

    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        os.close(fd)
        raise HyperdiscoError("hyperdisco: restore: the save file handed over is not a sealed copy")
    try:
        return index_sealed_save(fd, "save file")
    except SaveFileError as exc:
        raise HyperdiscoError(f"hyperdisco: restore: {exc}") from None


def open_save_soon(fd: int) -> Callable[[], SaveFile]:
    """open_save, now (the seals and the index: no hashing); the returned function gives the file, or
    raises its one-line HyperdiscoError when the restore uses it (restore_into calls it first)."""
    error: HyperdiscoError
    try:
        save = open_save(fd)
        return lambda: save
    except HyperdiscoError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - reported as the build's one line
        error = HyperdiscoError(f"hyperdisco: restore: {type(exc).__name__}: {exc}"[:400])

    def failed() -> SaveFile:
        raise error

    return failed
