"""The block backends of one domain, where they run: inside its domain process (or, in unit tests, in
the test's process). Domain 0 opened and checked each image and hands over its descriptors; here they
are reopened through a HandedOpener, so this side can reach no other host file."""

from __future__ import annotations

import fcntl
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

    def handover(self, release: bool) -> list[str]:
        """Live migration's stop-and-copy (vmm/migration.py), the guest suspended and its I/O drained:
        flush every read-write image and drop its lock (`release`), so the destination can open it, or
        take the lock back (the migration failed). Only raw images are migrated read-write (the source
        refuses others). Returns what could not be done, one line each."""
        with self._lock:
            entries = [(self._args[devid], disk) for devid, (_dev, disk) in self._devices.items()]
        problems = []
        for args, disk in entries:
            fd = getattr(disk, "_fd", None)
            if args.get("readonly") or not isinstance(fd, int):
                continue
            try:
                if release:
                    disk.flush()
                    fcntl.flock(fd, fcntl.LOCK_UN)  # every holder's: dom0's duplicates are this description
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                problems.append(f"{args.get('target')}: {exc.strerror or exc}")
        return problems

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
