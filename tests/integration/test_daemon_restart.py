"""Domain 0 can die and come back without its domains (docs/process-model.md, "Outliving domain 0"):
after `kill -9` of the daemon the domain processes keep running, and a new daemon on the same socket
adopts them: their consoles, xenstore state (and the guests' watches) and block devices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg, domain_pid, reaches

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_9_of_the_daemon_and_a_new_one_adopts_the_domains(xl: Xl, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    disk = tmp_path / "data.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    xl("create", domain_cfg(tmp_path, "keep", f"disk = [ 'format=raw, vdev=xvdb, access=rw, target={disk}' ]",
                            memory=96))
    xl("create", domain_cfg(tmp_path, "other", memory=96))
    xl("exec", "keep", "echo before > /tmp/mark; echo on-disk | dd of=/dev/xvdb bs=512 count=1 "
                       "conv=sync,fsync 2>/dev/null", "--timeout", "120")
    xl("exec", "other", "true", "--timeout", "120")
    rows = xl("list", "-l").stdout
    daemon, log_path = request.node.hd_daemon
    pids = [domain_pid(xl, "keep"), domain_pid(xl, "other")]
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    time.sleep(1)
    assert all(alive(p) for p in pids), rows  # the domains did not die with their domain 0

    log = open(tmp_path / "daemon2.log", "w")
    sock = Path(xl.env["HYPERDISCO_SOCKET"])
    new = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(sock), "-v"],
                           stdout=log, stderr=subprocess.STDOUT)
    request.node.hd_daemon = (new, tmp_path / "daemon2.log")
    try:
        deadline = time.monotonic() + 30
        while True:  # the stale socket is replaced once the new daemon serves
            p = xl("list", check=False)
            if p.returncode == 0:
                break
            assert new.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon2.log").read_text()
            time.sleep(0.2)
        rows2 = xl.rows()
        assert {"keep", "other"} <= set(rows2), rows2
        assert "adopted domain" in (tmp_path / "daemon2.log").read_text()
        # the same guest, still running: its files, its disk, a clock that went on
        out = xl("exec", "keep", "cat /tmp/mark; dd if=/dev/xvdb bs=512 count=1 2>/dev/null | head -c 7",
                 "--timeout", "60").stdout.split()
        assert out == ["before", "on-disk"], out
        blocks = xl("block-list", "keep").stdout
        assert "51728" in blocks
        # the guest's own xenstore watch on control/shutdown survived: a clean shutdown still works
        xl("shutdown", "-w", "other", timeout=120)
        assert "other" not in xl.rows()
        assert xl("xenstore", "read", "/local/domain/1/name").stdout.strip() == "keep"
        xl("destroy", "keep")
        assert "keep" not in xl.rows()
    finally:
        new.terminate()
        try:
            new.wait(20)
        except subprocess.TimeoutExpired:
            new.kill()
        log.close()


def start_daemon(xl: Xl, tmp_path: Path, request: pytest.FixtureRequest,
                 name: str) -> subprocess.Popen[bytes]:
    log = open(tmp_path / f"{name}.log", "w")
    sock = Path(xl.env["HYPERDISCO_SOCKET"])
    new = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(sock), "-v"],
                           stdout=log, stderr=subprocess.STDOUT)
    log.close()
    request.node.hd_daemon = (new, tmp_path / f"{name}.log")
    deadline = time.monotonic() + 30
    while xl("list", check=False).returncode != 0:
        assert new.poll() is None and time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()
        time.sleep(0.2)
    return new


def test_a_guest_rebooting_across_a_domain0_restart_is_restarted_and_networks_come_back(
        xl: Xl, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A real guest's reboot closes its xenbus devices through xenstore, so it completes only once the
    next domain 0 serves it (as with Xen's xenstored down); that domain 0 then restarts the guest, and the
    vifs of the adopted domain are on its new switch. (The reboot that completes while no domain 0 runs
    is tests/unit/test_host_lifecycle.py's, with a scripted guest.)"""
    from .test_disks import wait_for

    for n in (1, 2):
        xl("create", domain_cfg(tmp_path, f"r{n}", f"vif = [ 'mac=00:16:3e:00:01:0{n}, bridge=lan0, "
                                                   f"ip=10.0.1.{n}/24' ]", memory=96))
        wait_for(xl, f"r{n}", f"ip -4 addr show eth0 | grep -q 10.0.1.{n}/24", timeout=60)
    assert reaches(xl, "r1", "10.0.1.2")
    old_id = xl.rows()["r2"][1]
    xl("exec", "r2", "(sleep 3; reboot -f) > /dev/null 2>&1 &")
    daemon, _log = request.node.hd_daemon
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    time.sleep(8)  # r2 starts its reboot with nobody to serve it
    new = start_daemon(xl, tmp_path, request, "daemon2")
    try:
        deadline = time.monotonic() + 60
        while True:  # the new domain 0 learns of the reboot and restarts r2 (a new domain ID)
            rows = xl.rows()
            if "r2" in rows and rows["r2"][1] != old_id:
                break
            # the adopted processes' stderr (an engine crash's thread dump) is still the first daemon's log
            assert time.monotonic() < deadline, (rows, (tmp_path / "daemon.log").read_text()[-4000:])
            time.sleep(0.5)
        wait_for(xl, "r2", "ip -4 addr show eth0 | grep -q 10.0.1.2/24", timeout=60)
        # r1 was adopted with its vif on a new switch: the network works again, both ways
        assert reaches(xl, "r1", "10.0.1.2")
        assert reaches(xl, "r2", "10.0.1.1")
    finally:
        new.terminate()
        try:
            new.wait(20)
        except subprocess.TimeoutExpired:
            new.kill()
