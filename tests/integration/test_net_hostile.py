"""A hostile netfront (issue 8): from inside a guest, netif packets with bad grant references, sizes that
do not add up, frames shorter than an Ethernet header, bad extra info, endless multi-slot packets and
finally an overflowed ring fail alone; the vif's good packets still go out, the daemon and the other
domains on the same network carry on.

The guest side is tests/guest/hostile_netfront.c, built here with `gcc -static` and added to the default
initramfs as /bin/hostile_net (a second newc archive). The hostile domain boots with its vif in its
config, so the stock xen-netfront connects first; the test unbinds the device from it (xenbus holds a
reference on a driver's module while it is bound to a device, so rmmod alone fails with EAGAIN), the
backend follows the frontend to Closed, and the module is unloaded. The program takes the device from there
as its only frontend: Closed -> Initialising brings the backend back to InitWait, the same path as a
reloaded driver. It shares its rings through
/dev/xen/gntalloc, binds an event channel through /dev/xen/evtchn and writes its xenbus nodes through
/dev/xen/xenbus. A second domain on the network (`peer`) answers its ARP requests, a third (`third`) is
only there to be pinged.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages
from hyperdisco.xen.io import netif
from hyperdisco.xen.io import xenbus as xb

from .conftest import Xl, build_guest_program, domain_cfg, initrd_with_program, reaches

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent.parent / "guest" / "hostile_netfront.c"
NET = "hostilenet"
MAC = {"hostile": "00:16:3e:4e:00:02", "peer": "00:16:3e:4e:00:03", "third": "00:16:3e:4e:00:04"}
IP = {"hostile": "10.9.0.2", "peer": "10.9.0.3", "third": "10.9.0.4"}

OK, ERR, NULL = netif.RSP_OKAY, netif.RSP_ERROR, netif.RSP_NULL

# each packet's slot statuses, in slot order (netif.h: XEN_NETIF_RSP_OKAY 0, ERROR -1, NULL 1 for extra
# info slots)
EXPECTED_TX = {
    "good_frame": [OK],
    "good_from_readonly_grant": [OK],  # tx only reads the guest's page: read-only is enough
    "good_two_fragments": [OK, OK],
    "gref_out_of_range": [ERR],  # no such grant entry
    "gref_revoked": [ERR],  # granted, then ended by the guest (gntalloc dealloc)
    "gref_other_domain": [ERR],  # granted to domain 7, not to the backend's domain 0
    "second_fragment_bad_gref": [ERR, ERR],  # a bad packet is answered ERROR in every slot
    "size_below_fragments": [ERR, ERR],  # a 30-byte packet whose second fragment holds 100
    "shorter_than_ethernet_header": [ERR],  # 10 bytes
    "empty_packet": [ERR],
    "gso_unknown_type": [ERR, NULL],  # the extra slot answers NULL whatever the packet's fate
    "good_after_errors": [OK],
    "good_after_flood": [OK],
    "good_after_reconnect_1": [OK],
    "good_after_reconnect_2": [OK],
    "good_after_reconnect_3": [OK],
    "good_after_reconnect_4": [OK],
}
# packets that break the ring (Linux's xenvif_fatal_tx_err): no response, the vif is disconnected
FATAL = ("offset_crosses_page", "unknown_extra_type", "twenty_two_slots", "packet_cut_off",
         "req_prod_overflow")

# handshakes the backend refuses (Closing, and why in its error node)
REFUSED = {
    "no_rx_copy": "does not ask for the copying rx path",
    "readonly_tx_ring": "is read-only",
    "event_channel_not_offered": "port 1 is not offered to domain 0",  # one of the guest kernel's own ports
    # past the ports the domain holds (max_event_channels 1023): refused by the bound on the node
    "event_channel_out_of_range": "gave no valid tx-ring-ref, rx-ring-ref or event-channel",
}

# what netback logs (one line per kind of bad packet, rate-limited)
COMPLAINTS = (
    "tx grant: grant reference 999999 out of range",
    "is for domain 7, not 0",
    "smaller than its fragments",
    "packet of 10 bytes",
    "bad GSO extra (type 9",
    "rx grant: grant",  # the read-only rx buffer
    "ring broken, disconnecting",
    "frontend does not ask for the copying rx path",
    "cannot connect tx-ring-ref",
)


def build(tmp_path: Path) -> Path:
    return build_guest_program(SOURCE, tmp_path / "hostile_net")


def initrd_with(images: GuestImages, binary: Path, out: Path) -> Path:
    return initrd_with_program(images, binary, "hostile_net", out)


def vif(name: str, with_ip: bool = True) -> str:
    ip = f", ip={IP[name]}/24" if with_ip else ""
    return f"vif = [ 'mac={MAC[name]}, bridge={NET}{ip}' ]"


def wait_xs(xl: Xl, path: str, want: set[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        v = xl("xenstore", "read", path, check=False).stdout.strip()
        if v in want:
            return v
        assert time.monotonic() < deadline, (path, v)
        time.sleep(0.2)


def ping(xl: Xl, src: str, dst: str) -> str:
    return "ping-ok" if reaches(xl, src, IP[dst]) else "ping-failed"


def test_hostile_netfront_fails_alone(xl: Xl, tmp_path: Path, images: GuestImages) -> None:
    binary = build(tmp_path)
    initrd = initrd_with(images, binary, tmp_path / "initrd-hostile-net.cpio")

    xl("create", domain_cfg(tmp_path, "peer", vif("peer")))
    xl("create", domain_cfg(tmp_path, "third", vif("third")))
    xl("create", domain_cfg(tmp_path, "hostile", f'kernel = "{images.kernel}"', f'ramdisk = "{initrd}"',
                            vif("hostile", with_ip=False)))
    assert "ping-ok" in ping(xl, "peer", "third")  # the network works before anything hostile happens

    # the stock netfront lets go of the device (the backend follows it to Closed) and is unloaded; the
    # program is the only frontend
    r = xl("exec", "hostile", "echo vif-0 > /sys/bus/xen/drivers/vif/unbind && rmmod xen_netfront && "
                              "modprobe xen-evtchn && modprobe xen-gntalloc && "
                              "ls /dev/xen /sys/class/net && ls -l /bin/hostile_net", "--timeout", "120")
    assert all(d in r.stdout for d in ("evtchn", "gntalloc", "xenbus", "/bin/hostile_net")), r.stdout
    assert "eth0" not in r.stdout, r.stdout
    dom = xl("domid", "hostile").stdout.strip()
    be = f"/local/domain/0/backend/vif/{dom}/0"
    wait_xs(xl, f"{be}/state", {str(xb.XenbusStateClosed)})

    r = xl("exec", "hostile", f"/bin/hostile_net 0 {IP['hostile']} {IP['peer']}", "--timeout", "150",
           timeout=180, check=False)
    out = r.stdout
    assert "HOSTILE DONE" in out, (out, r.stderr)

    # the handshakes: the bad ones refused (the error node says why), then good ones
    for name, why in REFUSED.items():
        m = re.search(rf"^HANDSHAKE {name} .* backend-state (\d+) error (.*)$", out, re.M)
        assert m and int(m.group(1)) == xb.XenbusStateClosing and why in m.group(2), (name, out)
    for name in ("main", "after_offset_crosses_page", "after_unknown_extra_type", "after_twenty_two_slots",
                 "after_packet_cut_off"):
        assert re.search(rf"^HANDSHAKE {name} .* backend-state {xb.XenbusStateConnected}$", out, re.M), \
            (name, out)

    # every tx case got its statuses, one per slot
    tx = re.findall(r"^TX (\w+) status ([-\d,]+)$", out, re.M)
    got = {k: [int(s) for s in v.split(",")] for k, v in tx}
    assert "badid" not in out and "timeout" not in out, out
    assert {k: got.get(k) for k in EXPECTED_TX} == EXPECTED_TX, out
    arps = [v for k, v in got.items() if k.startswith("arp_request_")]
    assert arps and all(v == [OK] for v in arps), out
    # a ring filled ten times over with good frames: every one answered OKAY
    assert "TX flood sent 2000 okay 2000 other 0 " in out, out

    # rx: the read-only buffer is answered ERROR (nothing written into it); a writable one gets the
    # peer's ARP reply to the requests the hostile program sent
    assert re.search(rf"^RX readonly status {ERR}$", out, re.M), out
    m = re.search(r"^RX arp_reply status (\S+)$", out, re.M)
    assert m and m.group(1) != "none" and 42 <= int(m.group(1)) <= 60, out

    # each ring-breaking packet: no response, the backend went Closing; the vif came back each time
    for name in FATAL:
        assert f"FATAL {name} backend-state {xb.XenbusStateClosing} responses 0" in out, (name, out)
    # (the refused handshakes' error nodes were read by the program itself, above)
    assert xl("xenstore", "read", f"{be}/state").stdout.strip() == str(xb.XenbusStateClosing)

    log = xl("dmesg").stdout
    for line in COMPLAINTS:
        assert line in log, (line, log[-4000:])
    assert "internal error" not in log, log[-4000:]

    # the daemon, the hostile domain itself and the others on the network carry on
    rows = xl.rows()
    assert {"hostile", "peer", "third"} <= set(rows), rows
    assert xl("exec", "hostile", "echo still-alive").stdout.strip().endswith("still-alive")
    assert "ping-ok" in ping(xl, "peer", "third")
    assert "ping-ok" in ping(xl, "third", "peer")
    # the hostile vif's good frames did reach the peer: its kernel learnt the MAC from the ARP requests
    arp = xl("exec", "peer", "cat /proc/net/arp").stdout
    assert re.search(rf"^{re.escape(IP['hostile'])}\s.*{MAC['hostile']}", arp, re.M | re.I), arp
