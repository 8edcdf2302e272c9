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
    # the neighbour grants a page to domain 0, and writable and read-only to the prober (the next domain)
    xl("create", kernel_cfg(tmp_path, "neighbour", pvh_kernel, "cases=heartbeat beat_s=25 grant_ref=10 "
                            "grantee=2"))
    peer = int(xl("domid", "neighbour").stdout)
    assert peer == 1
    run = boot_test_kernel(xl, tmp_path, "prober", pvh_kernel, f"cases=probe* peer={peer} ref=10")
    assert "probe_cross_domain.sees_the_peers_page" in run.passed, run.failed
    run.assert_all_passed(at_least=200)
    assert "powered off" in run.end, run.end  # it stopped because it asked to, not because of a probe
    rows = xl.rows()
    assert "neighbour" in rows, rows  # still running after the prober is gone: the two overlapped
    hb = read_console(xl, ["console", "neighbour"], timeout=300)
    hb.assert_all_passed(at_least=5)
    assert "heartbeat.granted_page_intact" in hb.passed
    assert int(hb.value("beats") or 0) > 0
    log = daemon_log(request)
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
