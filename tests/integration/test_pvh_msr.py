"""The MSR and control-register policy and the exception-delivery fixes seen from a guest of our own
(tests/pvh_kernel/cases_msr.c; issue 13, docs/x86-conformance.md): the hypercall page comes from the MSR,
unknown and unoffered MSRs and reserved CR bits raise #GP without changing anything, icebp is #DB, MMX
with CR0.EM is #UD."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Xl
from .pvh_kernel import boot_test_kernel

pytestmark = pytest.mark.slow


def test_msr_cr_and_exception_cases_pass_in_a_pvh_guest(xl: Xl, pvh_kernel: Path, tmp_path: Path) -> None:
    run = boot_test_kernel(xl, tmp_path, "msr", pvh_kernel, "cases=msr,cr,x86_exceptions")
    run.assert_all_passed(at_least=40)
    assert "hypercall page: hypervisor" in run.lines[0]
    assert {"msr.unknown_wrmsr", "cr.cr4_vmxe", "x86_exceptions.icebp_is_db",
            "x86_exceptions.mmx_with_em_is_ud"} <= set(run.passed)
    assert "powered off" in run.end, run.end
