"""The network verbs' requests (network_attach, network_detach, network_list, create's vifs) and their
command-line forms: checked before anything acts on them, one-line errors."""

from __future__ import annotations

import json

import pytest

from hyperdisco.backends.net.manager import VifConfig
from hyperdisco.cli.main import build_parser
from hyperdisco.errors import HyperdiscoError
from hyperdisco.toolstack.daemon import _vif_config
from hyperdisco.toolstack.requests import RequestError, parse_request


def req(**kw: object) -> bytes:
    return json.dumps(kw).encode() + b"\n"


def test_good_requests() -> None:
    assert parse_request(req(op="network_attach", dom="web", vif={"bridge": "lan0"})) == (
        "network_attach", {"dom": "web", "vif": {"bridge": "lan0"}})
    assert parse_request(req(op="network_detach", dom=1, dev="2")) == ("network_detach", {"dom": 1, "dev": 2})
    assert parse_request(req(op="network_detach", dom=1, dev=0, timeout=3)) == (
        "network_detach", {"dom": 1, "dev": 0, "timeout": 3.0})
    mac = "00:16:3E:00:00:01"
    assert parse_request(req(op="network_detach", dom=1, dev=mac))[1]["dev"] == mac
    assert parse_request(req(op="network_list", dom="3")) == ("network_list", {"dom": 3})


@pytest.mark.parametrize("line", [
    req(op="network_attach", dom="web"), req(op="network_attach", dom="web", vif="bridge=x"),
    req(op="network_attach", dom="web", vif={}, extra=1), req(op="network_detach", dom="web"),
    req(op="network_detach", dom="web", dev=True), req(op="network_detach", dom="web", dev=-1),
    req(op="network_detach", dom="web", dev=70000), req(op="network_detach", dom="web", dev="eth0"),
    req(op="network_detach", dom="web", dev="123456"), req(op="network_detach", dom="web", dev=1.0),
    req(op="network_detach", dom="web", dev="00:16:3e:00:00:01\u0000"), req(op="network_list"),
    req(op="network_list", dom=True),
])
def test_bad_requests(line: bytes) -> None:
    with pytest.raises(RequestError) as e:
        parse_request(line)
    assert "\n" not in str(e.value) and str(e.value).startswith("hyperdisco:")


def test_vif_objects() -> None:
    assert _vif_config({"bridge": "lan0", "ip": "10.0.0.2/24"}, "create") == VifConfig(
        network="lan0", ips=("10.0.0.2/24",))
    for bad in ([], {"bridge": 1}, {1: "x"}, {"colour": "red"}, {"mac": "zz"}, {"x" * 5000: "y"},
                {"bridge": "a\0b"}, {f"k{i}": "v" for i in range(40)}):
        with pytest.raises(HyperdiscoError) as e:
            _vif_config(bad, "create")
        assert "\n" not in str(e.value) and str(e.value).startswith("hyperdisco: create")


def test_command_lines() -> None:
    p = build_parser()
    a = p.parse_args(["network-attach", "web", "bridge=lan0", "ip=10.0.0.2/24"])
    assert (a.dom, a.params) == ("web", ["bridge=lan0", "ip=10.0.0.2/24"])
    a = p.parse_args(["network-detach", "web", "00:16:3e:00:00:01", "--timeout", "2"])
    assert (a.dom, a.dev, a.timeout) == ("web", "00:16:3e:00:00:01", 2.0)
    assert p.parse_args(["network-list", "a", "b"]).doms == ["a", "b"]
    a = p.parse_args(["run", "--net"])
    assert a.net == "user" and a.hostfwd == []
    a = p.parse_args(["run", "--net", "lan", "--hostfwd", "tcp:2222:22", "--hostfwd", "udp:53:53"])
    assert a.net == "lan" and a.hostfwd == ["tcp:2222:22", "udp:53:53"]
    assert p.parse_args(["run"]).net is None
    assert p.parse_args(["top", "-n"]).networks
