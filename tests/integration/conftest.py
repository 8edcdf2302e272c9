"""Integration layer: boots the real default guest (Debian kernel + busybox initramfs)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from hyperdisco.images import GuestImages, ensure_default_images


@pytest.fixture(scope="session")
def images() -> GuestImages:
    return ensure_default_images()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def hyperdisco(*args: str, input: bytes | None = None, timeout: float = 180) -> Result:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "hyperdisco", *args], input=input, capture_output=True,
                          timeout=timeout, env=env)
    return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


@pytest.fixture
def run() -> object:
    return hyperdisco
