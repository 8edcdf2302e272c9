"""The vifs of one domain, where their backends run: inside its domain process. Domain 0 hands over one
end of each vif's socket pair; the other end is a port of its switch."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from ..net.frame import mac_bytes
from .device import VifBackend


class VifHost:
    def __init__(self, dom: Any, xenstored: Any, log: Callable[[str], None]) -> None:
        self.dom = dom
        self.xenstored = xenstored
        self.log = log
        self._lock = threading.Lock()
        self._devices: dict[int, VifBackend] = {}
        self._args: dict[int, dict[str, Any]] = {}

    def attach(self, devid: int, args: dict[str, Any], fd: int) -> None:
        """Start vif `devid` on the socket `fd` (taken over). A vif we already serve with the same MAC
        only changes sockets (a new domain 0 adopted us)."""
        sock = socket.socket(fileno=fd)
        try:
            if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
                raise ValueError("a vif's descriptor must be a Unix seqpacket socket")
            mac = str(args.get("mac", ""))
            mac_bytes(mac)  # ValueError when it is not a MAC
        except BaseException:
            sock.close()
            raise
        with self._lock:
            old = self._devices.get(devid)
            if old is not None and old.mac == mac:
                old.replace_socket(sock)
                return
            dev = VifBackend(self.dom, self.xenstored, devid, mac, sock, self.log)
            self._devices[devid] = dev
            self._args[devid] = {"mac": mac, "handle": devid}
        if old is not None:
            old.stop()
        dev.start()

    def detach(self, devid: int, wait_s: float = 0.0) -> bool:
        with self._lock:
            dev = self._devices.get(devid)
        if dev is None:
            return False
        clean = dev.closed.wait(wait_s) if wait_s > 0 else dev.closed.is_set()
        with self._lock:
            self._devices.pop(devid, None)
            self._args.pop(devid, None)
        dev.stop()
        return clean

    def describe(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {str(d): dict(a) for d, a in self._args.items()}

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            devs = list(self._devices.items())
        return {str(d): dev.stats.as_dict() for d, dev in devs}

    def close(self) -> None:
        with self._lock:
            devs, self._devices = list(self._devices.values()), {}
            self._args = {}
        for dev in devs:
            dev.stop()
