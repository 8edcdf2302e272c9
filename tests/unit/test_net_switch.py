"""Domain 0's learning switch (backends/net/switch.py) with real socket pairs as its ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from hyperdisco.backends.net import frame as F
from hyperdisco.backends.net.switch import Network, Port, Switches

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([0x00, 0x16, 0x3E, 0, 0, n])


def eth(dst: bytes, src: bytes, etype: int = 0x88B5, payload: bytes = b"x" * 46) -> bytes:
    return F.pack(F.PLAIN, dst + src + etype.to_bytes(2, "big") + payload)


def ipv4(dst: bytes, src: bytes, saddr: str, daddr: str = "10.0.0.254") -> bytes:
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + socket.inet_aton(saddr) + socket.inet_aton(daddr)
    return eth(dst, src, 0x0800, ip + b"\0" * 8 + b"\0" * 18)


def arp(src: bytes, spa: str, sha: bytes | None = None) -> bytes:
    body = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + (sha or src) + socket.inet_aton(spa)
            + bytes(6) + socket.inet_aton("10.0.0.254"))
    return eth(BCAST, src, 0x0806, body + bytes(18))


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class Guest:
    """The domain's end of one vif's socket pair."""

    def __init__(self, net: Network, name: str, mac_: bytes, ips: frozenset[str] | None = None) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(3.0)
        self.mac = mac_
        self.port: Port = net.add_port(name, theirs, mac_, ips)

    def send(self, msg: bytes) -> None:
        self.sock.send(msg)

    def recv(self) -> bytes:
        return self.sock.recv(F.MAX_MESSAGE + 1)

    def nothing_but(self, marker: bytes) -> None:
        """The next message is ``marker``: nothing else was delivered before it."""
        assert self.recv() == marker


@pytest.fixture
def switches() -> Iterator[tuple[Switches, list[str]]]:
    logs: list[str] = []
    sw = Switches(logs.append)
    yield sw, logs
    sw.close()


def test_unicast_after_learning_reaches_one_port(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a, b, c = (Guest(net, f"d{i}.0", mac(i)) for i in (1, 2, 3))
    hello = eth(BCAST, a.mac)
    a.send(hello)                                   # a's MAC is learned; everyone else sees it
    assert b.recv() == hello and c.recv() == hello
    reply = eth(a.mac, b.mac, payload=b"reply".ljust(46, b"."))
    b.send(reply)
    assert a.recv() == reply
    marker = eth(BCAST, b.mac)
    b.send(marker)
    c.nothing_but(marker)                          # the unicast did not reach c
    assert a.recv() == marker
    assert b.port.stats()["tx_packets"] == 2 and a.port.stats()["rx_packets"] == 2
    assert a.port.stats()["rx_bytes"] == len(reply) - 8 + len(marker) - 8


def test_unknown_and_broadcast_flood_to_all_others_never_the_sender(
        switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a, b, c = (Guest(net, f"d{i}.0", mac(i)) for i in (1, 2, 3))
    for dst in (mac(9), BCAST, b"\x01\x00\x5e\x00\x00\x01"):       # unknown, broadcast, multicast
        msg = eth(dst, a.mac)
        a.send(msg)
        assert b.recv() == msg and c.recv() == msg
    a.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        a.recv()


def test_frames_never_cross_networks(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    lan, dmz = sw.get("lan0"), sw.get("dmz")
    assert sw.get("lan0") is lan and {n.name for n in sw.networks()} == {"lan0", "dmz"}
    a, b = Guest(lan, "d1.0", mac(1)), Guest(lan, "d2.0", mac(2))
    x = Guest(dmz, "d3.0", mac(3))
    msg = eth(BCAST, a.mac)
    a.send(msg)
    assert b.recv() == msg
    to_x = eth(mac(3), a.mac)
    a.send(to_x)
    assert b.recv() == to_x                                   # unknown on lan0: flooded there only
    other = eth(BCAST, x.mac)
    x.send(other)
    x.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        x.recv()
    a.send(marker := eth(BCAST, a.mac, payload=b"m" * 46))
    b.nothing_but(marker)
    assert [p.name for p in lan.ports()] == ["d1.0", "d2.0"] and [p.name for p in dmz.ports()] == ["d3.0"]


def test_spoofed_source_mac_is_dropped_and_counted(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a, b = Guest(net, "d1.0", mac(1)), Guest(net, "d2.0", mac(2))
    a.send(eth(BCAST, mac(2)))                    # pretends to be b
    a.send(eth(BCAST, mac(7)))
    a.send(marker := eth(BCAST, mac(1)))
    b.nothing_but(marker)
    assert a.port.stats()["drop_spoof"] == 2 and a.port.stats()["tx_packets"] == 1
    # and b's MAC was not learned on a's port: a frame to b still reaches b
    c = Guest(net, "d3.0", mac(3))
    c.send(to_b := eth(mac(2), mac(3)))
    assert b.recv() == to_b


def test_spoofed_ip_sources_dropped_with_ips(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a = Guest(net, "d1.0", mac(1), frozenset({"10.0.0.1", "fd00::1"}))
    b = Guest(net, "d2.0", mac(2))
    good = [ipv4(BCAST, mac(1), "10.0.0.1"), ipv4(BCAST, mac(1), "0.0.0.0"), arp(mac(1), "10.0.0.1"),
            arp(mac(1), "0.0.0.0")]
    bad = [ipv4(BCAST, mac(1), "10.0.0.2"), arp(mac(1), "10.0.0.2"), arp(mac(1), "10.0.0.1", sha=mac(2)),
           eth(BCAST, mac(1), 0x8100, b"\x00\x01\x08\x00" + b"\0" * 42)]  # a VLAN tag hides the address
    for msg in bad[:2] + good[:2] + bad[2:] + good[2:]:
        a.send(msg)
    for msg in good:
        assert b.recv() == msg
    assert a.port.stats()["drop_spoof"] == len(bad)


def test_ipv6_sources_with_ips(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a = Guest(net, "d1.0", mac(1), frozenset({"10.0.0.1", "fd00::1"}))
    b = Guest(net, "d2.0", mac(2))

    def ip6(src: str) -> bytes:
        hdr = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + socket.inet_pton(socket.AF_INET6, src) \
            + socket.inet_pton(socket.AF_INET6, "ff02::1")
        return eth(b"\x33\x33\x00\x00\x00\x01", mac(1), 0x86DD, hdr + bytes(8))

    for src in ("fd00::2", "fd00::1", "2001:db8::1", "fe80::216:3eff:fe00:1", "::"):
        a.send(ip6(src))
    for src in ("fd00::1", "fe80::216:3eff:fe00:1", "::"):
        assert b.recv() == ip6(src)
    assert a.port.stats()["drop_spoof"] == 2


def test_garbage_is_drop_bad_and_the_switch_keeps_working(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a, b = Guest(net, "d1.0", mac(1)), Guest(net, "d2.0", mac(2))
    garbage = [b"", b"\x00" * 10, b"\xff" * 100, F.HEADER.pack(0, 9, 0, 0) + eth(BCAST, mac(1))[8:],
               F.HEADER.pack(0, F.GSO_TCPV4, 0, 0) + eth(BCAST, mac(1))[8:]]
    for g in garbage:
        a.send(g)
    a.send(good := eth(BCAST, mac(1)))
    assert b.recv() == good
    assert a.port.stats()["drop_bad"] == len(garbage)
    assert a.port in net.ports()


def test_a_receiver_that_never_reads_never_blocks_the_switch(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a, stuck, c = Guest(net, "d1.0", mac(1)), Guest(net, "d2.0", mac(2)), Guest(net, "d3.0", mac(3))
    big = eth(BCAST, mac(1), payload=b"z" * 60000)
    sent = 0
    deadline = time.monotonic() + 10
    while stuck.port.drop_full < 20 and time.monotonic() < deadline:
        a.send(big)
        sent += 1
        assert c.recv() == big                   # c keeps getting everything
    assert stuck.port.stats()["drop_full"] >= 20
    assert stuck.port.stats()["rx_packets"] + stuck.port.stats()["drop_full"] == sent
    c.send(to_a := eth(mac(1), mac(3)))           # and the rest of the network still moves
    assert a.recv() == to_a


def test_a_port_whose_peer_closed_is_removed(switches: tuple[Switches, list[str]]) -> None:
    sw, logs = switches
    net = sw.get("lan0")
    a, b = Guest(net, "d1.0", mac(1)), Guest(net, "d2.0", mac(2))
    b.sock.close()
    assert wait_for(lambda: b.port not in net.ports())
    assert [line for line in logs if "d2.0" in line and "removed" in line]
    a.send(eth(BCAST, mac(1)))                    # flooding to nobody is fine
    assert wait_for(lambda: a.port.tx_packets == 1)
    c = Guest(net, "d3.0", mac(3))
    a.send(msg := eth(BCAST, mac(1), payload=b"again".ljust(46)))
    assert c.recv() == msg


def test_remove_port_closes_its_socket(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a = Guest(net, "d1.0", mac(1))
    net.remove_port(a.port)
    assert net.ports() == []
    assert a.sock.recv(100) == b""                # EOF: the switch's end is closed


def test_close_stops_the_thread_and_closes_ports() -> None:
    sw = Switches(lambda _line: None)
    a = Guest(sw.get("lan0"), "d1.0", mac(1))
    thread = sw._thread
    assert thread.is_alive()
    t0 = time.monotonic()
    sw.close()
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0
    assert a.sock.recv(100) == b""
    sw.close()                                    # twice is fine
