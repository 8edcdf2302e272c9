"""The vbd handshake against the real xenstored and a domain that never runs: the test plays blkfront."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from unit_support import DomainHarness

from hyperdisco.backends.blkback import BlockDevices, VbdHost, abi
from hyperdisco.backends.xenstore import Xenstored
from hyperdisco.core.evtchn import Port
from hyperdisco.core.grant import GRANT_ENTRY_V1, GTF_permit_access
from hyperdisco.errors import HyperdiscoError
from hyperdisco.toolstack.xlcfg import DiskSpec
from hyperdisco.xen import abi as xen_abi

GRANT_GPFN = 0x3000
RING_GPA = 0x500000
DATA_GPA = 0x600000


def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class InProcessVbds:
    """The domain's side of its vbds run in this process: what a domain process does with the descriptors
    domain 0 hands it over the channel (dup'ed here as SCM_RIGHTS would)."""

    def __init__(self, dom: Any, xsd: Xenstored, log: Callable[[str], None]) -> None:
        self.domid, self.name = dom.domid, dom.name
        self.vbds = VbdHost(dom, xsd, log)

    def attach_vbd(self, devid: int, args: dict[str, Any], records: list[tuple[str, str, bool]],
                   fds: list[int]) -> None:
        self.vbds.attach(devid, args, [(*r, os.dup(fd)) for r, fd in zip(records, fds, strict=True)])

    def detach_vbd(self, devid: int, wait_s: float) -> bool:
        return self.vbds.detach(devid, wait_s)


class Front:
    def __init__(self, dh: DomainHarness, tmp_path: Path, readonly: bool = False) -> None:
        self.dh = dh
        self.logs: list[str] = []
        self.xsd = Xenstored(self.logs.append)
        self.xs = self.xsd.local_connection()
        self.hv: Any = SimpleNamespace(xenstored=self.xsd, xs=self.xs, log=self.logs.append)
        self.blk = BlockDevices(self.hv)
        self.target = InProcessVbds(dh.dom, self.xsd, self.logs.append)
        self.img = tmp_path / "disk.img"
        self.img.write_bytes(bytes(1 << 20))
        self.spec = DiskSpec(target=str(self.img), vdev="xvdb", access="ro" if readonly else "rw")
        self.devid = self.blk.attach(self.target, self.spec)
        self.be = f"/local/domain/0/backend/vbd/1/{self.devid}"
        self.fe = f"/local/domain/1/device/vbd/{self.devid}"
        mem = dh.dom.memory
        arg = dh.put(xen_abi.ADD_TO_PHYSMAP, xen_abi.DOMID_SELF, 0, xen_abi.XENMAPSPACE_grant_table, 0,
                     GRANT_GPFN)
        assert dh.call("memory_op", xen_abi.XENMEM_add_to_physmap, arg) == 0
        self.table = GRANT_GPFN << 12
        for ref, gpa in ((1, RING_GPA), (2, DATA_GPA)):
            mem.pack(GRANT_ENTRY_V1, self.table + ref * 8, GTF_permit_access, 0, gpa >> 12)
        mem.pack(struct.Struct("<IIII"), RING_GPA, 0, 1, 0, 1)
        self.port = dh.dom.evtchn.alloc(Port(xen_abi.EVTCHNSTAT_unbound, remote_dom=0))

    def be_state(self) -> str | None:
        return self.xs.read(f"{self.be}/state")

    def connect(self) -> None:
        until(lambda: self.be_state() == "2")
        for k, v in (("ring-ref", "1"), ("event-channel", str(self.port)), ("protocol", "x86_64-abi"),
                     ("state", "3")):
            self.xs.write(f"{self.fe}/{k}", v)
        until(lambda: self.be_state() == "4")


@pytest.fixture
def front(dh: DomainHarness, tmp_path: Path) -> Iterator[Front]:
    f = Front(dh, tmp_path)
    yield f
    f.target.vbds.close()
    f.blk.close_domain(1)


def test_nodes_and_permissions(front: Front) -> None:
    xs = front.xs
    until(lambda: front.be_state() == "2")
    assert front.devid == 51728
    assert xs.get_perms(front.be) == ["n0", "r1"] and xs.get_perms(front.fe) == ["n1", "r0"]
    fe = {k: xs.read(f"{front.fe}/{k}") for k in ("backend", "backend-id", "virtual-device", "device-type")}
    assert fe == {"backend": front.be, "backend-id": "0", "virtual-device": "51728", "device-type": "disk"}
    be = {k: xs.read(f"{front.be}/{k}") for k in ("frontend", "frontend-id", "params", "mode", "sectors",
                                                   "sector-size", "info", "feature-flush-cache",
                                                   "feature-discard", "feature-max-indirect-segments")}
    assert be == {"frontend": front.fe, "frontend-id": "1", "params": str(front.img), "mode": "w",
                  "sectors": "2048", "sector-size": "512", "info": "0", "feature-flush-cache": "1",
                  "feature-discard": "1", "feature-max-indirect-segments": "256"}


def test_connect_serve_close_reconnect(front: Front) -> None:
    dom = front.dh.dom
    front.connect()
    p = dom.evtchn.ports[front.port]
    assert p.state == xen_abi.EVTCHNSTAT_interdomain and p.on_send is not None
    # one write request, signalled the way the guest's EVTCHNOP_send reaches the backend
    mem = dom.memory
    mem.write(DATA_GPA, b"Z" * 4096)
    slot = RING_GPA + abi.RING_HEADER
    mem.write(slot, abi.REQUEST_HEAD.pack(abi.OP_WRITE, 1, 0, 42, 8) + abi.SEGMENT.pack(2, 0, 7))
    mem.set_u32(RING_GPA + abi.REQ_PROD, 1)
    p.on_send()
    until(lambda: mem.u32(RING_GPA + abi.RSP_PROD) == 1)
    assert abi.RESPONSE.unpack(mem.read(slot, 16)) == (42, abi.OP_WRITE, 0)
    assert front.port in dom.evtchn._queue  # the frontend was notified
    until(lambda: front.img.read_bytes()[8 * 512:16 * 512] == b"Z" * 4096)
    rows = front.blk.rows(front.target)
    assert rows[0]["state"] == 3 and rows[0]["evtch"] == front.port and rows[0]["ringref"] == 1
    # the frontend closes: so do we, and its port is unbound again (still offered to domain 0)
    front.xs.write(f"{front.fe}/state", "5")
    until(lambda: front.be_state() == "5")
    assert p.state == xen_abi.EVTCHNSTAT_unbound and p.on_send is None
    front.xs.write(f"{front.fe}/state", "6")
    until(lambda: front.be_state() == "6")
    # and comes back (module reloaded): InitWait again, then connected again
    front.xs.write(f"{front.fe}/state", "1")
    until(lambda: front.be_state() == "2")
    mem.pack(struct.Struct("<IIII"), RING_GPA, 0, 1, 0, 1)
    front.connect()


@pytest.mark.parametrize(("key", "value"), [("ring-ref", "nonsense"), ("ring-ref", "77"),
                                            ("event-channel", "999"), ("protocol", "x86_32-abi"),
                                            ("multi-queue-num-queues", "4")])
def test_bad_frontend_parameters_close_the_device(front: Front, key: str, value: str) -> None:
    until(lambda: front.be_state() == "2")
    params = {"ring-ref": "1", "event-channel": str(front.port), "protocol": "x86_64-abi", key: value}
    for k, v in params.items():
        front.xs.write(f"{front.fe}/{k}", v)
    front.xs.write(f"{front.fe}/state", "3")
    until(lambda: front.be_state() == "5")
    assert front.xs.read(f"{front.be}/error")
    assert front.dh.dom.evtchn.ports[front.port].state == xen_abi.EVTCHNSTAT_unbound


def test_ring_overflow_disconnects(front: Front) -> None:
    front.connect()
    mem = front.dh.dom.memory
    mem.set_u32(RING_GPA + abi.REQ_PROD, 1000)
    front.dh.dom.evtchn.ports[front.port].on_send()  # type: ignore[misc]
    until(lambda: front.be_state() == "5")
    assert any("ring broken" in ln for ln in front.logs)


def test_detach(front: Front) -> None:
    front.connect()
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(front.blk.detach(front.target, "xvdb", timeout=5)))
    t.start()
    until(lambda: front.be_state() == "5")  # the toolstack asks the frontend to close
    front.xs.write(f"{front.fe}/state", "6")
    t.join(10)
    assert done == [True]
    assert front.xs.read(f"{front.be}/state") is None and front.xs.read(f"{front.fe}/state") is None
    assert front.blk.rows(front.target) == []
    with pytest.raises(HyperdiscoError, match="no disk"):
        front.blk.detach(front.target, "xvdb")
    front.blk.attach(front.target, front.spec)  # the image was closed and unlocked


def test_second_writer_and_missing_image(front: Front, tmp_path: Path) -> None:
    with pytest.raises(HyperdiscoError, match="in use"):
        front.blk.attach(front.target, DiskSpec(target=str(front.img), vdev="xvdc"))
    with pytest.raises(HyperdiscoError, match="does not exist"):
        front.blk.open_images([DiskSpec(target=str(tmp_path / "nope"), vdev="xvdc")])
    with pytest.raises(HyperdiscoError, match="already has"):
        front.blk.attach(front.target, DiskSpec(target=str(tmp_path / "nope"), vdev="xvdb"))


@pytest.mark.parametrize("offered", [True, False])
def test_persistent_grants_only_when_both_ends_offer_them(
        dh: DomainHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offered: bool) -> None:
    # blkfront always writes its own wish (feature-persistent=1); the backend must not hold grants the
    # frontend will revoke after each request because we told it we would not (blkif.h, as Linux blkback)
    from hyperdisco.backends.blkback import device
    monkeypatch.setattr(device, "OFFER_PERSISTENT", offered)
    f = Front(dh, tmp_path)
    try:
        until(lambda: f.be_state() == "2")
        assert f.xs.read(f"{f.be}/feature-persistent") == ("1" if offered else "0")
        f.xs.write(f"{f.fe}/feature-persistent", "1")
        f.connect()
        ring = f.target.vbds.devices()[0].ring
        assert ring is not None and ring.persistent is offered
    finally:
        f.target.vbds.close()
        f.blk.close_domain(1)
