"""Bad input gets one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyperdisco", *args], capture_output=True, text=True,
                          timeout=60)


def assert_one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("hyperdisco: ")
    for n in needles:
        assert n in lines[0]


def test_missing_kernel(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("run", "--kernel", str(tmp_path / "nope")), "nope")


def test_file_that_is_not_a_kernel(tmp_path: Path) -> None:
    f = tmp_path / "notakernel"
    f.write_bytes(b"hello world\n" * 100)
    assert_one_line_error(run_cli("run", "--kernel", str(f)), "not")


@pytest.mark.parametrize("mib", ["0", "-5", "999999"])
def test_zero_or_absurd_memory(mib: str) -> None:
    assert_one_line_error(run_cli("run", "--memory", mib, "--kernel", "/dev/null"), "memory")


def test_non_numeric_memory() -> None:
    p = run_cli("run", "--memory", "lots")
    assert p.returncode != 0 and "Traceback" not in p.stderr


def test_no_apt_get_points_to_kernel_option(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, PATH=str(tmp_path), HYPERDISCO_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-m", "hyperdisco", "run", "--exec", "true"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert_one_line_error(p, "apt-get is not available", "--kernel")
