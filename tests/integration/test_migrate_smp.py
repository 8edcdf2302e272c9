"""migrate of a two-vCPU domain between two daemons on this host (docs/migration.md, "Several vCPUs"): the
stream carries each vCPU's state as save writes it; a counter pinned to each CPU (each sleeping between
steps, so each CPU's own timer must work on the destination) continues there without a gap or a repeat,
and the guest still has both CPUs online."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg
from .test_disks import wait_for
from .test_migrate import _start_daemon
from .test_save_restore_smp import _carries_on, _counts, _start_counters

pytestmark = pytest.mark.slow


@pytest.fixture
def smp_dest(tmp_path: Path) -> Iterator[Xl]:
    proc: subprocess.Popen[bytes]
    proc, sock = _start_daemon(tmp_path / "dest")
    yield Xl(sock)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_migrate_two_vcpus_counters_continue(xl: Xl, smp_dest: Xl, tmp_path: Path) -> None:
    dxl = smp_dest
    xl("create", domain_cfg(tmp_path, "smpmg", "vcpus = 2", memory=192))
    wait_for(xl, "smpmg", "[ $(nproc) = 2 ]", timeout=60)
    _start_counters(xl, "smpmg")
    time.sleep(2.0)
    before = {cpu: len(_counts(xl, "smpmg", cpu)) for cpu in (0, 1)}
    assert min(before.values()) > 0, before
    r = xl("migrate", "smpmg", dxl.env["HYPERDISCO_SOCKET"], timeout=300.0)
    assert "Migrated:" in r.stderr and "downtime" in r.stderr, r.stderr
    assert "smpmg" not in xl.rows()  # gone from the source once it ran on the destination
    assert dxl.rows()["smpmg"][3] == "2"
    _carries_on(dxl, "smpmg", before)  # both counters on, no gap, no repeat; CPUs 0-1 online, nproc 2
    r = dxl("exec", "smpmg", "n=$(dmesg | grep -c -e BUG -e 'vcpu restore failed'); echo \"found=$n\"")
    assert "found=0" in r.stdout, r.stdout
    dxl("destroy", "smpmg")
