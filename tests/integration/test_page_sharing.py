"""Identical pages of different domains merged by the host (hyperdisco daemon --share-pages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import Xl
from .test_daemon import write_cfg

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/sys/kernel/mm/ksm/run").exists() or os.geteuid() != 0,
                                 reason="needs root and a host kernel with same-page merging")]


@pytest.fixture
def sharing_xl(images: GuestImages, tmp_path: Path) -> Iterator[Xl]:
    ksm_run = Path("/sys/kernel/mm/ksm/run")
    was = ksm_run.read_text().strip()
    sock = tmp_path / "hd.sock"
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(sock),
                             "--share-pages"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield Xl(sock)
    proc.terminate()
    proc.wait(10)
    log.close()
    ksm_run.write_text(was)  # leave the host as it was


def test_identical_pages_are_merged_across_domains(sharing_xl: Xl, tmp_path: Path) -> None:
    xl = sharing_xl
    for n in ("p1", "p2", "p3"):
        xl("create", write_cfg(tmp_path, n))
    for n in ("p1", "p2", "p3"):
        xl("exec", n, "true")
    deadline = time.monotonic() + 90
    saved = 0
    while time.monotonic() < deadline:
        info = xl("info").stdout
        line = next(ln for ln in info.splitlines() if ln.startswith("page_sharing"))
        stats = json.loads(line.split(":", 1)[1].strip().replace("'", '"'))
        saved = stats["saved_mib"]
        if saved >= 20:  # three guests booted from one image share far more than this
            break
        time.sleep(2)
    assert saved >= 20, stats
    assert xl("exec", "p2", "echo still-fine").stdout.strip() == "still-fine"  # merged pages stay correct
