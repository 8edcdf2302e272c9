"""Domain 0's side of vifs (backends/net/manager.py) against the real xenstored and switch: the nodes
libxl writes and their permissions, devids and MACs, the switch ports, detach, a domain's end, adoption.
The domain is a stand-in that records what its netback would be handed."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from unit_support import make_elf

from hyperdisco.backends.net import frame
from hyperdisco.backends.net import uplink as uplink_mod
from hyperdisco.backends.net.manager import NetworkDevices, VifConfig, derive_mac, guest_cmdline
from hyperdisco.backends.xenstore import Xenstored
from hyperdisco.core.domain import DomainConfig
from hyperdisco.dom0.host import Host
from hyperdisco.errors import ConfigError, HyperdiscoError
from hyperdisco.loader.elf import parse_kernel


class FakeDomain:
    def __init__(self, domid: int, name: str, fail: bool = False) -> None:
        self.domid, self.name, self.fail = domid, name, fail
        self.socks: dict[int, socket.socket] = {}
        self.args: dict[int, dict[str, Any]] = {}
        self.detached: list[tuple[int, float]] = []

    def attach_vif(self, devid: int, args: dict[str, Any], fd: int) -> None:
        if self.fail:
            os.close(fd)
            raise HyperdiscoError("hyperdisco: no netback")
        old = self.socks.pop(devid, None)
        if old is not None:
            old.close()
        self.socks[devid] = socket.socket(fileno=fd)
        self.args[devid] = args

    def detach_vif(self, devid: int, wait_s: float) -> bool:
        self.detached.append((devid, wait_s))
        self.socks.pop(devid).close()
        return True

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SimpleNamespace]:
    logs: list[str] = []
    xsd = Xenstored(logs.append)
    xs = xsd.local_connection()
    host = SimpleNamespace(xs=xs, log=logs.append, run_dir=tmp_path)
    net = NetworkDevices(host)
    doms: list[FakeDomain] = []

    def dom(domid: int, name: str, **kw: Any) -> FakeDomain:
        d = FakeDomain(domid, name, **kw)
        xs.mkdir(f"/local/domain/{domid}/device")
        doms.append(d)
        return d

    yield SimpleNamespace(xs=xs, net=net, logs=logs, dom=dom)
    net.close()
    for d in doms:
        d.close()


def test_nodes_and_permissions(env: SimpleNamespace) -> None:
    d = env.dom(3, "web")
    cfg = VifConfig(network="lan0", mac="00:16:3E:00:00:01", ips=("10.0.0.1/24",), rate=(62500, 50000))
    [ready] = env.net.prepare("web", [cfg], 3)
    assert ready.devid == 0 and ready.mac == "00:16:3e:00:00:01"
    assert env.net.attach(d, ready) == 0
    xs = env.xs
    be, fe = "/local/domain/0/backend/vif/3/0", "/local/domain/3/device/vif/0"
    assert xs.get_perms(be) == ["n0", "r3"] and xs.get_perms(fe) == ["n3", "r0"]
    back = {k: xs.read(f"{be}/{k}") for k in xs.directory(be)}
    assert back == {"frontend": fe, "frontend-id": "3", "online": "1", "state": "1",
                    "mac": "00:16:3e:00:00:01", "bridge": "lan0", "handle": "0", "type": "vif", "mtu": "1500",
                    "ip": "10.0.0.1/24", "rate": "62500,50000"}
    front = {k: xs.read(f"{fe}/{k}") for k in xs.directory(fe)}
    assert front == {"backend": be, "backend-id": "0", "state": "1", "handle": "0",
                     "mac": "00:16:3e:00:00:01"}
    assert d.args[0] == {"mac": "00:16:3e:00:00:01", "handle": 0}
    [port] = env.net.switches.get("lan0").ports()
    assert port.mac == bytes.fromhex("00163e000001") and port.ips == frozenset({"10.0.0.1"})


def test_devids_macs_and_frames_between_domains(env: SimpleNamespace) -> None:
    a, b = env.dom(1, "a"), env.dom(2, "b")
    for dom in (a, b):
        for cfg in env.net.prepare(dom.name, [VifConfig(network="n"), VifConfig(network="other")]):
            env.net.attach(dom, cfg)
    assert sorted(a.socks) == [0, 1] and sorted(b.socks) == [0, 1]
    macs = {a.args[0]["mac"], a.args[1]["mac"], b.args[0]["mac"], b.args[1]["mac"]}
    assert len(macs) == 4 and all(m.startswith("00:16:3e:") for m in macs)
    assert a.args[0]["mac"] == derive_mac("a", 0)
    # while a's vif lives, another domain called "a" (a restart being built) gets the next candidate
    assert env.net.prepare("a", [VifConfig()])[0].mac == derive_mac("a", 0, 1)
    # a broadcast from a on network n reaches b's vif on n (through the real switch)
    src = frame.mac_bytes(a.args[0]["mac"])
    eth = b"\xff" * 6 + src + b"\x08\x06" + bytes(28)
    a.socks[0].send(frame.pack(frame.PLAIN, eth))
    b.socks[0].settimeout(5)
    meta, got = frame.parse(b.socks[0].recv(frame.MAX_MESSAGE))
    assert bytes(got) == eth
    stats = {s["devid"]: s for s in env.net.stats(1)}
    assert stats[0]["tx_packets"] == 1 and stats[0]["network"] == "n"
    # a hot-added vif takes the next devid
    assert env.net.attach(a, VifConfig(network="n")) == 2


def test_mac_in_use_and_collisions(env: SimpleNamespace) -> None:
    a = env.dom(1, "a")
    env.net.attach(a, VifConfig(mac="00:16:3e:00:00:05"))
    with pytest.raises(ConfigError, match="already used"):
        env.net.prepare("b", [VifConfig(mac="00:16:3E:00:00:05")])
    taken = derive_mac("b", 0)
    env.net.attach(a, VifConfig(mac=taken))
    [cfg] = env.net.prepare("b", [VifConfig()])
    assert cfg.mac != taken and cfg.mac == derive_mac("b", 0, 1)
    with pytest.raises(ConfigError, match="already has a vif 0"):
        env.net.prepare("a", [VifConfig(devid=0)], 1)


def test_attach_failure_leaves_nothing(env: SimpleNamespace) -> None:
    d = env.dom(4, "x", fail=True)
    with pytest.raises(HyperdiscoError, match="no netback"):
        env.net.attach(d, VifConfig(network="n"))
    assert env.xs.read("/local/domain/4/device/vif/0/state") is None
    assert env.xs.read("/local/domain/0/backend/vif/4") is None
    assert env.net.stats(4) == [] and env.net.switches.get("n").ports() == []


def test_detach_by_devid_and_mac(env: SimpleNamespace) -> None:
    d = env.dom(5, "y")
    two = [VifConfig(network="n"), VifConfig(network="n", mac="00:16:3e:0a:0b:0c")]
    for cfg in env.net.prepare("y", two):
        env.net.attach(d, cfg)
    assert env.net.detach(d, "0", 3.0) is True and d.detached == [(0, 3.0)]
    assert env.xs.read("/local/domain/0/backend/vif/5/0/state") is None
    assert env.xs.read("/local/domain/5/device/vif/0/state") is None
    assert env.net.detach(d, "00:16:3E:0A:0B:0C") is True
    assert env.xs.read("/local/domain/0/backend/vif/5") is None  # the domain's directory goes with the last
    assert env.net.switches.get("n").ports() == []
    with pytest.raises(ConfigError, match="has no vif"):
        env.net.detach(d, "7")


def test_close_domain_and_adopt(env: SimpleNamespace) -> None:
    d = env.dom(6, "z")
    env.net.attach(d, VifConfig(network="n", ips=("10.1.0.2",)))
    records = [c.to_record() for c in env.net.configs(6)]
    assert [VifConfig.from_record(r) for r in records] == env.net.configs(6)
    env.net.close_domain(6)
    assert env.xs.read("/local/domain/0/backend/vif/6") is None and env.net.switches.get("n").ports() == []
    # a new domain 0 re-plugs it from its record (with a bad record beside it)
    fresh = NetworkDevices(SimpleNamespace(xs=env.xs, log=env.logs.append, run_dir=None))
    try:
        fresh.adopt(d, [*records, {"mac": 7}])
        assert [c.mac for c in fresh.configs(6)] == [records[0]["mac"]]
        assert env.xs.read("/local/domain/0/backend/vif/6/0/bridge") == "n"
        [port] = fresh.switches.get("n").ports()
        assert port.ips == frozenset({"10.1.0.2"})
        assert any("not usable" in line for line in env.logs)
    finally:
        fresh.close()


def test_guest_cmdline() -> None:
    base = "console=hvc0"
    assert guest_cmdline(base, []) == base
    assert guest_cmdline(base, [VifConfig(ips=("10.0.0.5/16", "10.0.0.6"))]) == base + " ip=10.0.0.5/16"
    assert guest_cmdline(base, [VifConfig(ips=("10.0.0.5",))]) == base + " ip=10.0.0.5/24"
    assert guest_cmdline(base, [VifConfig(uplink="passt")]) == base + " ip=dhcp"
    # a vif without its own passt gets no lease from other vifs' passts on its network
    assert guest_cmdline(base, [VifConfig(network="u")]) == base
    assert guest_cmdline(base, [VifConfig(uplink="tap:t0")]) == base
    assert guest_cmdline(base + " ip=1.2.3.4/8", [VifConfig(uplink="passt")]) == base + " ip=1.2.3.4/8"


def test_records_are_checked() -> None:
    for bad in ({"mac": "01:00:5e:00:00:01"}, {"network": "a/b"}, {"ips": ["300.1.1.1"]}, {"devid": True},
                {"rate": [0, 1]}, {"uplink": "tap:../x"}, {"hostfwd": [["sctp", 1, 2]]}, "x"):
        with pytest.raises((ValueError, TypeError)):
            VifConfig.from_record(bad)


def test_host_creates_and_destroys_a_domain_with_vifs(tmp_path: Path) -> None:
    """Host wiring with a real domain process (scripted engine): vifs attached during create, the
    kernel command line's ip=, everything gone with the domain."""
    host = Host("scripted", run_dir=str(tmp_path))
    try:
        config = DomainConfig("v", parse_kernel(make_elf()), None, "console=hvc0 scripted=halt", 32,
                              record={"name": "v"})
        dom = host.create(config, vifs=[VifConfig(network="n", ips=("10.0.0.7/24",)), VifConfig()])
        assert dom.config.cmdline.endswith(" ip=10.0.0.7/24")
        assert [r["devid"] for r in dom.config.record["net"]] == [0, 1]
        assert host.xs.read("/local/domain/0/backend/vif/1/1/bridge") == "xenbr0"
        assert [v["network"] for v in host.net.stats(1)] == ["n", "xenbr0"]
        assert host.detach_vif(dom, 1, 0.2) in (True, False)  # no guest driver to close it
        assert [r["devid"] for r in dom.config.record["net"]] == [0]
        host.destroy(dom)
        assert host.xs.read("/local/domain/0/backend/vif/1") is None and host.net.stats(1) == []
    finally:
        host.close()


# -- uplinks: one passt per vif that asks for one -----------------------------------------------------------

GW = bytes.fromhex("9a559a559a55")   # every passt's gateway MAC


class FakeDevice:
    """A stand-in for passt's stream: a SOCK_SEQPACKET pair, the test holds the far end."""

    def __init__(self) -> None:
        self.far, self.sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        self.far.settimeout(3.0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_frames(self) -> list[tuple[frame.Meta, bytes]]:
        out: list[tuple[frame.Meta, bytes]] = []
        while True:
            try:
                data = self.sock.recv(frame.MAX_FRAME)
            except BlockingIOError:
                return out
            if not data:
                raise EOFError("closed")
            out.append((frame.Meta(frame.DATA_VALIDATED), data))

    def write_frame(self, meta: frame.Meta, data: bytes) -> bool:
        self.sock.send(data)
        return True

    def close(self) -> None:
        self.sock.close()


class FakePasst:
    """What make_uplink("passt", ...) returns, recorded in `started`."""

    started: list[FakePasst] = []

    def __init__(self, network: Any, run_dir: Path, forwards: list[tuple[str, int, int]], log: Any,
                 owner: Any = None) -> None:
        self.network, self.forwards, self.owner = network, forwards, owner
        self.device = FakeDevice()
        self.port: Any = None
        self.closed = False

    def start(self) -> bool:
        self.port = self.network.add_device(f"uplink:passt:{self.owner.name}", self.device, owner=self.owner)
        FakePasst.started.append(self)
        return True

    def close(self) -> None:
        self.closed = True
        if self.port is not None:
            self.network.remove_port(self.port)
            self.port = None


@pytest.fixture
def fake_passt(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakePasst]]:
    def make(kind: str, network: Any, run_dir: Path, forwards: list[tuple[str, int, int]], log: Any,
             owner: Any = None) -> Any:
        assert kind == "passt" and owner is not None
        return FakePasst(network, run_dir, forwards, log, owner)

    FakePasst.started = []
    monkeypatch.setattr(uplink_mod, "make_uplink", make)
    yield FakePasst.started


def eth(dst: bytes, src: str, marker: bytes = b"") -> bytes:
    return frame.pack(frame.PLAIN, dst + frame.mac_bytes(src) + b"\x88\xb5" + marker.ljust(46, b"."))


def quiet(sock: socket.socket, wait: float = 0.2) -> bool:
    time.sleep(wait)
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        sock.recv(frame.MAX_MESSAGE)
        return False
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)


def until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        time.sleep(0.01)
    return cond()


def test_each_passt_vif_has_its_own_uplink_that_sees_only_its_frames(
        env: SimpleNamespace, fake_passt: list[FakePasst]) -> None:
    a, b, c = env.dom(1, "a"), env.dom(2, "b"), env.dom(3, "c")
    env.net.attach(a, VifConfig(network="n", uplink="passt", hostfwd=(("tcp", 8081, 80),)))
    env.net.attach(b, VifConfig(network="n", uplink="passt", hostfwd=(("tcp", 8082, 80),)))
    env.net.attach(c, VifConfig(network="n"))
    pa, pb = fake_passt
    assert pa.forwards == [("tcp", 8081, 80)] and pb.forwards == [("tcp", 8082, 80)]
    assert pa.owner.name == "d1.0" and pb.owner.name == "d2.0"
    assert sorted(p.name for p in env.net.switches.get("n").ports()) == [
        "d1.0", "d2.0", "d3.0", "uplink:passt:d1.0", "uplink:passt:d2.0"]
    sa, sb, sc = a.socks[0], b.socks[0], c.socks[0]
    for s in (sa, sb, sc):
        s.settimeout(3.0)
    mac_a, mac_b, mac_c = a.args[0]["mac"], b.args[0]["mac"], c.args[0]["mac"]
    # a's broadcast: the other vifs and a's own passt, never b's
    sa.send(msg := eth(b"\xff" * 6, mac_a, b"bcast-a"))
    assert sb.recv(4096) == msg and sc.recv(4096) == msg and pa.device.far.recv(4096) == msg[8:]
    assert quiet(pb.device.far)
    # a's unknown unicast (the gateway): its own passt only
    sa.send(msg := eth(GW, mac_a, b"to-gw-a"))
    assert pa.device.far.recv(4096) == msg[8:]
    assert quiet(sb) and quiet(sc) and quiet(pb.device.far)
    # another vif's frames (c has no uplink) never reach a passt
    sc.send(msg := eth(GW, mac_c, b"to-gw-c"))
    assert sa.recv(4096) == msg and sb.recv(4096) == msg
    assert quiet(pa.device.far) and quiet(pb.device.far)
    # each passt's frames (same gateway MAC) reach its owner alone
    pa.device.far.send(msg := eth(b"\xff" * 6, frame.mac_text(GW), b"from-pa")[8:])
    pb.device.far.send(msg2 := eth(frame.mac_bytes(mac_b), frame.mac_text(GW), b"from-pb")[8:])
    assert sa.recv(4096)[8:] == msg and sb.recv(4096)[8:] == msg2
    assert quiet(sa) and quiet(sb) and quiet(sc)
    # a's passt goes with its vif, b's stays
    env.net.detach(a, 0)
    assert pa.closed and not pb.closed
    assert "uplink:passt:d1.0" not in [p.name for p in env.net.switches.get("n").ports()]
    env.net.close_domain(2)
    assert pb.closed and env.net.switches.get("n").ports()[0].name == "d3.0"
    assert any("d2: vif 0: uplink passt hostfwd tcp:8082:80" in line for line in env.logs)


def test_a_host_port_is_forwarded_to_one_vif_only(env: SimpleNamespace, fake_passt: list[FakePasst]) -> None:
    a, b = env.dom(1, "a"), env.dom(2, "b")
    env.net.attach(a, VifConfig(network="n", uplink="passt", hostfwd=(("tcp", 8081, 80),)))
    clash = VifConfig(network="m", uplink="passt", hostfwd=(("udp", 8081, 53), ("tcp", 8081, 22)))
    with pytest.raises(ConfigError) as err:
        env.net.prepare("b", [clash])
    assert str(err.value) == ("hyperdisco: b: hostfwd tcp:8081:22: host port tcp 8081 is already forwarded "
                              "(to d1 vif 0)")
    # a hot-plugged vif with devid and mac chosen (no prepare) is checked too, and leaves nothing
    with pytest.raises(ConfigError, match="already forwarded"):
        env.net.attach(b, replace(clash, devid=0, mac="00:16:3e:00:00:42"))
    assert env.net.configs(2) == [] and len(fake_passt) == 1
    # two vifs of one domain asking for the same port
    two = [VifConfig(network="x", uplink="passt", hostfwd=(("tcp", 9000, 80),)),
           VifConfig(network="y", uplink="passt", hostfwd=(("tcp", 9000, 81),))]
    with pytest.raises(ConfigError, match="host port tcp 9000 is already forwarded"):
        env.net.prepare("b", two)
    # the same port over UDP is another port; a port freed by its vif is free again
    env.net.attach(b, VifConfig(network="n", uplink="passt", hostfwd=(("udp", 8081, 53),)))
    env.net.close_domain(1)
    env.net.attach(b, VifConfig(network="n", uplink="passt", hostfwd=(("tcp", 8081, 80),)))
    assert len(fake_passt) == 3


def test_a_tap_network_and_passt_vifs_do_not_mix(env: SimpleNamespace, fake_passt: list[FakePasst]) -> None:
    a = env.dom(1, "a")
    env.net.attach(a, VifConfig(network="n", uplink="passt"))
    with pytest.raises(ConfigError, match="already has uplink passt"):
        env.net.prepare("b", [VifConfig(network="n", uplink="tap:t0")])
    with pytest.raises(ConfigError, match="different uplinks"):
        env.net.prepare("b", [VifConfig(network="m", uplink="passt"),
                              VifConfig(network="m", uplink="tap:t0")])
    env.net.prepare("b", [VifConfig(network="n", uplink="passt"), VifConfig(network="n")])  # fine


def test_adopted_vifs_get_their_passt_again(env: SimpleNamespace, fake_passt: list[FakePasst]) -> None:
    d = env.dom(6, "z")
    env.net.attach(d, VifConfig(network="n", uplink="passt", hostfwd=(("tcp", 8086, 80),)))
    records = [c.to_record() for c in env.net.configs(6)]
    env.net.close_domain(6)
    assert fake_passt[0].closed
    fresh = NetworkDevices(SimpleNamespace(xs=env.xs, log=env.logs.append, run_dir=None))
    try:
        fresh.adopt(d, records)
        assert len(fake_passt) == 2 and fake_passt[1].forwards == [("tcp", 8086, 80)]
        [port] = [p for p in fresh.switches.get("n").ports() if p.sock is not None]
        assert fake_passt[1].owner is port and port.owned == (fake_passt[1].port,)
    finally:
        fresh.close()
    assert fake_passt[1].closed


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed")
def test_two_real_passts_on_one_network_each_answer_their_own_vif(env: SimpleNamespace) -> None:
    from test_net_uplink import dhcp_discover, dhcp_offer_for, free_port

    a, b = env.dom(1, "a"), env.dom(2, "b")
    ports = free_port(), free_port()
    for dom, port in zip((a, b), ports, strict=True):
        env.net.attach(dom, VifConfig(network="n", uplink="passt", hostfwd=(("tcp", port, 80),)))
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=2):   # each passt bound its own port
            pass
    sa, sb = a.socks[0], b.socks[0]
    sa.settimeout(0.5)
    mac_a = frame.mac_bytes(a.args[0]["mac"])
    offered = False
    deadline = time.monotonic() + 5
    while not offered and time.monotonic() < deadline:
        sa.send(frame.pack(frame.Meta(frame.CSUM_BLANK), dhcp_discover(0x77, mac_a)))
        try:
            while not offered:
                offered = dhcp_offer_for(sa.recv(frame.MAX_MESSAGE), 0x77)
        except TimeoutError:
            pass
    assert offered, env.logs
    # b saw a's broadcasts, but no offer from anybody's passt
    sb.settimeout(0.0)
    seen = []
    try:
        while True:
            seen.append(sb.recv(frame.MAX_MESSAGE))
    except BlockingIOError:
        pass
    assert seen and not any(dhcp_offer_for(m, 0x77) for m in seen)
    env.net.close_domain(1)
    env.net.close_domain(2)
    for port in ports:                                                   # both passts gone
        assert until(lambda p=port: _refused(p)), port


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True
