"""save / restore of a domain with a vif (docs/save-format.md, "The network"): the restored domain gets
its vif back with the same devid and MAC, the guest's stock xen-netfront reconnects to the new netback
through xenbus, and it talks to the domain it shared a network with before: ping and a checksummed nc
transfer both ways; and a domain 0 restarted after the restore plugs the restored domain's vifs back in
as it does for any domain it adopts."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import Xl, reaches
from .test_daemon_restart import start_daemon
from .test_disks import text, wait_for
from .test_network import up

pytestmark = pytest.mark.slow


def _guest_mac(xl: Xl, dom: str) -> str:
    r = xl("exec", dom, "cat /sys/class/net/eth0/address")
    macs = re.findall(r"^([0-9a-f]{2}(?::[0-9a-f]{2}){5})$", text(r), re.M)
    assert macs, r.stdout
    return macs[-1]


def _transfer(xl: Xl, src: str, dst: str, dst_ip: str, port: int) -> None:
    """4 MiB of random bytes from `src` to `dst` over TCP, the checksums compared."""
    xl("exec", dst, f"(sleep 100000 | nc -l -p {port} | md5sum > /tmp/rx{port}.md5) > /dev/null 2>&1 &")
    r = xl("exec", src, "dd if=/dev/urandom of=/tmp/blob bs=1M count=4 2>/dev/null && md5sum /tmp/blob")
    sent = re.search(r"^([0-9a-f]{32})\s+/tmp/blob", text(r), re.M)
    assert sent, r.stdout
    r = xl("exec", src, f"nc {dst_ip} {port} < /tmp/blob && echo SENT", "--timeout", "180")
    assert "SENT" in r.stdout, r.stdout
    wait_for(xl, dst, f"[ -s /tmp/rx{port}.md5 ]", timeout=60)
    got = xl("exec", dst, f"cat /tmp/rx{port}.md5").stdout
    assert sent.group(1) in got, (sent.group(1), got)


def test_vif_survives_save_restore(xl: Xl, tmp_path: Path) -> None:
    up(xl, tmp_path, "nr1", 1)
    up(xl, tmp_path, "nr2", 2)
    assert reaches(xl, "nr2", "10.0.0.1")
    mac = _guest_mac(xl, "nr2")
    assert mac == "00:16:3e:00:00:02"
    save = tmp_path / "nr2.save"
    r = xl("save", "nr2", str(save))
    assert "Saved: saved" in r.stderr, r.stderr
    assert "nr2" not in xl.rows()
    assert "00:16:3e:00:00:02" not in xl("network-list", "nr1").stdout
    r = xl("restore", str(save))
    assert "Restored domain nr2" in r.stderr, r.stderr
    # domain 0's side: the vif is back, same devid and MAC, on the same network
    listing = xl("network-list", "nr2").stdout
    row = [ln for ln in listing.splitlines() if "00:16:3e:00:00:02" in ln]
    assert row and row[0].split()[0] == "0" and "network lan0" in listing, listing
    # the guest's side: the same interface (its address was never configured again), connected again
    wait_for(xl, "nr2", "[ \"$(cat /sys/class/net/eth0/carrier 2>/dev/null)\" = 1 ]", timeout=60)
    assert _guest_mac(xl, "nr2") == mac
    assert "10.0.0.2/24" in xl("exec", "nr2", "ip -4 addr show eth0").stdout
    assert reaches(xl, "nr2", "10.0.0.1")
    assert reaches(xl, "nr1", "10.0.0.2")
    _transfer(xl, "nr1", "nr2", "10.0.0.2", 5003)
    _transfer(xl, "nr2", "nr1", "10.0.0.1", 5004)
    # the frontend is connected (XenbusStateConnected) to the new backend, as network-list shows it
    rows = [ln.split() for ln in xl("network-list", "nr2").stdout.splitlines()[1:]]
    assert rows and rows[0][4] == "4", rows
    xl("destroy", "nr2")
    xl("destroy", "nr1")


def test_restored_vif_survives_a_domain0_restart(xl: Xl, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    """The restored domain's record keeps its vifs (as create's does): a new domain 0 after kill -9 of
    the daemon plugs them back in, and the network works again."""
    up(xl, tmp_path, "na1", 1)
    up(xl, tmp_path, "na2", 2)
    save = tmp_path / "na2.save"
    xl("save", "na2", str(save))
    xl("restore", str(save))
    assert reaches(xl, "na2", "10.0.0.1")
    daemon, _log = request.node.hd_daemon
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    new = start_daemon(xl, tmp_path, request, "daemon2")
    try:
        assert {"na1", "na2"} <= set(xl.rows())
        row = [ln for ln in xl("network-list", "na2").stdout.splitlines() if "00:16:3e:00:00:02" in ln]
        assert row, xl("network-list", "na2").stdout
        assert reaches(xl, "na2", "10.0.0.1")
        assert reaches(xl, "na1", "10.0.0.2")
    finally:
        new.terminate()
        try:
            new.wait(20)
        except subprocess.TimeoutExpired:
            new.kill()
