"""vif specs (xl-network-configuration(5) plus hyperdisco's uplink and hostfwd): keys, MAC forms, ip,
rate, port forwards, one-line errors, and the MACs derived for vifs without one."""

from __future__ import annotations

import pytest

from hyperdisco.backends.net.manager import VifConfig, derive_mac
from hyperdisco.errors import ConfigError
from hyperdisco.toolstack.xlcfg import parse_text, parse_vif


def error_of(spec: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_vif(spec, "t.cfg:3")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("hyperdisco: t.cfg:3: vif: ")
    return msg


def test_full_spec() -> None:
    v = parse_vif("mac=00:16:3E:00:00:01, bridge=lan0, ip=10.0.0.1/24 10.0.0.9, rate=10Mb/s, "
                  "uplink=passt, hostfwd=tcp:8080:80;udp:5353:53, type=vif, model=e1000, "
                  "script=vif-bridge, vifname=web0, backend=0")
    assert (v.mac, v.bridge, v.ip, v.uplink, v.vifname) == ("00:16:3e:00:00:01", "lan0",
                                                           ["10.0.0.1/24", "10.0.0.9"], "passt", "web0")
    assert v.rate == (62500, 50000)  # 1.25 MB/s, replenished every 50 ms
    assert v.hostfwd == [("tcp", 8080, 80), ("udp", 5353, 53)]
    assert v.net_config() == VifConfig(network="lan0", mac="00:16:3e:00:00:01",
                                       ips=("10.0.0.1/24", "10.0.0.9"), rate=(62500, 50000), uplink="passt",
                                       hostfwd=(("tcp", 8080, 80), ("udp", 5353, 53)), vifname="web0")


def test_defaults() -> None:
    v = parse_vif("")
    assert (v.mac, v.bridge, v.ip, v.rate, v.uplink, v.hostfwd) == (None, "xenbr0", [], None, None, [])
    assert parse_vif("mac=aa-bb-cc-00-11-22").mac == "aa:bb:cc:00:11:22"
    assert parse_vif("uplink=tap:tap0, backend=dom0").uplink == "tap:tap0"


@pytest.mark.parametrize(("rate", "expected"), [
    ("10Mb/s", (62500, 50000)), ("1MB/s", (50000, 50000)), ("100KB/s@20ms", (2000, 20000)),
    ("8b/s@1s", (1, 1000000)), ("1GB/s@100us", (100000, 100)), ("1000B/s", (50, 50000)),
])
def test_rates(rate: str, expected: tuple[int, int]) -> None:
    assert parse_vif(f"rate={rate}").rate == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("colour=red", "unknown vif parameter 'colour'"),
    ("brigde=x", "did you mean 'bridge'"),
    ("mac=00:16:3e", "is not a MAC address"),
    ("mac=00:16:3e:00:00:0g", "is not a MAC address"),
    ("mac=00:16-3e:00:00:01", "is not a MAC address"),
    ("mac=01:00:5e:00:00:01", "multicast"),
    ("mac=00:00:00:00:00:00", "not an interface address"),
    ("bridge=a/b", "not a network name"),
    ("bridge=" + "a" * 33, "not a network name"),
    ("ip=10.0.0.256", "not an IPv4 address"),
    ("ip=10.0.0.1/33", "longer than 32"),
    ("ip=010.0.0.1", "not an IPv4 address"),
    ("ip=fe80::1", "not an IPv4 address"),
    ("ip=", "names no address"),
    ("rate=10Mb", "expected e.g. 10Mb/s"),
    ("rate=0Mb/s", "is zero"),
    ("rate=7b/s", "is zero"),
    ("rate=1B/s", "less than one byte per interval"),
    ("rate=1MB/s@0ms", "interval"),
    ("rate=1MB/s@9999999999s", "interval"),
    ("uplink=slirp", "expected passt or tap:IFNAME"),
    ("uplink=tap:" + "x" * 16, "expected passt or tap:IFNAME"),
    ("hostfwd=tcp:80:80", "needs uplink=passt"),
    ("uplink=passt, hostfwd=tcp:0:80", "ports 1-65535"),
    ("uplink=passt, hostfwd=tcp:80:65536", "ports 1-65535"),
    ("uplink=passt, hostfwd=sctp:80:80", "expected tcp:HOSTPORT:GUESTPORT"),
    ("uplink=passt, hostfwd=tcp:80:80;tcp:80:81", "given twice"),
    ("vifname=a b", "not an interface name"),
    ("type=wifi", "expected vif or ioemu"),
    ("backend=1", "only domain 0"),
    ("bridge", "expected key=value"),
    ("=lan0", "expected key=value"),
    ("bridge=lan0, bridge=lan1", "'bridge' given twice"),
    ("bridge=lan0\0", "NUL character"),
])
def test_bad_specs(spec: str, message: str) -> None:
    assert message in error_of(spec)


def test_in_a_config_file() -> None:
    spec = parse_text("name='w'\nvif = [ 'mac=00:16:3e:00:00:01, bridge=lan0', 'bridge=lan1' ]\n", "w.cfg")
    assert [(v.mac, v.bridge) for v in spec.vifs] == [("00:16:3e:00:00:01", "lan0"), (None, "lan1")]
    with pytest.raises(ConfigError, match="same mac"):
        parse_text("name='w'\nvif = [ 'mac=00:16:3e:00:00:01', 'mac=00:16:3E:00:00:01' ]\n")


def test_derived_macs_stable_and_distinct() -> None:
    assert derive_mac("web", 0) == derive_mac("web", 0)
    macs = {derive_mac(f"d{i}", j) for i in range(200) for j in range(4)}
    assert len(macs) == 800
    for mac in macs:
        octets = bytes(int(x, 16) for x in mac.split(":"))
        assert octets[:3] == b"\x00\x16\x3e" and octets[3] < 0x80
    assert derive_mac("web", 0, 1) != derive_mac("web", 0)
