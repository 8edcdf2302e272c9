"""A network's uplink (backends/net/uplink.py): checksum completion, segmentation, passt's length-prefixed
stream, and the real passt answering DHCP through a switch."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyperdisco.backends.net import frame as F
from hyperdisco.backends.net.switch import Switches
from hyperdisco.backends.net.uplink import (
    FROM_HOST,
    PASST_MAX_FRAME,
    FrameStream,
    PasstDevice,
    PasstUplink,
    TapUplink,
    arp_request_target,
    dhcp_lease,
    finish_checksum,
    make_uplink,
    prepare_for_host,
    segment_tcp,
)

GUEST_MAC = bytes.fromhex("00163e000001")
HOST_MAC = bytes.fromhex("02fc00000001")


# -- a reference checksum, word by word as RFC 1071 describes it -------------------------------------------

def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def ip4_header(proto: int, l4_len: int, src: str = "10.0.0.1", dst: str = "93.184.216.34",
               ident: int = 0x1234) -> bytes:
    hdr = bytearray(bytes([0x45, 0]) + (20 + l4_len).to_bytes(2, "big") + ident.to_bytes(2, "big")
                    + b"\x40\x00" + bytes([64, proto]) + b"\0\0"
                    + socket.inet_aton(src) + socket.inet_aton(dst))
    hdr[10:12] = ref_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr)


def ip6_header(proto: int, l4_len: int, src: str = "fd00::2", dst: str = "2001:db8::1") -> bytes:
    return (b"\x60\0\0\0" + l4_len.to_bytes(2, "big") + bytes([proto, 64])
            + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst))


def tcp_header(seq: int = 1000, flags: int = 0x18) -> bytes:
    return (b"\xc0\x01\x00\x50" + seq.to_bytes(4, "big") + (77).to_bytes(4, "big") + b"\x50" + bytes([flags])
            + b"\xff\xff" + b"\xab\xcd" + b"\0\0")


def udp_header(length: int) -> bytes:
    return b"\xc0\x02\x00\x35" + length.to_bytes(2, "big") + b"\xab\xcd"


def packet(v6: bool, proto: int, payload: bytes, seq: int = 1000, flags: int = 0x18) -> bytearray:
    l4 = tcp_header(seq, flags) if proto == 6 else udp_header(8 + len(payload))
    l4_len = len(l4) + len(payload)
    ip = ip6_header(proto, l4_len) if v6 else ip4_header(proto, l4_len)
    etype = b"\x86\xdd" if v6 else b"\x08\x00"
    return bytearray(HOST_MAC + GUEST_MAC + etype + ip + l4 + payload)


def l4_ok(frame: bytes | bytearray) -> bool:
    """Verify a frame's TCP/UDP checksum with the reference: pseudo-header + segment sums to 0xFFFF."""
    frame = bytes(frame)
    if frame[12:14] == b"\x08\x00":
        ihl = (frame[14] & 15) * 4
        seg = frame[14 + ihl:14 + int.from_bytes(frame[16:18], "big")]
        pseudo = frame[26:34] + bytes([0, frame[23]]) + len(seg).to_bytes(2, "big")
    else:
        seg = frame[54:54 + int.from_bytes(frame[18:20], "big")]
        pseudo = frame[22:54] + len(seg).to_bytes(4, "big") + bytes([0, 0, 0, frame[20]])
    return ref_sum(pseudo + seg) == 0xFFFF


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("proto", [6, 17], ids=["tcp", "udp"])
def test_checksum_completion_matches_the_reference(v6: bool, proto: int) -> None:
    rng = random.Random(proto * 2 + v6)
    for size in (0, 1, 2, 3, 17, 1400, 1401, 9000, 60001):
        frame = packet(v6, proto, rng.randbytes(size))
        field = (54 if v6 else 34) + (16 if proto == 6 else 6)
        frame[field:field + 2] = rng.randbytes(2)        # a partial sum, or anything
        assert finish_checksum(frame)
        assert l4_ok(frame), size
        # and the value is the one the straightforward computation gives with the field zeroed
        check = bytes(frame)
        zeroed = bytearray(check)
        zeroed[field:field + 2] = b"\0\0"
        if v6:
            pseudo = check[22:54] + (len(check) - 54).to_bytes(4, "big") + bytes([0, 0, 0, proto])
            seg = bytes(zeroed[54:])
        else:
            pseudo = check[26:34] + bytes([0, proto]) + (len(check) - 34).to_bytes(2, "big")
            seg = bytes(zeroed[34:])
        expect = ref_checksum(pseudo + seg)
        if proto == 17 and expect == 0:
            expect = 0xFFFF
        assert int.from_bytes(check[field:field + 2], "big") == expect


def test_checksum_leaves_other_frames_alone() -> None:
    arp = bytearray(b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + bytes(28))
    assert not finish_checksum(arp) and arp == bytearray(b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + bytes(28))
    truncated = packet(False, 6, b"abc")[:40]
    assert not finish_checksum(truncated)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_gso_segmentation(v6: bool) -> None:
    payload = random.Random(5).randbytes(4000)
    sup = packet(v6, 6, payload, seq=0xFFFFFF00, flags=0x80 | 0x18 | 0x01)    # CWR PSH ACK FIN
    segs = segment_tcp(sup, 1448)
    assert segs is not None and [len(s) - (74 if v6 else 54) for s in segs] == [1448, 1448, 1104]
    l4 = 54 if v6 else 34
    seqs = [int.from_bytes(s[l4 + 4:l4 + 8], "big") for s in segs]
    assert seqs == [0xFFFFFF00, (0xFFFFFF00 + 1448) & 0xFFFFFFFF, (0xFFFFFF00 + 2896) & 0xFFFFFFFF]
    assert [s[l4 + 13] for s in segs] == [0x10 | 0x80, 0x10, 0x10 | 0x08 | 0x01]
    assert b"".join(bytes(s[l4 + 20:]) for s in segs) == payload
    for s in segs:
        assert l4_ok(s)
        if not v6:
            assert int.from_bytes(s[16:18], "big") == len(s) - 14
            assert ref_sum(bytes(s[14:34])) == 0xFFFF            # the IPv4 header checksum
        else:
            assert int.from_bytes(s[18:20], "big") == len(s) - 54
    if not v6:
        assert [int.from_bytes(s[18:20], "big") for s in segs] == [0x1234, 0x1235, 0x1236]


def test_prepare_for_passt() -> None:
    small = packet(False, 6, b"q" * 3000)
    small[50:52] = b"\x12\x34"
    gso_small = F.Meta(F.CSUM_BLANK, F.GSO_TCPV4, 1448)
    [whole] = prepare_for_host(gso_small, bytes(small), PASST_MAX_FRAME, segment_gso=False)
    assert len(whole) == len(small) and l4_ok(whole)          # passt takes it whole, checksum finished
    big = packet(False, 6, b"r" * (F.MAX_FRAME - 54))
    assert len(big) > PASST_MAX_FRAME
    segs = prepare_for_host(F.Meta(F.CSUM_BLANK, F.GSO_TCPV4, 8000), bytes(big), PASST_MAX_FRAME, False)
    assert len(segs) == 9 and all(l4_ok(s) and len(s) <= PASST_MAX_FRAME for s in segs)
    assert prepare_for_host(F.PLAIN, bytes(big), PASST_MAX_FRAME, False) == []   # too long, not GSO
    plain = bytes(packet(True, 17, b"dns"))
    assert prepare_for_host(F.PLAIN, plain, PASST_MAX_FRAME, False) == [plain]


# -- passt's length-prefixed stream --------------------------------------------------------------------------

def records(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def test_reassembly_of_frames_split_across_reads() -> None:
    rng = random.Random(9)
    frames = [rng.randbytes(rng.choice([14, 60, 1514, 9000, 65534])) for _ in range(40)]
    data = records(frames)
    a, b = socket.socketpair()
    stream = FrameStream(a)
    got: list[bytes] = []
    pos = 0
    while pos < len(data):                    # cut anywhere, including inside a length prefix
        n = rng.choice([1, 2, 3, 5, 100, 7000, 70000])
        got += stream.feed(data[pos:pos + n])
        pos += n
    assert got == frames
    # the same through a real socket
    got = []
    for i in range(0, len(data), 4093):     # written in uneven pieces, read as they come
        b.sendall(data[i:i + 4093])
        got += [f for meta, f in stream.read_frames() if meta is FROM_HOST]
    got += [f for meta, f in stream.read_frames() if meta is FROM_HOST]
    assert got == frames
    b.close()
    with pytest.raises(EOFError):
        stream.read_frames()
    a.close()


def test_a_stream_out_of_step_is_refused() -> None:
    a, b = socket.socketpair()
    stream = FrameStream(a)
    assert stream.feed(records([b"x" * 20])[:10]) == []
    assert stream.feed(records([b"x" * 20])[10:]) == [b"x" * 20]
    assert stream.feed(records([b"short"])) == [] and stream.bad == 1     # skipped, still in step
    with pytest.raises(EOFError):
        stream.feed((F.MAX_FRAME + 1).to_bytes(4, "big"))
    a.close()
    b.close()


def test_output_is_never_cut_mid_frame_and_is_bounded() -> None:
    a, b = socket.socketpair()
    stream = FrameStream(a, max_out=200_000)
    frame = b"f" * 60000
    accepted = 0
    while stream.write(frame):               # nobody reads b: the socket fills, then our buffer
        accepted += 1
        assert accepted < 10_000
    assert stream.wants_write()
    reader = FrameStream(b)
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while (len(got) < accepted or stream.wants_write()) and time.monotonic() < deadline:
        stream.flush()
        got += [f for _m, f in reader.read_frames()]
    assert got == [frame] * accepted and not stream.wants_write()
    a.close()
    b.close()


# -- the real passt ------------------------------------------------------------------------------------------

def dhcp_discover(xid: int, mac: bytes = GUEST_MAC) -> bytes:
    bootp = (bytes([1, 1, 6, 0]) + xid.to_bytes(4, "big") + b"\0\0\x80\0" + bytes(16) + mac + bytes(10)
             + bytes(192) + b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\x37\x03\x01\x03\x06" + b"\xff")
    udp = b"\x00\x44\x00\x43" + (8 + len(bootp)).to_bytes(2, "big") + b"\0\0" + bootp
    ip = ip4_header(17, len(udp), "0.0.0.0", "255.255.255.255")
    frame = bytearray(b"\xff" * 6 + mac + b"\x08\x00" + ip + udp)
    finish_checksum(frame)
    return bytes(frame)


def dhcp_offer_for(msg: bytes, xid: int) -> bool:
    f = msg[8:]
    if f[12:14] != b"\x08\x00" or f[23] != 17:
        return False
    l4 = 14 + (f[14] & 15) * 4
    bootp = f[l4 + 8:]
    if f[l4:l4 + 4] != b"\x00\x43\x00\x44" or bootp[4:8] != xid.to_bytes(4, "big"):
        return False
    opts = bootp[240:]
    return b"\x35\x01\x02" in opts and bootp[16:20] != bytes(4)     # DHCPOFFER with an address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def lan() -> Iterator[tuple[Switches, list[str]]]:
    logs: list[str] = []
    sw = Switches(logs.append)
    yield sw, logs
    sw.close()


needs_passt = pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed")


@needs_passt
def test_passt_answers_dhcp_through_the_switch(lan: tuple[Switches, list[str]], tmp_path: Path) -> None:
    sw, logs = lan
    net = sw.get("lan0")
    guest, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    net.add_port("d1.0", theirs, GUEST_MAC, frozenset({"192.0.2.2"}))
    fwd = free_port()
    up = PasstUplink(net, tmp_path / "run", [("tcp", fwd, 22)], logs.append)
    try:
        assert up.start(), logs
        assert up.proc is not None
        pid = up.proc.pid
        assert [p.name for p in net.ports()] == ["d1.0", "uplink:passt"]
        guest.settimeout(0.5)
        xid = 0x5EED
        offered = False
        deadline = time.monotonic() + 5
        while not offered and time.monotonic() < deadline:
            guest.send(F.pack(F.Meta(F.CSUM_BLANK), dhcp_discover(xid)))
            try:
                while not offered:
                    msg = guest.recv(F.MAX_MESSAGE)
                    offered = dhcp_offer_for(msg, xid)
            except TimeoutError:
                pass
        assert offered, logs
        assert F.parse(msg)[0].flags == F.DATA_VALIDATED
        with socket.create_connection(("127.0.0.1", fwd), timeout=2):   # the forward is bound on loopback
            pass
    finally:
        up.close()
    assert not os.path.exists(f"/proc/{pid}")      # killed and reaped: passt --foreground never forks
    assert [p.name for p in net.ports()] == ["d1.0"]
    guest.close()


@needs_passt
def test_passt_is_restarted_when_it_dies(lan: tuple[Switches, list[str]], tmp_path: Path) -> None:
    sw, logs = lan
    net = sw.get("lan0")
    up = PasstUplink(net, tmp_path, [], logs.append)
    try:
        assert up.start()
        assert up.proc is not None
        first = up.proc.pid
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: up.proc is not None and up.proc.pid != first and up.port is not None
                        and up.port in net.ports(), timeout=8), logs
        assert [line for line in logs if "passt exited" in line]
    finally:
        up.close()
    assert not os.path.exists(f"/proc/{first}")


def test_without_passt_start_says_so_once(lan: tuple[Switches, list[str]], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sw, logs = lan
    monkeypatch.setenv("PATH", str(tmp_path))
    up = make_uplink("passt", sw.get("lan0"), tmp_path, [], logs.append)
    assert up is not None and not up.start()
    assert logs == ["network lan0: no uplink: passt is not installed (apt-get install passt)"]
    up.close()


def test_make_uplink_kinds(lan: tuple[Switches, list[str]], tmp_path: Path) -> None:
    sw, logs = lan
    net = sw.get("lan0")
    assert make_uplink("none", net, tmp_path, [], logs.append) is None
    assert isinstance(make_uplink("passt", net, tmp_path, [("udp", 5353, 53)], logs.append), PasstUplink)
    assert isinstance(make_uplink("tap:hd0", net, tmp_path, [], logs.append), TapUplink)
    with pytest.raises(ValueError):
        make_uplink("vde", net, tmp_path, [], logs.append)
    with pytest.raises(ValueError):
        make_uplink("passt", net, tmp_path, [("sctp", 1, 2)], logs.append)


def test_tap_uplink(lan: tuple[Switches, list[str]]) -> None:
    sw, logs = lan
    net = sw.get("lan0")
    name = f"hdt{os.getpid() % 100000}"
    up = TapUplink(net, name, logs.append)
    if not up.start():
        assert len(logs) == 1 and "no uplink" in logs[0]
        pytest.skip(f"no tap device here: {logs[0]}")
    try:
        assert os.path.exists(f"/sys/class/net/{name}")
        assert [p.name for p in net.ports()] == [f"uplink:tap:{name}"]
    finally:
        up.close()
    assert net.ports() == [] and wait_for(lambda: not os.path.exists(f"/sys/class/net/{name}"))
    bad = TapUplink(net, "x" * 20, logs.append)
    assert not bad.start() and "not an interface name" in logs[-1]


# -- one passt per vif: the owner, and ARP requests passt must not answer -----------------------------------

def dhcp_reply(kind: int, yiaddr: str, mask: str | None, routers: list[str]) -> bytes:
    opts = bytes([53, 1, kind])
    if mask is not None:
        opts += bytes([1, 4]) + socket.inet_aton(mask)
    if routers:
        opts += bytes([3, 4 * len(routers)]) + b"".join(socket.inet_aton(r) for r in routers)
    opts += bytes([6, 4]) + socket.inet_aton("192.0.2.53") + b"\0\0\xff"      # DNS, two pads, end
    bootp = (bytes([2, 1, 6, 0]) + (7).to_bytes(4, "big") + bytes(8) + socket.inet_aton(yiaddr) + bytes(8)
             + GUEST_MAC + bytes(10) + bytes(192) + b"\x63\x82\x53\x63" + opts)
    udp = b"\x00\x43\x00\x44" + (8 + len(bootp)).to_bytes(2, "big") + b"\0\0" + bootp
    ip = ip4_header(17, len(udp), "192.0.2.1", "255.255.255.255")
    return bytes(HOST_MAC + GUEST_MAC + b"\x08\x00" + ip + udp)


def arp_request(target: str, sender: str = "10.0.5.1") -> bytes:
    return (b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + GUEST_MAC
            + socket.inet_aton(sender) + bytes(6) + socket.inet_aton(target) + bytes(18))


def test_dhcp_lease_and_arp_target_parsing() -> None:
    subnet, routers = dhcp_lease(dhcp_reply(5, "192.0.2.2", "255.255.255.0", ["192.0.2.1", "198.51.100.1"]))
    assert str(subnet) == "192.0.2.0/24"
    assert routers == {socket.inet_aton("192.0.2.1"), socket.inet_aton("198.51.100.1")}
    offer = dhcp_lease(dhcp_reply(2, "192.0.2.2", None, []))
    assert offer is not None and str(offer[0]) == "192.0.2.2/32" and offer[1] == frozenset()
    assert dhcp_lease(dhcp_reply(6, "192.0.2.2", "255.255.255.0", [])) is None       # a NAK
    assert dhcp_lease(dhcp_discover(1)) is None
    assert dhcp_lease(dhcp_reply(5, "192.0.2.2", "255.255.255.0", [])[:-5]) is None  # an option cut off
    assert dhcp_lease(arp_request("10.0.5.2")) is None
    assert arp_request_target(arp_request("10.0.5.2")) == socket.inet_aton("10.0.5.2")
    reply = bytearray(arp_request("10.0.5.2"))
    reply[21] = 2
    assert arp_request_target(bytes(reply)) is None and arp_request_target(dhcp_discover(1)) is None


def test_passt_device_keeps_arp_for_other_addresses_from_passt() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dev = PasstDevice(ours)
    theirs.settimeout(0.5)

    def passt_got() -> list[bytes]:
        stream = FrameStream(socket.socket(fileno=os.dup(theirs.fileno())))
        try:
            return [f for _m, f in stream.read_frames()]
        finally:
            stream.close()

    # before any lease, every ARP request goes to passt
    assert dev.write_frame(F.PLAIN, arp_request("10.0.5.2"))
    assert passt_got() == [arp_request("10.0.5.2")]
    reply = dhcp_reply(5, "192.0.2.2", "255.255.255.0", ["192.0.2.1"])
    theirs.send(len(reply).to_bytes(4, "big") + reply)
    assert [f for _m, f in dev.read_frames()] == [reply] and dev.lease is not None
    # now one for another guest's address stays out; the subnet's, the router's and other frames go in
    assert dev.write_frame(F.PLAIN, arp_request("10.0.5.2")) and dev.held_back == 1
    for frame in (arp_request("192.0.2.77"), arp_request("192.0.2.1"), dhcp_discover(3)):
        assert dev.write_frame(F.PLAIN, frame)
    assert passt_got() == [arp_request("192.0.2.77"), arp_request("192.0.2.1"), dhcp_discover(3)]
    assert dev.held_back == 1
    dev.close()
    theirs.close()


@needs_passt
def test_an_owned_passt_learns_its_lease_and_answers_only_for_it(
        lan: tuple[Switches, list[str]], tmp_path: Path) -> None:
    sw, logs = lan
    net = sw.get("lan0")
    guest, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    owner = net.add_port("d1.0", theirs, GUEST_MAC)
    up = make_uplink("passt", net, tmp_path, [], logs.append, owner=owner)
    assert isinstance(up, PasstUplink)
    try:
        assert up.start(), logs
        assert up.port is not None and up.port.owner is owner and owner.owned == (up.port,)
        assert up.port.name == "uplink:passt:d1.0" and up.log_path.name == "passt-lan0-d1.0.log"
        device = up.port.device
        assert isinstance(device, PasstDevice)
        guest.settimeout(0.5)
        deadline = time.monotonic() + 5
        while device.lease is None and time.monotonic() < deadline:
            guest.send(F.pack(F.Meta(F.CSUM_BLANK), dhcp_discover(0x42)))
            try:
                while device.lease is None:
                    guest.recv(F.MAX_MESSAGE)
            except TimeoutError:
                pass
        assert device.lease is not None, logs
        subnet, routers = device.lease

        def arp_answered(target: str) -> bool:
            guest.send(F.pack(F.PLAIN, arp_request(target, "0.0.0.0")))
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                try:
                    f = guest.recv(F.MAX_MESSAGE)[8:]
                except TimeoutError:
                    return False
                if (f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02"
                        and f[28:32] == socket.inet_aton(target)):
                    return True
            return False

        outside = "10.0.5.2" if socket.inet_aton("10.0.5.2") not in routers and \
            not subnet.overlaps(ipaddress.IPv4Network("10.0.5.0/24")) else "172.31.254.2"
        assert not arp_answered(outside) and device.held_back >= 1
        if routers:
            assert arp_answered(socket.inet_ntoa(sorted(routers)[0]))
    finally:
        up.close()
    assert owner.owned == ()
    guest.close()


def test_a_tap_is_the_networks_not_a_vifs(lan: tuple[Switches, list[str]], tmp_path: Path) -> None:
    sw, logs = lan
    net = sw.get("lan0")
    guest, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    owner = net.add_port("d1.0", theirs, GUEST_MAC)
    with pytest.raises(ValueError, match="not one vif's"):
        make_uplink("tap:t0", net, tmp_path, [], logs.append, owner=owner)
    guest.close()
