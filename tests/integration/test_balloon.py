"""Ballooning with the guest's stock balloon driver (CONFIG_XEN_BALLOON=y in Debian's cloud kernel):
xl mem-set down, the guest gives the memory back and the host's memory of the domain process drops;
mem-set up, the guest takes it again and uses it; mem-set bounds what the guest may take back itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg, domain_pid

pytestmark = pytest.mark.slow

INFO = "/sys/devices/system/xen_memory/xen_memory0"


def current_kb(xl: Xl, dom: str) -> int:
    return int(xl("exec", dom, f"cat {INFO}/info/current_kb", timeout=240).stdout.split()[-1])


def wait_current(xl: Xl, dom: str, ok: object, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    kb = current_kb(xl, dom)
    while not ok(kb):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"the balloon stayed at {kb} KiB"
        time.sleep(2)
        kb = current_kb(xl, dom)
    return kb


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_mem_set_gives_memory_back_to_the_host(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "bal", memory=256))
    start_kb = current_kb(xl, "bal")
    assert 240 << 10 <= start_kb <= 256 << 10, start_kb
    # touch most of the guest's memory, then free it: host memory the guest no longer uses (busybox dd
    # reads into one buffer of bs bytes)
    assert "1+0 records in" in xl("exec", "bal", "dd if=/dev/zero of=/dev/null bs=160M count=1 2>&1",
                                  timeout=240).stdout
    pid = domain_pid(xl, "bal")
    before = rss_kib(pid)
    total_before = int(xl("exec", "bal", "grep MemTotal /proc/meminfo").stdout.split()[1])

    xl("mem-set", "bal", "96")  # the kernel keeps ~40 MiB of a 256 MiB domain: 96 leaves it ~56 free
    down = wait_current(xl, "bal", lambda kb: kb <= (96 << 10) + 1024)
    assert down >= 92 << 10, down  # what was asked, not less
    after = rss_kib(pid)
    assert before - after >= 80 << 10, (before, after)  # the host got back most of the 160 MiB given
    total_after = int(xl("exec", "bal", "grep MemTotal /proc/meminfo").stdout.split()[1])
    assert total_after <= total_before - (150 << 10), (total_before, total_after)
    assert int(xl.rows()["bal"][2]) <= 98  # list's Mem: what the domain holds now

    # the guest cannot take back more than the target: max_pages is the target + 1 MiB (libxl enforce)
    xl("exec", "bal", f"echo {256 << 10} > {INFO}/target_kb")
    time.sleep(5)
    assert current_kb(xl, "bal") <= (96 << 10) + 1024 + 4
    refused = xl("mem-set", "bal", "300", check=False)
    assert refused.returncode != 0 and "above bal's maximum (256 MiB" in refused.stderr
    assert refused.stderr.count("\n") == 1

    xl("mem-set", "bal", "256")
    up = wait_current(xl, "bal", lambda kb: kb >= start_kb - 1024)
    assert up <= 256 << 10
    out = xl("exec", "bal", "dd if=/dev/zero of=/dev/null bs=160M count=1 2>&1 && echo alive",
             timeout=240).stdout
    assert "1+0 records in" in out and out.strip().endswith("alive")  # the memory taken back works
    assert xl.rows()["bal"][2] in ("255", "256")


def test_maxmem_boots_ballooned_down_and_grows(xl: Xl, tmp_path: Path) -> None:
    """memory = 128, maxmem = 256: the guest's RAM is 256 MiB and its balloon driver gives 128 back as
    soon as it reads its target (Xen's populate-on-demand boot); mem-set 256 later gives it all."""
    xl("create", domain_cfg(tmp_path, "mx", "maxmem = 256", memory=128))
    down = wait_current(xl, "mx", lambda kb: kb <= (128 << 10) + 1024)
    assert down >= 124 << 10, down
    low = xl("exec", "mx", "dd if=/dev/zero of=/dev/null bs=160M count=1 2>&1; echo rc=$?").stdout
    assert "rc=0" not in low  # 128 MiB (less the kernel's own) cannot hold a 160 MiB buffer
    xl("mem-set", "mx", "256")
    up = wait_current(xl, "mx", lambda kb: kb >= 250 << 10)
    assert up <= 256 << 10
    out = xl("exec", "mx", "dd if=/dev/zero of=/dev/null bs=160M count=1 2>&1 && echo alive",
             timeout=240).stdout
    assert out.strip().endswith("alive")
    assert xl("mem-set", "mx", "257", check=False).returncode != 0
