"""Issue 13 on the project's PVH test kernels: the same image loads from an ELF64 file and from an ELF32
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
    # the domain's log (the daemon's dmesg): one line for the first access to each page, naming the HPET
    log = [ln for ln in xl("dmesg").stdout.splitlines() if "unbacked memory" in ln]
    assert any("0xfed00000" in ln and "HPET" in ln for ln in log), log
    assert any("IO-APIC" in ln for ln in log), log
    assert sum("0xfed00010" in ln for ln in log) == 0  # same page as 0xfed00000: not logged again


@pytest.mark.parametrize("paging", ["off", "2level", "pae"])
def test_32bit_kernel_hypercalls(xl: Xl, tmp_path: Path, paging: str) -> None:
    """A 32-bit kernel (tests/pvh_kernel/i386: gcc -m32, ELF32 EM_386) that never enters long mode, with
    paging off, 2-level or PAE: console_io, xen_version, add_to_physmap and memory_map in their compat
    layouts, event channels, a bad pointer's -EFAULT, through the 32-bit hypercall ABI; the callback set
    from 32-bit code latches the 32-bit shared_info layout (wallclock, 32-bit event words, selector); then
    powers off."""
    from .pvh_kernel32 import build_kernel32

    try:
        kernel = build_kernel32()
    except BuildUnavailable as exc:
        pytest.skip(str(exc))
    run = boot_test_kernel(xl, tmp_path, f"k32{paging}", kernel, f"paging={paging}")
    run.assert_all_passed(at_least=20)
    wanted = {"shinfo32.pending_bit", "shinfo32.selector", "memory32.add_to_physmap_shared_info"}
    assert wanted <= set(run.passed)
    assert f"paging {paging}" in run.lines[0]
    assert "# hello from 32-bit code" in run.lines
    assert "powered off" in run.end, run.end
