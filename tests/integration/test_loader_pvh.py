"""Issue 13 on the project's PVH test kernel: the same image loads from an ELF64 file and from an ELF32
(i386) container, as Xen's libelf loads both, and unbacked memory (the HPET's and IO-APIC's addresses, a
hole above RAM) reads as all ones, ignores writes and leaves the domain running."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Xl
from .pvh_kernel import BuildUnavailable, boot_test_kernel, build_test_kernel

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ["elf32", "elf64"])
def test_elf_containers_boot_and_unbacked_memory(xl: Xl, tmp_path: Path, variant: str) -> None:
    try:
        kernel = build_test_kernel(variant)
    except BuildUnavailable as exc:
        pytest.skip(str(exc))
    run = boot_test_kernel(xl, tmp_path, f"ld{variant}", kernel, "cases=boot,xen_version,unbacked")
    run.assert_all_passed(at_least=12)
    assert {"unbacked.hpet_id", "unbacked.hole_quad", "unbacked.still_running"} <= set(run.passed)
    assert "powered off" in run.end, run.end
