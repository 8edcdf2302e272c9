"""A vif's `rate=` (xl-network-configuration(5)) limits what its guest can send, as Linux netback's credit
scheduler does: domain 0 writes the backend's `rate` node, the netback in the domain process holds
packets on the tx ring until credit returns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg
from .test_disks import wait_for

pytestmark = pytest.mark.slow


def test_rate_limits_the_senders_throughput(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "slow", "vif = [ 'mac=00:16:3e:00:02:01, bridge=rl, ip=10.0.2.1/24, "
                                              "rate=8Mb/s' ]"))
    xl("create", domain_cfg(tmp_path, "sink", "vif = [ 'mac=00:16:3e:00:02:02, bridge=rl, ip=10.0.2.2/24' ]"))
    for name, ip in (("slow", "10.0.2.1"), ("sink", "10.0.2.2")):
        wait_for(xl, name, f"ip -4 addr show eth0 | grep -q {ip}/24", timeout=60)
    xl("exec", "sink", "(sleep 100000 | nc -l -p 5003 > /dev/null) > /dev/null 2>&1 &")
    # 4 MiB at 1 MB/s (128 KiB of burst): about 4 s; unlimited this takes well under a second here
    r = xl("exec", "slow", "read s x < /proc/uptime; dd if=/dev/zero bs=64k count=64 2>/dev/null "
                           "| nc 10.0.2.2 5003; read e x < /proc/uptime; echo TOOK $s $e", "--timeout", "120")
    m = re.search(r"TOOK ([\d.]+) ([\d.]+)", r.stdout)
    assert m, r.stdout
    took = float(m.group(2)) - float(m.group(1))
    assert took > 3.0, f"4 MiB at 8 Mb/s took only {took:.2f}s"
    assert took < 30.0
