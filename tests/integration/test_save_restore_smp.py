"""save / restore of a two-vCPU domain (docs/save-format.md, "Several vCPUs"): the stock kernel suspends
from inside stop_machine with its second CPU spinning there, both vCPUs are saved and restored as they
were, the guest's xen_vcpu_restore takes the second CPU down and up again around its vcpu_info
registration, and both CPUs carry on: a counter pinned to each CPU (each sleeping between steps, so each
CPU's own timer must work after the restore) continues without a gap or a repeat. With save -c the
original domain carries on too; a CPU taken offline before the save is offline after it and comes back
with vcpu-set."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg
from .test_disks import text, wait_for

pytestmark = pytest.mark.slow


def _start_counters(xl: Xl, dom: str) -> None:
    for cpu in (0, 1):
        xl("exec", dom, f"(taskset -c {cpu} sh -c 'i=0; while true; do i=$((i+1)); echo $i >> /tmp/c{cpu}; "
                        f"sleep 0.2; done') >/dev/null 2>&1 &")


def _counts(xl: Xl, dom: str, cpu: int) -> list[int]:
    r = xl("exec", dom, f"cat /tmp/c{cpu}", "--timeout", "120")
    return [int(x) for x in text(r).split() if x.isdigit()]


def _carries_on(xl: Xl, dom: str, before: dict[int, int]) -> None:
    """Each CPU's counter goes on 10 steps past what it was at the save (each step sleeps: that CPU's
    timer works; how long it takes depends on the host's load) with no gap and no repeat."""
    for cpu in (0, 1):
        wait_for(xl, dom, f"[ $(wc -l < /tmp/c{cpu}) -ge {before[cpu] + 10} ]", timeout=120)
        counts = _counts(xl, dom, cpu)
        assert counts == list(range(1, len(counts) + 1)), (cpu, counts)
    r = xl("exec", dom, "cat /sys/devices/system/cpu/online; nproc")
    assert text(r).split()[-2:] == ["0-1", "2"], r.stdout


def test_two_vcpus_save_restore(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "smpsr", "vcpus = 2", memory=192))
    wait_for(xl, "smpsr", "[ $(nproc) = 2 ]", timeout=60)
    _start_counters(xl, "smpsr")
    time.sleep(2.0)
    before = {cpu: len(_counts(xl, "smpsr", cpu)) for cpu in (0, 1)}
    save = tmp_path / "smpsr.save"
    r = xl("save", "smpsr", str(save))
    assert "Saved: saved" in r.stderr, r.stderr
    assert "smpsr" not in xl.rows()
    r = xl("restore", str(save))
    assert "Restored domain smpsr" in r.stderr, r.stderr
    assert xl.rows()["smpsr"][3] == "2"
    _carries_on(xl, "smpsr", before)
    assert "BUG" not in xl("exec", "smpsr", "dmesg | grep -c -e BUG -e 'vcpu restore failed' || true").stdout
    xl("destroy", "smpsr")


def test_two_vcpus_checkpoint_and_offline_cpu(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "smpck", "vcpus = 2", memory=192))
    wait_for(xl, "smpck", "[ $(nproc) = 2 ]", timeout=60)
    _start_counters(xl, "smpck")
    time.sleep(2.0)
    before = {cpu: len(_counts(xl, "smpck", cpu)) for cpu in (0, 1)}
    save = tmp_path / "smpck.save"
    r = xl("save", "-c", "smpck", str(save))
    assert "Saved: saved" in r.stderr, r.stderr
    _carries_on(xl, "smpck", before)  # the original, its suspend cancelled
    xl("destroy", "smpck")
    xl("restore", str(save))
    _carries_on(xl, "smpck", before)  # the copy
    # a CPU taken offline before a save is offline after the restore, and comes back
    xl("vcpu-set", "smpck", "1")
    wait_for(xl, "smpck", "[ \"$(cat /sys/devices/system/cpu/online)\" = 0 ]", timeout=60)
    save2 = tmp_path / "smpck2.save"
    xl("save", "smpck", str(save2))
    xl("restore", str(save2))
    r = xl("exec", "smpck", "cat /sys/devices/system/cpu/online; echo up")
    assert text(r).split()[-2:] == ["0", "up"], r.stdout
    # the toolstack's side says so too: the restored domain's availability is what vcpu-set left
    domid = xl("domid", "smpck").stdout.strip()
    assert xl("xenstore", "read", f"/local/domain/{domid}/cpu/1/availability").stdout.strip() == "offline"
    assert xl.rows()["smpck"][3] == "1"
    xl("vcpu-set", "smpck", "2")
    wait_for(xl, "smpck", "echo 1 > /sys/devices/system/cpu/cpu1/online 2>/dev/null; "
                          "[ \"$(cat /sys/devices/system/cpu/online)\" = 0-1 ]", timeout=60)
    r = xl("exec", "smpck", "taskset -c 1 sh -c 'sleep 0.5; echo on-cpu1'")
    assert "on-cpu1" in r.stdout, r.stdout
    xl("destroy", "smpck")
