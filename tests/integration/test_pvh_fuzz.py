"""The hypercall fuzzer guest (tests/pvh_kernel/cases_fuzz.c) on a daemon next to a Linux domain: random
hypercall numbers and arguments for ~45 s from a fixed seed; the fuzzing domain survives and powers off
by itself, hyperdisco logs no internal error, and the Linux neighbour keeps working.

HYPERDISCO_FUZZ_SEED and HYPERDISCO_FUZZ_SECONDS change the seed and the duration (bench/fuzz_hypercalls.py
runs longer campaigns over many seeds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg
from .pvh_kernel import boot_test_kernel

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("HYPERDISCO_FUZZ_SEED", "20261130"))
SECONDS = int(os.environ.get("HYPERDISCO_FUZZ_SECONDS", "45"))


def test_hypercall_fuzzer_survives_and_a_linux_neighbour_keeps_working(
        xl: Xl, pvh_kernel: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    xl("create", domain_cfg(tmp_path, "witness", memory=96))
    assert xl("exec", "witness", "echo up", "--timeout", "240").stdout.strip() == "up"
    run = boot_test_kernel(xl, tmp_path, "fuzzer", pvh_kernel,
                           f"cases=fuzz seed={SEED} calls=100000000 fuzz_s={SECONDS}", memory=64,
                           timeout=SECONDS + 300)
    run.assert_all_passed(at_least=4)
    assert "powered off" in run.end, run.end
    calls = int(run.value("calls") or 0)
    assert calls >= 10_000, run.lines[-5:]
    print(f"hypercall fuzzer: seed {SEED}: {calls} calls in {SECONDS} s "
          f"(ok={run.value('ok')} enosys={run.value('enosys')} efault={run.value('efault')} "
          f"einval={run.value('einval')} other={run.value('other')})")
    # the neighbour: still up, its console, xenstore and hypercalls answer
    out = xl("exec", "witness", "echo still-up; cat /sys/hypervisor/version/major; ls /sys/bus/xen/devices",
             "--timeout", "120").stdout.split()
    assert out[:2] == ["still-up", "4"], out
    assert "witness" in xl.rows()
    _proc, log_path = request.node.hd_daemon
    log = Path(log_path).read_text(errors="replace")
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
