"""The block backends of one domain, where they run: inside its domain process (or, in unit tests, in
the test's process). Domain 0 opened and checked each image and hands over its descriptors; here they
are reopened through a HandedOpener, so this side can reach no other host file."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..disk import open_disk
from ..disk.base import HandedOpener
from .device import VbdBackend
from .ioqueue import DomainIoQueue, IoWorkers
from .ring import Disk


class VbdHost:
    def __init__(self, dom: Any, xenstored: Any, log: Callable[[str], None]) -> None:
        self.dom = dom
        self.xenstored = xenstored  # anything with local_connection(on_watch): xenstored or its relay
        self.log = log
        self._lock = threading.Lock()
        self._devices: dict[int, tuple[VbdBackend, Disk]] = {}
        self._args: dict[int, dict[str, Any]] = {}
        self._workers = IoWorkers(log=log)
        self._queue = DomainIoQueue(self._workers)

    def attach(self, devid: int, args: dict[str, Any], records: list[tuple[str, str, bool, int]]) -> None:
        """Open the image from the handed descriptors (taken over: closed here) and start its backend."""
        opener = HandedOpener(records)
        try:
            extra = {"base_format": args["base_format"]} if args.get("base_format") else {}
            disk: Disk = open_disk(str(args["target"]), str(args["format"]), readonly=bool(args["readonly"]),
                                   persistent=bool(args["persistent"]), base=args.get("base"), opener=opener,
                                   **extra)
        finally:
            opener.close()
        dev = VbdBackend(self.dom, self.xenstored, devid, str(args["vdev"]), disk, self.log, io=self._queue)
        with self._lock:
            old = self._devices.pop(devid, None)
            self._devices[devid] = (dev, disk)
            self._args[devid] = dict(args)
        if old is not None:
            _stop(*old)
        dev.start()

    def detach(self, devid: int, wait_s: float = 0.0) -> bool:
        """Stop a device after waiting up to wait_s for its frontend to close: True if it closed cleanly
        (False if it did not in time, or the device is unknown)."""
        with self._lock:
            entry = self._devices.get(devid)
        if entry is None:
            return False
        clean = entry[0].closed.wait(wait_s) if wait_s > 0 else entry[0].closed.is_set()
        with self._lock:
            self._devices.pop(devid, None)
        _stop(*entry)
        return clean

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each device's number and what it serves (for a domain 0 that adopts the domain)."""
        with self._lock:
            return {str(devid): dict(self._args[devid]) for devid in self._devices}

    def devices(self) -> list[VbdBackend]:
        with self._lock:
            return [d for d, _disk in self._devices.values()]

    def close(self) -> None:
        """The domain is going: stop every device and close (flush) its image."""
        with self._lock:
            entries, self._devices = list(self._devices.values()), {}
        for entry in entries:
            _stop(*entry)
        self._workers.shutdown()


def _stop(dev: VbdBackend, disk: Disk) -> None:
    dev.stop()
    try:
        disk.close()
    except Exception:
        pass
