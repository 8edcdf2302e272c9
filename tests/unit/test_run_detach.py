"""`hyperdisco run` (issue 10): Ctrl-] destroys the guest and says so, with a status of its own (130, as
an interrupted command), distinct from a clean poweroff's 0. The one-shot run with the scripted engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from unit_support import make_elf

from hyperdisco.platform import acpi
from hyperdisco.toolstack.oneshot import DETACHED_STATUS

POWEROFF = f"out:{acpi.SLEEP_CONTROL_PORT}:{acpi.SLP_EN}"


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    k = tmp_path / "vmlinux"
    k.write_bytes(make_elf())
    return k


def run(kernel: Path, script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "hyperdisco", "run", "--engine", "scripted", "--kernel",
                             str(kernel), "--cmdline", f"scripted={script}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_ctrl_bracket_destroys_with_its_own_status(kernel: Path) -> None:
    p = run(kernel, "say:hello,halt")
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline() == b"hello\n"  # the guest is up and attached
    p.stdin.write(b"\x1d")
    p.stdin.flush()
    _out, err = p.communicate(timeout=30)
    assert DETACHED_STATUS == 130 and p.returncode == DETACHED_STATUS, err
    assert err.decode().strip().splitlines() == ["hyperdisco: guest destroyed (Ctrl-] pressed)"]


def test_a_clean_poweroff_is_still_0(kernel: Path) -> None:
    p = run(kernel, f"say:hello,{POWEROFF}")
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and b"guest poweroff" in err, err
