"""Hypercall argument probes (tests/pvh_kernel/cases_probes.c) on a daemon, with a neighbour domain: every
hypercall hyperdisco implements, called with bad arguments, answers Xen's error codes; the probing domain
survives them, and the neighbour next to it sees nothing change."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Xl
from .pvh_kernel import boot_test_kernel, kernel_cfg, read_console

pytestmark = pytest.mark.slow


def daemon_log(request: pytest.FixtureRequest) -> str:
    _proc, path = request.node.hd_daemon
    return Path(path).read_text(errors="replace")


def test_probes_answer_xens_errors_and_the_neighbour_is_unaffected(xl: Xl, pvh_kernel: Path, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    xl("create", kernel_cfg(tmp_path, "neighbour", pvh_kernel, "cases=heartbeat beat_s=25"))
    run = boot_test_kernel(xl, tmp_path, "prober", pvh_kernel, "cases=probe*")
    run.assert_all_passed(at_least=200)
    assert "powered off" in run.end, run.end  # it stopped because it asked to, not because of a probe
    rows = xl.rows()
    assert "neighbour" in rows, rows  # still running after the prober is gone: the two overlapped
    hb = read_console(xl, ["console", "neighbour"], timeout=300)
    hb.assert_all_passed(at_least=3)
    assert int(hb.value("beats") or 0) > 0
    log = daemon_log(request)
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
