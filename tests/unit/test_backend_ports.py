"""The three back ends built on XenbusBackend (vbd, vif, console channel), each constructed as its host
does, against the real xenstored and a domain that never runs (the test plays the frontend): each
connects; the frontend's event-channel port is bounded by what the domain's event channels hold valid
now (Xen's port_is_valid, which evtchn_bind_interdomain checks for the remote port), so on a FIFO domain
with max_event_channels above 4096 a port above the 2-level ABI's 4096 is taken, and a port beyond the
domain's limit is refused through the backend's error node."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from unit_support import DomainHarness

from hyperdisco.backends.blkback.device import VbdBackend
from hyperdisco.backends.console_channel import ChannelBackend
from hyperdisco.backends.disk import open_disk
from hyperdisco.backends.net import frame as fr
from hyperdisco.backends.netback.device import VifBackend
from hyperdisco.backends.xenbus_backend import XenbusBackend, write_device_nodes
from hyperdisco.backends.xenstore import Xenstored
from hyperdisco.core.evtchn import Port
from hyperdisco.core.grant import GRANT_ENTRY_V1, GTF_permit_access
from hyperdisco.xen import abi

GRANT_GPFN = 0x3000
RING_GPAS = (0x500000, 0x501000)  # grant references 1 and 2
CONTROL_GPA = 0x400000  # the FIFO control block of vCPU 0
MAX_PORT = 8000  # xl.cfg max_event_channels: more than the 2-level ABI's 4096 ports
HIGH_PORT = 5000
DEVID = 1

# per device type: the frontend's nodes (PORT stands for the event channel) and the backend's class
FRONT_NODES = {
    "vbd": {"ring-ref": "1", "event-channel": "PORT", "protocol": "x86_64-abi"},
    "vif": {"tx-ring-ref": "1", "rx-ring-ref": "2", "event-channel": "PORT", "request-rx-copy": "1",
            "feature-rx-notify": "1"},
    "console": {"ring-ref": "1", "port": "PORT"},
}


def until(cond: Callable[[], bool], logs: list[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {logs}"
        time.sleep(0.01)


class Frontend:
    def __init__(self, dh: DomainHarness, kind: str, tmp_path: Path, fifo: bool) -> None:
        self.dom, self.kind = dh.dom, kind
        self.dom.evtchn.max_port = MAX_PORT
        if fifo:
            arg = dh.put(abi.EVTCHN_INIT_CONTROL, CONTROL_GPA >> 12, 0, 0, 0)
            assert dh.call("event_channel_op", abi.EVTCHNOP_init_control, arg) == 0
            assert self.dom.evtchn.abi.name == "FIFO"
        arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, GRANT_GPFN)
        assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
        for ref, gpa in enumerate(RING_GPAS, 1):
            entry = (GRANT_GPFN << 12) + ref * 8
            self.dom.memory.pack(GRANT_ENTRY_V1, entry, GTF_permit_access, 0, gpa >> 12)
            self.dom.memory.pack(struct.Struct("<IIII"), gpa, 0, 1, 0, 1)  # an empty shared ring
        self.logs: list[str] = []
        self.xsd = Xenstored(self.logs.append)
        self.xs = self.xsd.local_connection()
        self.socks = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.fe = f"/local/domain/{self.dom.domid}/device/{kind}/{DEVID}"
        self.be = f"/local/domain/0/backend/{kind}/{self.dom.domid}/{DEVID}"
        write_device_nodes(self.xs, self.dom.domid, self.be, self.fe, [("state", "1")], [("state", "1")])
        self.backend = self._backend(tmp_path)
        self.backend.start()
        until(lambda: self.xs.read(f"{self.be}/state") == "2", self.logs)  # InitWait

    def _backend(self, tmp_path: Path) -> XenbusBackend:
        if self.kind == "vbd":
            img = tmp_path / "disk.img"
            img.write_bytes(bytes(1 << 20))
            return VbdBackend(self.dom, self.xsd, DEVID, "xvdb", open_disk(str(img)), self.logs.append)
        if self.kind == "vif":
            return VifBackend(self.dom, self.xsd, DEVID, "00:16:3e:00:00:01", self.socks[0], self.logs.append)
        return ChannelBackend(self.dom, self.xsd, DEVID, "org.example.0", self.socks[0], self.logs.append)

    def offer(self, port: int | None = None) -> int:
        """An unbound port offered to domain 0, as the guest's EVTCHNOP_alloc_unbound makes it, or one put
        at `port` in the table directly."""
        offered = Port(abi.EVTCHNSTAT_unbound, remote_dom=0)
        if port is None:
            return self.dom.evtchn.alloc(offered)
        self.dom.evtchn.ports[port] = offered
        return port

    def offer_high(self) -> int:
        """With the guest's other ports below HIGH_PORT in use, the port the guest allocates next."""
        for p in range(1, HIGH_PORT):
            self.dom.evtchn.ports.setdefault(p, Port(abi.EVTCHNSTAT_ipi))
        return self.offer()

    def connect(self, port: int) -> str:
        """Write the frontend's nodes with `port`, go Initialised: the backend's state once it answers."""
        for k, v in FRONT_NODES[self.kind].items():
            self.xs.write(f"{self.fe}/{k}", str(port) if v == "PORT" else v)
        self.xs.write(f"{self.fe}/state", "3")
        until(lambda: self.xs.read(f"{self.be}/state") in ("4", "5"), self.logs)
        return str(self.xs.read(f"{self.be}/state"))

    def close(self) -> None:
        self.backend.stop()
        for s in self.socks:
            s.close()
        self.xs.close()


@pytest.fixture(params=sorted(FRONT_NODES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def front(dh: DomainHarness, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Frontend] = []

    def build(fifo: bool) -> Frontend:
        made.append(Frontend(dh, kind, tmp_path, fifo))
        return made[-1]

    yield build
    for f in made:
        f.close()


def test_connects_with_a_port_of_the_2_level_abi(front: Callable[[bool], Frontend]) -> None:
    f = front(False)
    port = f.offer()
    assert f.connect(port) == "4"
    assert f.dom.evtchn.ports[port].state == abi.EVTCHNSTAT_interdomain


def test_fifo_port_above_4096_is_taken(front: Callable[[bool], Frontend]) -> None:
    f = front(True)
    port = f.offer_high()
    assert port == HIGH_PORT > abi.EVTCHN_2L_NR_CHANNELS
    assert f.connect(port) == "4", f.logs
    assert f.dom.evtchn.ports[port].state == abi.EVTCHNSTAT_interdomain
    assert f.xs.read(f"{f.be}/error") is None


@pytest.mark.parametrize(("fifo", "port"), [
    (True, None),           # the first port past the ones the FIFO domain holds (its buckets of 64)
    (True, 1 << 17),        # beyond what the FIFO ABI names
    (False, HIGH_PORT),     # beyond the 2-level ABI's 4096, although max_event_channels allows it
])
def test_port_beyond_the_domains_limit_is_refused(front: Callable[[bool], Frontend], fifo: bool,
                                                  port: int | None) -> None:
    f = front(fifo)
    if fifo:
        f.offer_high()
    if port is None:
        port = f.dom.evtchn.valid_ports
        assert HIGH_PORT < port <= MAX_PORT
    f.offer(port)  # put where the evtchn layer never allocates one
    assert f.connect(port) == "5"
    # refused by the bound on the node, not later by the binding ("cannot connect ...")
    assert "gave no valid" in str(f.xs.read(f"{f.be}/error"))
    assert f.dom.evtchn.ports[port].state == abi.EVTCHNSTAT_unbound


@pytest.mark.parametrize("kind", ["vif", "console"])  # a vbd has no socket to domain 0
def test_a_new_domain_0s_socket_replaces_the_old(front: Callable[[bool], Frontend], kind: str) -> None:
    f = front(False)
    backend = f.backend
    assert isinstance(backend, (VifBackend, ChannelBackend))
    old = backend.sock
    new, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        backend.replace_socket(new)
        assert backend.sock is new and not new.getblocking() and old.fileno() == -1
        if kind == "vif":  # netback's own part of taking a socket: its buffers, as the kernel grants them
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, fr.SOCKET_BUFFER)
            assert new.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == \
                peer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        peer.close()
