"""Domain 0's ends of a domain's PV console channels (xl.cfg `channel = [...]`; the backends run in the
domain process: backends/console_channel.py).

For channel i (devid i+1) domain 0 writes the device's xenstore nodes as libxl does for a channel
(tools/libs/light/libxl_console.c, libxl__device_console_add: backend `frontend`, `frontend-id`,
`online`, `state`, `protocol` = "vt100", `name`, `connection`; frontend `backend`, `backend-id`, `state`
writable by the guest, and `name`, `limit`, `type`, `output`, `tty` read-only to it), makes a Unix
stream socket pair and hands one end to the domain process (`chan-attach`). The other end stays here:
a reader thread feeds what the guest writes to the channel's consumer, which for the channel named
org.qemu.guest_agent.0 is the guest agent client (dom0/guest_agent.py); writes toward the guest
have a timeout, so a guest that never reads costs the caller a timeout, never a blocked daemon.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from ..backends.xenbus_backend import write_device_nodes
from .guest_agent import AgentClient

AGENT_CHANNEL = "org.qemu.guest_agent.0"  # the name virtio-serial and libvirt give qemu-ga's port
XENCONSOLE_LIMIT = 1048576  # LIBXL_XENCONSOLE_LIMIT (libxl_internal.h)
WRITE_TIMEOUT_S = 5.0
ATTACH_TIMEOUT_S = 10.0


class ChannelEnd:
    """Domain 0's end of one channel."""

    def __init__(self, domid: int, devid: int, name: str, sock: socket.socket,
                 on_data: Callable[[bytes], None] | None) -> None:
        self.domid, self.devid, self.name = domid, devid, name
        self.sock = sock
        self.on_data = on_data
        self.closed = threading.Event()
        self._wlock = threading.Lock()
        sock.settimeout(None)
        self._thread = threading.Thread(target=self._read, name=f"chan0-d{domid}-{devid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Toward the guest; OSError (TimeoutError) when the guest does not take it in time."""
        with self._wlock:
            view = memoryview(data)
            while view:
                _, w, _ = _select_w(self.sock, WRITE_TIMEOUT_S)
                if not w:
                    raise TimeoutError("the guest does not read its channel")
                n = self.sock.send(view, socket.MSG_DONTWAIT)
                view = view[n:]

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                if self.on_data is not None:
                    self.on_data(data)
        except OSError:
            pass
        finally:
            self.closed.set()
            self.sock.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _select_w(sock: socket.socket, timeout: float) -> tuple[list[Any], list[Any], list[Any]]:
    return select.select([], [sock], [], timeout)


def write_channel_nodes(xs: Any, domid: int, devid: int, name: str) -> None:
    """The frontend and backend directories of channel `devid` (libxl__device_console_add's nodes)."""
    be = f"/local/domain/0/backend/console/{domid}/{devid}"
    fe = f"/local/domain/{domid}/device/console/{devid}"
    back = [("frontend", fe), ("frontend-id", str(domid)), ("online", "1"), ("state", "1"),
            ("protocol", "vt100"), ("name", name), ("connection", "socket")]
    front = [("backend", be), ("backend-id", "0"), ("state", "1")]
    ro_front = [("name", name), ("limit", str(XENCONSOLE_LIMIT)), ("type", "xenconsoled"),
                ("output", "pty"), ("tty", "")]
    write_device_nodes(xs, domid, be, fe, back, front, ro_front)


def attach_channels(dom: Any, xs: Any, names: list[str],
                    consumer: Callable[[int, str], Callable[[bytes], None] | None]) -> list[ChannelEnd]:
    """Write the nodes of each channel, hand its backend its socket, start our ends. `consumer(devid,
    name)` gives the function that takes the guest's bytes (or None: read and dropped)."""
    ends: list[ChannelEnd] = []
    for i, name in enumerate(names):
        devid = i + 1
        write_channel_nodes(xs, dom.domid, devid, name)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        end = ChannelEnd(dom.domid, devid, name, ours, consumer(devid, name))
        try:
            reply = dom.call({"t": "chan-attach", "devid": devid, "name": name}, [theirs.fileno()],
                             timeout=ATTACH_TIMEOUT_S)
        finally:
            theirs.close()
        if reply is None or reply.get("error"):
            ours.close()
            detail = reply.get("error") if reply else "no answer"
            raise OSError(f"channel {name}: the domain process did not take it ({detail})")
        end.start()
        ends.append(end)
    return ends


class ChannelTable:
    """The channels of every domain, and the guest agent client of those that have the agent's."""

    def __init__(self, xs: Any) -> None:
        self.xs = xs
        self._lock = threading.Lock()
        self._ends: dict[int, list[ChannelEnd]] = {}
        self._agents: dict[int, AgentClient] = {}

    def attach(self, dom: Any, names: list[str]) -> None:
        if not names:
            return
        clients: dict[int, AgentClient] = {}
        domid = dom.domid

        def consumer(devid: int, name: str) -> Callable[[bytes], None] | None:
            if name != AGENT_CHANNEL:
                return None
            clients[devid] = AgentClient(lambda data: self._write(domid, devid, data))
            return clients[devid].feed

        self.remove(domid)  # a restarted domain (on_reboot) gets fresh channels
        ends = attach_channels(dom, self.xs, list(names), consumer)
        with self._lock:
            self._ends[domid] = ends
            for client in clients.values():
                self._agents[domid] = client

    def _write(self, domid: int, devid: int, data: bytes) -> None:
        with self._lock:
            end = next((e for e in self._ends.get(domid, []) if e.devid == devid), None)
        if end is None or end.closed.is_set():
            raise OSError("the channel is closed")
        end.write(data)

    def agent(self, domid: int) -> AgentClient | None:
        with self._lock:
            return self._agents.get(domid)

    def remove(self, domid: int) -> None:
        with self._lock:
            ends = self._ends.pop(domid, [])
            self._agents.pop(domid, None)
        for end in ends:
            end.close()
