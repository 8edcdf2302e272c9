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


# -- devices: the network's own (a tap) and a vif's own (its passt) ---------------------------------------

GW = bytes.fromhex("9a559a559a55")     # every passt's gateway MAC: the same for all of them


class Device:
    """A FrameDevice over a SOCK_SEQPACKET pair: the test holds the far end (``host``)."""

    def __init__(self) -> None:
        self.host, self.sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.settimeout(3.0)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_frames(self) -> list[tuple[F.Meta, bytes]]:
        out: list[tuple[F.Meta, bytes]] = []
        while True:
            try:
                data = self.sock.recv(F.MAX_FRAME + 1)
            except BlockingIOError:
                return out
            if not data:
                raise EOFError("closed")
            out.append((F.Meta(F.DATA_VALIDATED), data))

    def write_frame(self, meta: F.Meta, frame: bytes) -> bool:
        self.sock.send(frame)
        return True

    def close(self) -> None:
        self.sock.close()

    # the test's side: frames without the switch's 8-byte header
    def send(self, msg: bytes) -> None:
        self.host.send(msg[F.HEADER.size:])

    def recv(self) -> bytes:
        return self.host.recv(F.MAX_FRAME + 1)


def silent(*ends: Guest | Device, wait: float = 0.2) -> bool:
    """Nothing is waiting for any of these ends (after ``wait`` seconds)."""
    time.sleep(wait)
    for end in ends:
        sock = end.sock if isinstance(end, Guest) else end.host
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            sock.recv(F.MAX_MESSAGE + 1)
        except BlockingIOError:
            continue
        finally:
            sock.settimeout(timeout)
        return False
    return True


def owned_network(sw: Switches) -> tuple[Network, Guest, Guest, Guest, Device, Device]:
    """a and b each with their own device (pa, pb), c without one."""
    net = sw.get("lan0")
    a, b, c = (Guest(net, f"d{i}.0", mac(i)) for i in (1, 2, 3))
    pa, pb = Device(), Device()
    net.add_device("uplink:passt:d1.0", pa, owner=a.port)
    net.add_device("uplink:passt:d2.0", pb, owner=b.port)
    return net, a, b, c, pa, pb


def test_a_network_device_is_flooded_to_and_learned(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net = sw.get("lan0")
    a, b = Guest(net, "d1.0", mac(1)), Guest(net, "d2.0", mac(2))
    tap = Device()
    port = net.add_device("uplink:tap:t0", tap)
    assert port.owner is None and a.port.owned == ()
    for dst in (BCAST, mac(9)):                                 # broadcast and unknown unicast
        a.send(msg := eth(dst, a.mac))
        assert b.recv() == msg and tap.recv() == msg[8:]
    tap.send(from_host := eth(BCAST, mac(40)))                  # a host behind the tap
    assert a.recv()[8:] == from_host[8:] and b.recv()[8:] == from_host[8:]
    a.send(to_host := eth(mac(40), a.mac))                      # learned: to the tap only
    assert tap.recv() == to_host[8:]
    assert silent(b)


def test_owned_devices_each_see_only_their_owners_frames(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net, a, b, c, pa, pb = owned_network(sw)
    assert a.port.owned == tuple(p for p in net.ports() if p.name == "uplink:passt:d1.0")
    for src, others, own, not_own in ((a, (b, c), pa, pb), (b, (a, c), pb, pa)):
        for dst in (BCAST, b"\x01\x00\x5e\x00\x00\x01"):         # broadcast, multicast
            src.send(msg := eth(dst, src.mac))
            assert all(o.recv() == msg for o in others)
            assert own.recv() == msg[8:]
        assert silent(not_own)
    c.send(msg := eth(BCAST, c.mac))                            # a vif without a device: vifs only
    assert a.recv() == msg and b.recv() == msg
    assert silent(pa, pb)


def test_an_owners_unknown_unicast_goes_to_its_own_device_only(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net, a, b, c, pa, pb = owned_network(sw)
    a.send(to_gw := eth(GW, a.mac))
    assert pa.recv() == to_gw[8:]
    assert silent(b, c, pb)
    # a vif's own MAC is a known port without learning: to that vif, not to the owner's device
    a.send(to_b := eth(b.mac, a.mac))
    assert b.recv() == to_b
    assert silent(c, pa, pb)
    # another vif's unknown unicast is flooded to the vifs, never to anyone's device
    c.send(to_gw := eth(GW, c.mac))
    assert a.recv() == to_gw and b.recv() == to_gw
    assert silent(pa, pb)


def test_an_owned_devices_frames_reach_its_owner_alone_and_are_not_learned(
        switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net, a, b, c, pa, pb = owned_network(sw)
    for dev, owner, others in ((pa, a, (b, c)), (pb, b, (a, c))):
        for dst in (BCAST, owner.mac, mac(2) if owner is a else mac(1)):
            dev.send(msg := eth(dst, GW))
            assert owner.recv()[8:] == msg[8:]
        assert silent(*others)
    assert GW not in net._table
    # the gateway MAC was not learned: b's frame to it goes to b's own device, not to a's
    b.send(to_gw := eth(GW, b.mac))
    assert pb.recv() == to_gw[8:]
    assert silent(a, c, pa)
    assert pa.host is not None and a.port.stats()["rx_packets"] == 3


def test_owned_device_bookkeeping(switches: tuple[Switches, list[str]]) -> None:
    sw, _ = switches
    net, a, b, c, pa, pb = owned_network(sw)
    other = sw.get("dmz")
    x = Guest(other, "d4.0", mac(4))
    with pytest.raises(ValueError, match="not a vif port"):
        net.add_device("bad", Device(), owner=x.port)           # a port of another network
    tap = net.add_device("uplink:tap:t0", Device())
    with pytest.raises(ValueError, match="not a vif port"):
        net.add_device("bad", Device(), owner=tap)              # a device cannot own one
    [pa_port] = a.port.owned
    net.remove_port(pa_port)
    assert a.port.owned == () and pa_port not in net.ports()
    assert pa.host.recv(100) == b""                              # closed
    a.send(to_gw := eth(GW, a.mac))                # no device left: an ordinary vif's unknown unicast
    assert b.recv() == to_gw and c.recv() == to_gw
    assert silent(pb)
    # the owner gone: its device's frames are dropped, nobody else gets them
    net.remove_port(b.port)
    pb.send(eth(BCAST, GW))
    assert silent(a, c)
    assert not b.port.alive
