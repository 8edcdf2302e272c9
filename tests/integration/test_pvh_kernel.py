"""The PVH test kernel framework itself (tests/pvh_kernel/): it boots on hyperdisco through the toolstack,
its checks report PASS and FAIL lines, case selection works, and it powers off."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Xl
from .pvh_kernel import KernelRun, boot_test_kernel

pytestmark = pytest.mark.slow


def test_framework_cases_pass_and_the_kernel_powers_off(xl: Xl, pvh_kernel: Path, tmp_path: Path) -> None:
    run = boot_test_kernel(xl, tmp_path, "tk", pvh_kernel, "cases=boot,with_trap,xen_version")
    run.assert_all_passed(at_least=8)
    assert {"boot.start_info_magic", "with_trap.divide_error", "xen_version.pagesize"} <= set(run.passed)
    assert "cmdline: console=hvc0 cases=boot,with_trap,xen_version" in run.lines[0]
    # only the named cases ran, then the kernel powered off (and boot_test_kernel destroyed the domain)
    assert sorted(ln for ln in run.lines if ln.startswith("CASE ")) == ["CASE boot", "CASE with_trap",
                                                                         "CASE xen_version"]
    assert "powered off" in run.end, run.end
    assert "tk" not in xl.rows()


def test_a_failing_check_is_reported() -> None:
    run = KernelRun.parse("CASE x\nPASS x.a\nFAIL x.b: got 1, want 2\nSUMMARY passed=1 failed=1 cases=1\n")
    assert run.passed == ["x.a"] and run.failed == {"x.b": "got 1, want 2"}
    with pytest.raises(AssertionError, match="x.b: got 1, want 2"):
        run.assert_all_passed()
