"""The virtual network end to end (issue 8): the stock xen-netfront in each guest, netback in each
domain's process, domain 0's switch between them, and the uplink to the host through passt."""

from __future__ import annotations

import re
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg, never_reaches, reaches
from .test_disks import text, wait_for

pytestmark = pytest.mark.slow

MIB = 64


def vif(n: int, net: str = "lan0", extra: str = "") -> str:
    return f"vif = [ 'mac=00:16:3e:00:00:{n:02x}, bridge={net}, ip=10.0.0.{n}/24{extra}' ]"


def up(xl: Xl, tmp_path: Path, name: str, n: int, net: str = "lan0", memory: int = 128) -> None:
    xl("create", domain_cfg(tmp_path, name, vif(n, net), memory=memory))
    wait_for(xl, name, f"ip -4 addr show eth0 | grep -q 10.0.0.{n}/24", timeout=60)


def test_two_domains_talk_tcp_and_other_networks_are_apart(xl: Xl, tmp_path: Path) -> None:
    up(xl, tmp_path, "n1", 1, memory=256)
    up(xl, tmp_path, "n2", 2, memory=256)
    up(xl, tmp_path, "n3", 3, net="lan1")
    assert reaches(xl, "n1", "10.0.0.2")
    assert reaches(xl, "n2", "10.0.0.1")
    assert never_reaches(xl, "n3", "10.0.0.1")  # another network: never reaches lan0
    # 64 MiB of pseudo-random bytes, checksummed on both sides
    # (busybox nc ends when its stdin ends: the listener's is a pipe that stays open)
    xl("exec", "n2", "(sleep 100000 | nc -l -p 5001 | md5sum > /tmp/rx.md5) > /dev/null 2>&1 &")
    r = xl("exec", "n1", f"dd if=/dev/urandom of=/tmp/blob bs=1M count={MIB} 2>/dev/null && md5sum /tmp/blob",
           "--timeout", "120")
    sent = re.search(r"^([0-9a-f]{32})\s+/tmp/blob", text(r), re.M)
    assert sent, r.stdout
    r = xl("exec", "n1", "nc 10.0.0.2 5001 < /tmp/blob && echo SENT", "--timeout", "300")
    assert "SENT" in r.stdout, r.stdout
    wait_for(xl, "n2", "[ -s /tmp/rx.md5 ]", timeout=60)
    got = xl("exec", "n2", "cat /tmp/rx.md5").stdout
    assert sent.group(1) in got, (sent.group(1), got)
    # the toolstack shows the traffic
    listing = xl("network-list", "n1").stdout
    assert "lan0" in listing and "00:16:3e:00:00:01" in listing, listing


def test_spoofed_source_mac_is_dropped(xl: Xl, tmp_path: Path) -> None:
    up(xl, tmp_path, "s1", 1)
    up(xl, tmp_path, "s2", 2)
    assert reaches(xl, "s1", "10.0.0.2")
    xl("exec", "s1", "ip link set eth0 down; ip link set eth0 address 00:16:3e:00:00:02; ip link set eth0 up;"
                     " ip addr add 10.0.0.1/24 dev eth0 2>/dev/null; true")
    assert never_reaches(xl, "s1", "10.0.0.2")
    listing = xl("network-list", "s1").stdout
    assert re.search(r"spoof\D*[1-9]", listing, re.I) or "drop" in listing.lower(), listing
    xl("exec", "s1", "ip link set eth0 down; ip link set eth0 address 00:16:3e:00:00:01; ip link set eth0 up;"
                     " ip addr add 10.0.0.1/24 dev eth0 2>/dev/null; true")
    assert reaches(xl, "s1", "10.0.0.2")  # its own address works again


def test_detach_attach_and_destroy_with_traffic_in_flight(xl: Xl, tmp_path: Path) -> None:
    up(xl, tmp_path, "t1", 1)
    up(xl, tmp_path, "t2", 2)
    xl("network-detach", "t2", "0", timeout=60)
    wait_for(xl, "t2", "! [ -e /sys/class/net/eth0 ]", timeout=30)
    assert never_reaches(xl, "t1", "10.0.0.2")
    xl("network-attach", "t2", "mac=00:16:3e:00:00:02", "bridge=lan0")
    wait_for(xl, "t2", "[ -e /sys/class/net/eth0 ]", timeout=30)
    xl("exec", "t2", "ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0")
    assert reaches(xl, "t1", "10.0.0.2")
    # a stream in flight, then its receiver is destroyed: the sender, the daemon and others carry on
    xl("exec", "t2", "(sleep 100000 | nc -l -p 5002 > /dev/null) > /dev/null 2>&1 &")
    xl("exec", "t1", "(dd if=/dev/zero bs=64k count=100000 | nc 10.0.0.2 5002) > /dev/null 2>&1 &")
    time.sleep(3)
    xl("destroy", "t2")
    assert "t2" not in xl.rows()
    r = xl("exec", "t1", "echo still-here", "--timeout", "60")
    assert "still-here" in r.stdout
    up(xl, tmp_path, "t3", 3)
    assert reaches(xl, "t3", "10.0.0.1")


PASST = shutil.which("passt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(PASST is None, reason="passt is not installed (apt-get install passt)")
def test_uplink_dhcp_and_port_forward_to_guest_httpd(xl: Xl, tmp_path: Path) -> None:
    port = free_port()
    cfg = domain_cfg(tmp_path, "u1", f"vif = [ 'bridge=up0, uplink=passt, hostfwd=tcp:{port}:80' ]")
    xl("create", cfg)
    wait_for(xl, "u1", "ip -4 addr show eth0 | grep -q 'inet '", timeout=60)  # a lease from passt
    xl("exec", "u1", "mkdir -p /www && echo hello-from-the-guest > /www/index.html && httpd -p 80 -h /www")
    deadline = time.monotonic() + 30
    body = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                body = resp.read().decode()
            break
        except OSError:
            time.sleep(0.5)
    assert "hello-from-the-guest" in body


def fetch(port: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.skipif(PASST is None, reason="passt is not installed (apt-get install passt)")
def test_two_domains_each_with_their_own_passt_on_one_network(xl: Xl, tmp_path: Path) -> None:
    """One passt per vif: both guests get a lease (passt gives both the host's address), each serves its
    own page on its own forwarded port, and they still reach each other on the network (static extra
    addresses: their passts must not answer ARP for them)."""
    ports = {}
    for n in (1, 2):
        ports[n] = port = free_port()
        xl("create", domain_cfg(tmp_path, f"w{n}", f"vif = [ 'mac=00:16:3e:00:05:{n:02x}, bridge=up2, "
                                                   f"uplink=passt, hostfwd=tcp:{port}:80' ]"))
    for n in (1, 2):
        wait_for(xl, f"w{n}", "ip -4 addr show eth0 | grep -q 'inet '", timeout=60)  # each its own lease
        xl("exec", f"w{n}", f"ip addr add 10.0.5.{n}/24 dev eth0 && mkdir -p /www && "
                            f"echo hello-from-w{n} > /www/index.html && httpd -p 80 -h /www")
    for n in (1, 2):
        body = fetch(ports[n])
        assert f"hello-from-w{n}" in body, (n, body)
    assert reaches(xl, "w1", "10.0.5.2")
    assert reaches(xl, "w2", "10.0.5.1")
    for n in (1, 2):                                   # and the forwards still go where they went
        assert f"hello-from-w{n}" in fetch(ports[n])
    listing = xl("network-list", "w1", "w2").stdout
    assert "up2" in listing and "00:16:3e:00:05:01" in listing and "00:16:3e:00:05:02" in listing, listing
    assert "w2" in xl("list", "-l").stdout
