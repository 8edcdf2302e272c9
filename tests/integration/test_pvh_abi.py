"""The sub-ops of docs/xen-abi.md beyond the basic ones, seen from a guest of our own
(tests/pvh_kernel/cases_abi.c): grant setup_table, set/get_version, copy and swap_grant_ref, multicall,
vm_assist, physdev_op, SCHEDOP_watchdog and the refused XENMEM sub-ops answer as Xen does for a PVH domU,
and the domain runs on to its own poweroff (test_pvh_probes also runs these cases, next to a neighbour)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Xl
from .pvh_kernel import boot_test_kernel

pytestmark = pytest.mark.slow


def test_abi_sub_ops_answer_as_xen(xl: Xl, pvh_kernel: Path, tmp_path: Path) -> None:
    run = boot_test_kernel(xl, tmp_path, "abi", pvh_kernel, "cases=probe_abi*")
    run.assert_all_passed(at_least=50)
    assert {"probe_abi_grant.copy_frames_data", "probe_abi_grant.set_version_2",
            "probe_abi_multicall.multicall_nested", "probe_abi_misc.watchdog_allocates",
            "probe_abi_misc.vm_assist_pv_type"} <= set(run.passed)
    assert "powered off" in run.end, run.end
