"""The toolstack's side of virtual block devices: open the images, write the xenstore nodes libxl writes
for a vbd, start a backend per device, detach the way libxl does, and tidy up when a domain goes.

Nodes (libxl's libxl__device_disk_add / libxl__device_generic_add): the backend directory
/local/domain/0/backend/vbd/<domid>/<devid> is owned by domain 0 and readable by the guest; the frontend
directory /local/domain/<domid>/device/vbd/<devid> is owned by the guest and readable by domain 0. Both
start in state 1 (Initialising), written in one transaction so the guest's xenbus sees them whole.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ...errors import ConfigError
from . import abi
from .device import VbdBackend
from .ioqueue import DomainIoQueue, IoWorkers
from .ring import Disk

DETACH_TIMEOUT_S = 10.0  # libxl waits LIBXL_DESTROY_TIMEOUT (10 s) for the frontend, then forces removal


def open_image(spec: Any) -> Disk:
    """Open the image a DiskSpec names: a one-line ImageError when it is missing, corrupt or in use."""
    from ...toolstack.xlcfg import disk_persistent
    from ..disk import open_disk

    image: Disk = open_disk(spec.target, format=spec.format, readonly=spec.access == "ro",
                            persistent=disk_persistent(spec), base=spec.extra.get("base"))
    return image


def devid_of(vdev: str) -> int:
    try:
        return abi.vdev_to_devid(vdev)
    except ValueError as e:
        raise ConfigError(f"hyperdisco: {e}") from None


class BlockDevices:
    """Every domain's vbds. `hv` gives xenstored, the dom0 connection (hv.xs) and the log."""

    def __init__(self, hv: Any) -> None:
        self.hv = hv
        self._lock = threading.Lock()
        self._devices: dict[int, dict[int, tuple[VbdBackend, Any]]] = {}
        self._workers = IoWorkers(log=hv.log)
        self._queues: dict[int, DomainIoQueue] = {}  # per domain: its bound on requests in flight

    # -- images -----------------------------------------------------------------------------------------
    def open_images(self, specs: list[Any]) -> list[tuple[Any, Disk]]:
        """Open every disk of a new domain, or none (the error is one line naming the image)."""
        opened: list[tuple[Any, Disk]] = []
        try:
            seen: set[int] = set()
            for spec in specs:
                devid = devid_of(spec.vdev)
                if devid in seen:
                    raise ConfigError(f"hyperdisco: vdev {spec.vdev!r} is used by two disks")
                seen.add(devid)
                opened.append((spec, open_image(spec)))
        except BaseException:
            for _spec, disk in opened:
                _close(disk)
            raise
        return opened

    # -- attach -----------------------------------------------------------------------------------------
    def attach(self, dom: Any, spec: Any, disk: Disk | None = None) -> int:
        xsd = self.hv.xenstored
        if xsd is None:
            raise ConfigError("hyperdisco: disks need xenstore")
        devid = devid_of(spec.vdev)
        with self._lock:
            if devid in self._devices.get(dom.domid, {}):
                if disk is not None:
                    _close(disk)
                raise ConfigError(f"hyperdisco: {dom.name} already has a disk {spec.vdev}")
            if disk is None:
                disk = open_image(spec)
            io = self._queues.setdefault(dom.domid, DomainIoQueue(self._workers))
            dev = VbdBackend(dom, xsd, devid, spec.vdev, disk, self.hv.log, io=io)
            self._devices.setdefault(dom.domid, {})[devid] = (dev, spec)
        try:
            self._write_nodes(dom, devid, spec, disk)
            dev.start()
        except Exception:
            with self._lock:
                self._devices.get(dom.domid, {}).pop(devid, None)
            dev.stop()
            _close(disk)
            raise
        self.hv.log(f"d{dom.domid}: disk {spec.vdev} ({devid}) -> {spec.target} "
                    f"[{spec.format}, {spec.access}]")
        return devid

    def _write_nodes(self, dom: Any, devid: int, spec: Any, disk: Disk) -> None:
        xs = self.hv.xs
        n = dom.domid
        be, fe = f"/local/domain/0/backend/vbd/{n}/{devid}", f"/local/domain/{n}/device/vbd/{devid}"
        while True:
            tx = xs.transaction_start()
            for path in (be, fe):
                try:
                    xs.rm(path, tx)
                except Exception:
                    pass
            xs.mkdir(be, tx)
            xs.set_perms(be, ["n0", f"r{n}"], tx)
            for k, v in (("frontend", fe), ("frontend-id", str(n)), ("params", spec.target),
                         ("mode", "r" if spec.access == "ro" else "w"), ("type", "file"), ("online", "1"),
                         ("removable", "0"), ("bootable", "1"), ("dev", spec.vdev), ("device-type", "disk"),
                         ("discard-enable", "0" if disk.readonly else "1"),
                         ("state", str(abi.XenbusStateInitialising))):
                xs.write(f"{be}/{k}", v, tx)
            xs.mkdir(fe, tx)
            xs.set_perms(fe, [f"n{n}", "r0"], tx)
            for k, v in (("backend", be), ("backend-id", "0"), ("virtual-device", str(devid)),
                         ("device-type", "disk"), ("state", str(abi.XenbusStateInitialising))):
                xs.write(f"{fe}/{k}", v, tx)
            if xs.transaction_end(tx):
                return

    # -- detach -----------------------------------------------------------------------------------------
    def detach(self, dom: Any, vdev: str, timeout: float = DETACH_TIMEOUT_S) -> bool:
        """As libxl: online=0 and state Closing in the backend, wait for the frontend to close, then
        remove both directories. False if the guest did not close in time (removed anyway)."""
        devid = devid_of(vdev)
        with self._lock:
            entry = self._devices.get(dom.domid, {}).get(devid)
        if entry is None:
            raise ConfigError(f"hyperdisco: {dom.name} has no disk {vdev}")
        dev, _spec = entry
        xs = self.hv.xs
        xs.write(f"{dev.be}/online", "0")
        xs.write(f"{dev.be}/state", str(abi.XenbusStateClosing))
        clean = dev.closed.wait(timeout)
        if not clean:
            self.hv.log(f"d{dom.domid}: {vdev}: frontend did not close in {timeout:.0f}s, removing it anyway")
        self._remove(dom.domid, devid)
        return clean

    def _remove(self, domid: int, devid: int) -> None:
        with self._lock:
            entry = self._devices.get(domid, {}).pop(devid, None)
        if entry is None:
            return
        dev, _spec = entry
        dev.stop()
        _close(dev.disk)
        xs = self.hv.xs
        for path in (dev.fe, dev.be):
            try:
                xs.rm(path)
            except Exception:
                pass
        parent = f"/local/domain/0/backend/vbd/{domid}"
        try:
            if not xs.directory(parent):
                xs.rm(parent)
        except Exception:
            pass

    def close_domain(self, domid: int) -> None:
        """The domain is going: stop its backends (no handshake), close its images."""
        with self._lock:
            devs = self._devices.pop(domid, {})
            self._queues.pop(domid, None)
        for dev, _spec in devs.values():
            dev.stop()
            _close(dev.disk)
        if devs:
            try:
                self.hv.xs.rm(f"/local/domain/0/backend/vbd/{domid}")
            except Exception:
                pass

    def close(self) -> None:
        """The hypervisor is going (every domain closed first): stop the I/O threads."""
        self._workers.shutdown()

    # -- listing ----------------------------------------------------------------------------------------
    def rows(self, dom: Any) -> list[dict[str, Any]]:
        """xl block-list's columns: Vdev BE handle state evt-ch ring-ref BE-path (state, event channel
        and ring-ref as the frontend published them, -1 when absent)."""
        with self._lock:
            devs = sorted(self._devices.get(dom.domid, {}).items())
        xs = self.hv.xs
        rows = []

        def num(path: str) -> int:
            v = xs.read(path)
            return int(v) if v is not None and v.isdigit() else -1

        for devid, (dev, spec) in devs:
            rows.append({"vdev": devid, "name": spec.vdev, "be": 0, "handle": dom.domid,
                         "state": num(f"{dev.fe}/state"), "evtch": num(f"{dev.fe}/event-channel"),
                         "ringref": num(f"{dev.fe}/ring-ref"),
                         "bepath": dev.be, "target": spec.target, "backend_state": dev.state})
        return rows

    def devices(self, domid: int) -> list[VbdBackend]:
        with self._lock:
            return [d for d, _s in self._devices.get(domid, {}).values()]

    def wait_connected(self, domid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(d.ring is not None for d in self.devices(domid)):
                return True
            time.sleep(0.05)
        return False


def _close(disk: Any) -> None:
    try:
        disk.close()
    except Exception:
        pass
