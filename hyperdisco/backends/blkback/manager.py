"""The toolstack's side of virtual block devices (domain 0): open and check the images, write the
xenstore nodes libxl writes for a vbd, hand the image descriptors to the domain's backend (in its domain
process, backends/blkback/host.py), detach the way libxl does, and tidy up when a domain goes.

Nodes (libxl's libxl__device_disk_add / libxl__device_generic_add): the backend directory
/local/domain/0/backend/vbd/<domid>/<devid> is owned by domain 0 and readable by the guest; the frontend
directory /local/domain/<domid>/device/vbd/<devid> is owned by the guest and readable by domain 0. Both
start in state 1 (Initialising), written in one transaction so the guest's xenbus sees them whole.

The domain object given to attach/detach provides ``domid``, ``name``, ``attach_vbd(devid, args,
records, fds)`` and ``detach_vbd(devid, wait_s)`` (dom0/handle.py over the channel; tests in process).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError
from ..disk import open_disk
from ..disk.base import OpenRecord, RecordingOpener
from ..xenbus_backend import remove_device_nodes, write_device_nodes
from . import abi

DETACH_TIMEOUT_S = 10.0  # libxl waits LIBXL_DESTROY_TIMEOUT (10 s) for the frontend, then forces removal


@dataclass
class AttachedDisk:
    """What domain 0 knows of a disk it did not attach itself (an adopted domain's)."""

    vdev: str
    target: str
    format: str
    access: str


@dataclass
class PreparedDisk:
    """An image domain 0 opened and checked, as descriptors ready to hand to a domain process."""

    args: dict[str, Any]
    records: list[OpenRecord] = field(default_factory=list)

    def close(self) -> None:
        for rec in self.records:
            _close_fd(rec.fd)
        self.records = []


def prepare_image(spec: Any) -> PreparedDisk:
    """Open the image a DiskSpec names (its whole chain), check it, keep its descriptors: a one-line
    ImageError when it is missing, corrupt, in use or not a regular file."""
    args = spec.open_args()
    rec = RecordingOpener()
    try:
        extra = {"base_format": args["base_format"]} if args.get("base_format") else {}
        image = open_disk(args["target"], args["format"], readonly=args["readonly"],
                          persistent=args["persistent"], base=args.get("base"), opener=rec, **extra)
        image.close()  # the recorded duplicates keep the files (and their locks) open
    except BaseException:
        rec.close()
        raise
    return PreparedDisk(args, rec.records)


def devid_of(vdev: str) -> int:
    try:
        return abi.vdev_to_devid(vdev)
    except ValueError as e:
        raise ConfigError(f"hyperdisco: {e}") from None


class BlockDevices:
    """Every domain's vbds, domain 0's side. `host` gives the dom0 xenstore connection (host.xs), log."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._devices: dict[int, dict[int, Any]] = {}  # domid -> devid -> DiskSpec

    # -- images -----------------------------------------------------------------------------------------
    def open_images(self, specs: list[Any]) -> list[tuple[Any, PreparedDisk]]:
        """Open every disk of a new domain, or none (the error is one line naming the image)."""
        opened: list[tuple[Any, PreparedDisk]] = []
        try:
            seen: set[int] = set()
            for spec in specs:
                devid = devid_of(spec.vdev)
                if devid in seen:
                    raise ConfigError(f"hyperdisco: vdev {spec.vdev!r} is used by two disks")
                seen.add(devid)
                opened.append((spec, prepare_image(spec)))
        except BaseException:
            for _spec, disk in opened:
                disk.close()
            raise
        return opened

    # -- attach -----------------------------------------------------------------------------------------
    def attach(self, dom: Any, spec: Any, disk: PreparedDisk | None = None) -> int:
        devid = devid_of(spec.vdev)
        try:
            with self._lock:
                if devid in self._devices.get(dom.domid, {}):
                    raise ConfigError(f"hyperdisco: {dom.name} already has a disk {spec.vdev}")
                self._devices.setdefault(dom.domid, {})[devid] = spec
            try:
                if disk is None:
                    disk = prepare_image(spec)
                self._write_nodes(dom, devid, spec)
                records = [(r.kind, r.path, r.readonly) for r in disk.records]
                dom.attach_vbd(devid, disk.args, records, [r.fd for r in disk.records])
            except BaseException:
                with self._lock:
                    self._devices.get(dom.domid, {}).pop(devid, None)
                self._remove_nodes(dom.domid, devid)
                raise
        finally:
            if disk is not None:
                disk.close()  # handed over (or failed): domain 0 keeps no descriptor of it
        self.host.log(f"d{dom.domid}: disk {spec.vdev} ({devid}) -> {spec.target} "
                      f"[{spec.format}, {spec.access}]")
        return devid

    def _write_nodes(self, dom: Any, devid: int, spec: Any) -> None:
        xs = self.host.xs
        n = dom.domid
        be, fe = backend_path(n, devid), frontend_path(n, devid)
        write_device_nodes(
            xs, n, be, fe,
            back=(("frontend", fe), ("frontend-id", str(n)), ("params", spec.target),
                  ("mode", "r" if spec.access == "ro" else "w"), ("type", "file"), ("online", "1"),
                  ("removable", "0"), ("bootable", "1"), ("dev", spec.vdev), ("device-type", "disk"),
                  ("discard-enable", "0" if spec.access == "ro" else "1"),
                  ("state", str(abi.XenbusStateInitialising))),
            front=(("backend", be), ("backend-id", "0"), ("virtual-device", str(devid)),
                   ("device-type", "disk"), ("state", str(abi.XenbusStateInitialising))))

    # -- detach -----------------------------------------------------------------------------------------
    def detach(self, dom: Any, vdev: str, timeout: float = DETACH_TIMEOUT_S) -> bool:
        """As libxl: online=0 and state Closing in the backend, wait for the frontend to close, then
        remove both directories. False if the guest did not close in time (removed anyway)."""
        devid = devid_of(vdev)
        with self._lock:
            known = devid in self._devices.get(dom.domid, {})
        if not known:
            raise ConfigError(f"hyperdisco: {dom.name} has no disk {vdev}")
        xs = self.host.xs
        be = backend_path(dom.domid, devid)
        xs.write(f"{be}/online", "0")
        xs.write(f"{be}/state", str(abi.XenbusStateClosing))
        clean = dom.detach_vbd(devid, timeout)
        if not clean:
            self.host.log(f"d{dom.domid}: {vdev}: frontend did not close in {timeout:.0f}s, removing it")
        with self._lock:
            self._devices.get(dom.domid, {}).pop(devid, None)
        self._remove_nodes(dom.domid, devid)
        return clean

    def _remove_nodes(self, domid: int, devid: int) -> None:
        remove_device_nodes(self.host.xs, "vbd", domid, devid)

    def adopt(self, dom: Any, vbds: dict[str, Any]) -> None:
        """A domain adopted from a previous domain 0: its devices, as its process reported them."""
        found: dict[int, Any] = {}
        for devid, info in vbds.items():
            if str(devid).isdigit() and isinstance(info, dict):
                access = "ro" if info.get("readonly") else "rw"
                found[int(devid)] = AttachedDisk(str(info.get("vdev", "")), str(info.get("target", "")),
                                                 str(info.get("format", "")), access)
        with self._lock:
            self._devices[dom.domid] = found

    def close_domain(self, domid: int) -> None:
        """The domain is going (its process stops its backends and closes its images): remove the nodes."""
        with self._lock:
            devs = self._devices.pop(domid, {})
        if devs:
            try:
                self.host.xs.rm(f"/local/domain/0/backend/vbd/{domid}")
            except Exception:
                pass

    def close(self) -> None:
        pass

    # -- listing ----------------------------------------------------------------------------------------
    def rows(self, dom: Any) -> list[dict[str, Any]]:
        """xl block-list's columns: Vdev BE handle state evt-ch ring-ref BE-path (state, event channel
        and ring-ref as the frontend published them, -1 when absent)."""
        with self._lock:
            devs = sorted(self._devices.get(dom.domid, {}).items())
        xs = self.host.xs
        rows = []

        def num(path: str) -> int:
            v = xs.read(path)
            return int(v) if v is not None and v.isascii() and v.isdigit() and len(v) < 12 else -1

        for devid, spec in devs:
            fe, be = frontend_path(dom.domid, devid), backend_path(dom.domid, devid)
            rows.append({"vdev": devid, "name": spec.vdev, "be": 0, "handle": dom.domid,
                         "state": num(f"{fe}/state"), "evtch": num(f"{fe}/event-channel"),
                         "ringref": num(f"{fe}/ring-ref"), "bepath": be, "target": spec.target,
                         "backend_state": num(f"{be}/state")})
        return rows


def backend_path(domid: int, devid: int) -> str:
    return f"/local/domain/0/backend/vbd/{domid}/{devid}"


def frontend_path(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/vbd/{devid}"


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
