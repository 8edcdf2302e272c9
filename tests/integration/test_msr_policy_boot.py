"""The stock kernel under the MSR and control-register policy (platform/msr.py, issue 13): it boots to
user space, runs a command, and touches no MSR the policy refuses except the one Xen refuses it too."""

from __future__ import annotations

import re

import pytest

from hyperdisco.images import GuestImages

from .conftest import hyperdisco

pytestmark = pytest.mark.slow

# AMD's first performance-event select register: Linux's perf probes it (rdmsr_safe) and, on #GP, runs
# with software events only. Xen refuses it as well while the virtual PMU is off (its default).
EXPECTED_REFUSALS = {"rdmsr 0xc0010000"}


def test_stock_kernel_boots_under_the_msr_policy(images: GuestImages) -> None:
    bad = "-e 'unchecked MSR' -e 'WARNING:' -e 'general protection'"
    r = hyperdisco("run", "-v", "--stats", "--exec", f"uname -r; n=$(dmesg | grep -c -i {bad}); echo $n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-2:] == [images.kernel_release, "0"], r.stdout  # nothing in dmesg about MSRs or #GP
    refused = set(re.findall(r"vcpu \d+: ((?:rd|wr)msr 0x[0-9a-f]+)", r.stderr))
    assert refused <= EXPECTED_REFUSALS, refused
    counts = {p[0]: int(p[1]) for p in (ln.split() for ln in r.stderr.splitlines())
              if len(p) == 2 and p[1].isdigit()}
    assert counts["msr"] > 20  # EFER, STAR/LSTAR/CSTAR/SFMASK, SYSENTER, FS/GS bases, PAT, MTRRs...
    assert counts["msr.gp"] <= 4 and counts.get("cr.gp", 0) == 0
