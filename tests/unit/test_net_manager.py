"""Domain 0's side of vifs (backends/net/manager.py) against the real xenstored and switch: the nodes
libxl writes and their permissions, devids and MACs, the switch ports, detach, a domain's end, adoption.
The domain is a stand-in that records what its netback would be handed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from unit_support import make_elf

from hyperdisco.backends.net import frame
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
    assert guest_cmdline(base, [VifConfig(network="u")], ["u"]) == base + " ip=dhcp"
    assert guest_cmdline(base, [VifConfig(network="u")]) == base
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
