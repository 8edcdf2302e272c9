"""Secondary PV consoles ("channels", xl.cfg(5) `channel = [...]`, Xen's docs/misc/channel.txt): the
backends of device/console/N (N >= 1), in the domain process.

The frontend is Linux's hvc_xen xenbus driver (drivers/tty/hvc/hvc_xen.c, xencons_probe and
xencons_connect_backend): for each device/console/N it allocates one page holding a xencons_interface
(io/console.h, the primary console's layout), grants it to the backend, allocates an unbound event
channel, writes `ring-ref` and `port` into its directory and switches to Initialised; the tty is
/dev/hvcN (N+... in probe order: the first channel is hvc1). We map the granted page, bind the port as its
backend and go Connected; the ring is then served by the primary console's ConsoleBackend (backends/
console.py: indices masked and clamped, input bounded). The toolstack writes the nodes as libxl does for a
channel (tools/libs/light/libxl_console.c, libxl__device_console_add / libxl__init_console_from_channel):
frontend `backend`, `backend-id`, `name`, `type`, `state`; backend `frontend`, `frontend-id`, `online`,
`state`, `protocol`, `name`, `connection`.

Bytes move between the ring and a stream socket whose other end domain 0 holds (hyperdisco/dom0/
channels.py). The socket is non-blocking on our side: output the host does not read is dropped once the
socket buffer is full (counted), input waits in the ConsoleBackend's bounded queue until the guest reads.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..xen.io import xenbus as xb
from .console import ConsoleBackend
from .socket_backend import SocketBackend

MAX_RING_REF = 1 << 32
READ_CHUNK = 4096


class ChannelBackend(SocketBackend):
    STOP_TIMEOUT_S = 5.0

    def __init__(self, dom: Any, xenstored: Any, devid: int, name: str, sock: socket.socket,
                 log: Callable[[str], None]) -> None:
        super().__init__(dom, xenstored, "console", devid, f"channel d{dom.domid} console/{devid} ({name})",
                         f"chan-d{dom.domid}-{devid}", sock, log)
        self.name = name
        self.ring: ConsoleBackend | None = None
        self._lock = threading.RLock()
        self.dropped = 0

    # -- data -------------------------------------------------------------------------------------------
    def _sink(self, data: bytes) -> None:
        """Guest output (on the thread that drained the ring): to domain 0, never blocking."""
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            n = 0
        self.dropped += len(data) - n

    def _kick(self) -> None:
        ring = self.ring
        if ring is not None:
            ring.kick()

    def _state_lock(self) -> AbstractContextManager[Any]:
        return self._lock

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        sock_fd = -1
        while not self._stop:
            if self.sock.fileno() != sock_fd and self.sock.fileno() >= 0:
                if sock_fd >= 0:
                    try:
                        poller.unregister(sock_fd)
                    except KeyError:
                        pass
                sock_fd = self.sock.fileno()
                poller.register(sock_fd, select.POLLIN)
            # with input waiting for the guest to make room, look again now and then; with much
            # waiting, stop reading the socket (domain 0's writes then fail, never block it)
            ring = self.ring
            waiting = ring is not None and ring.pending_input() > 0
            if sock_fd >= 0:
                try:
                    poller.modify(sock_fd, 0 if self._backlogged() else select.POLLIN)
                except (KeyError, OSError):
                    pass
            events = poller.poll(100 if waiting else None)
            if self._stop:
                break
            for fd, ev in events:
                if fd == self._wake_fd:
                    self._clear_wake()
                elif fd == sock_fd:
                    self._from_host(poller, sock_fd, ev)
            if self._xenbus:
                self._xenbus = False
                with self._lock:
                    self._frontend_changed()
            ring = self.ring
            if ring is not None:
                ring.kick()  # move waiting input as the guest makes room

    def _backlogged(self) -> bool:
        ring = self.ring
        return ring is not None and ring.pending_input() >= ConsoleBackend.MAX_PENDING_INPUT // 2

    def _from_host(self, poller: Any, fd: int, ev: int) -> None:
        ring = self.ring
        if self._backlogged():
            return
        try:
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            poller.unregister(fd)  # domain 0 went away: input stops until it adopts us
            return
        if ring is not None:
            ring.input(data)
        # not connected yet: the host's bytes are dropped (as a serial line with nobody listening)

    # -- xenbus -----------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.ring is not None

    def _advertise(self) -> None:
        pass  # nothing to offer: the console protocol has no features

    def _connect(self) -> None:
        ref = self._read_uint("ring-ref", MAX_RING_REF)
        port = self._read_port("port")
        if ref is None or port is None:
            return self._fatal("frontend gave no valid ring-ref or port")
        pages = self._attach({"ring-ref": ref}, "port", port)
        if pages is None:
            return None
        page = pages[0]
        self.ring = ConsoleBackend(self.dom.memory, page.gpa, self._sink, self._notify)
        self._clear_error()
        self._switch(xb.XenbusStateConnected)
        self.limit.log(self.log, "connected", f"connected: ring-ref {ref}, event channel {port}")
        self.ring.kick()
        return None

    def _disconnect(self) -> None:
        if self.ring is None:
            return
        self.ring = None
        self._detach()


class ChannelHost:
    """The channels of one domain: devid -> backend."""

    def __init__(self, dom: Any, xenstored: Any, log: Callable[[str], None]) -> None:
        self.dom = dom
        self.xenstored = xenstored
        self.log = log
        self._lock = threading.Lock()
        self._devices: dict[int, ChannelBackend] = {}

    def attach(self, devid: int, name: str, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        try:
            if sock.type != socket.SOCK_STREAM or sock.family != socket.AF_UNIX:
                raise ValueError("a channel's descriptor must be a Unix stream socket")
            if not 1 <= devid <= 64:
                raise ValueError(f"channel devid {devid} out of range")
        except BaseException:
            sock.close()
            raise
        with self._lock:
            old = self._devices.get(devid)
            if old is not None and old.name == name:
                old.replace_socket(sock)
                return
            dev = ChannelBackend(self.dom, self.xenstored, devid, name, sock, self.log)
            self._devices[devid] = dev
        if old is not None:
            old.stop()
        dev.start()

    def close(self) -> None:
        with self._lock:
            devs, self._devices = list(self._devices.values()), {}
        for dev in devs:
            dev.stop()
