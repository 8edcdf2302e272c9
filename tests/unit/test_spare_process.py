"""The template's spare domain process (vmm/zygote.py, dom0/spawner.py, dom0/cgroups.py prepare): forked
ahead and put in its cgroup ahead, it takes the next domain; the next spare comes once that create is
done; a spare that dies unused is replaced and a create meanwhile forks as before."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_host_lifecycle import POWEROFF, cfg

from hyperdisco.dom0.host import Host


def until(cond: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host("scripted", run_dir=str(tmp_path), template=True)
    assert h.spawner is not None
    yield h
    h.close()


def test_the_spare_takes_the_next_domain_in_its_own_cgroup(host: Host) -> None:
    assert host.spawner is not None
    until(lambda: host.spawner.spare)
    spare = host.spawner.spare
    if host.cgroups is not None:  # moved into its cgroup ahead of its domain
        until(lambda: str(spare) in (host.cgroups.root / f"d{spare}" / "cgroup.procs").read_text().split())
    dom = host.create(cfg("s1", f"say:from-the-spare,spin:20,{POWEROFF}"))
    assert dom.pid == spare and dom.jail.startswith("jail:")
    if host.cgroups is not None:
        assert str(dom.pid) in (host.cgroups.root / f"d{dom.pid}" / "cgroup.procs").read_text().split()
    assert host.wait_gone(dom, 20)
    assert b"from-the-spare" in dom.console_buffer.history() and dom.outcome == "poweroff"
    until(lambda: host.spawner.spare not in (0, spare))  # asked for when the create was done


def test_a_spare_that_dies_is_replaced_and_creates_go_on(host: Host) -> None:
    assert host.spawner is not None
    until(lambda: host.spawner.spare)
    spare = host.spawner.spare
    os.kill(spare, signal.SIGKILL)
    until(lambda: host.spawner.status(spare) is not None)
    if host.cgroups is not None:
        until(lambda: not (host.cgroups.root / f"d{spare}").exists())  # its cgroup went with it
    dom = host.create(cfg("s2", f"say:forked,spin:20,{POWEROFF}"))  # before or after a new spare: both run
    assert dom.pid != spare
    assert host.wait_gone(dom, 20) and b"forked" in dom.console_buffer.history()
    until(lambda: host.spawner.spare not in (0, spare))
