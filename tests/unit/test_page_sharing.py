"""The host same-page merging switch and counters (core/page_sharing.py), against a fake sysfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperdisco.core import page_sharing
from hyperdisco.core.memory import GuestMemory
from hyperdisco.errors import HyperdiscoError


def test_enable_and_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("run", "0"), ("pages_to_scan", "100"), ("sleep_millisecs", "200"),
                        ("pages_shared", "10"), ("pages_sharing", "2560"), ("full_scans", "3")):
        (tmp_path / name).write_text(value + "\n")
    monkeypatch.setattr(page_sharing, "KSM", tmp_path)
    page_sharing.enable(pages_to_scan=1234, sleep_ms=7)
    assert (tmp_path / "run").read_text() == "1"
    assert (tmp_path / "pages_to_scan").read_text() == "1234"
    assert page_sharing.stats() == {"running": 1, "pages_shared": 10, "pages_sharing": 2560, "saved_mib": 10,
                                    "full_scans": 3}


def test_no_ksm_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_sharing, "KSM", tmp_path / "missing")
    with pytest.raises(HyperdiscoError, match="no same-page merging"):
        page_sharing.enable()
    assert page_sharing.stats()["pages_sharing"] == 0


def test_guest_ram_is_mergeable() -> None:
    mem = GuestMemory(4 << 20)
    try:
        addr = mem.regions[0].host_address
        smaps = Path("/proc/self/smaps").read_text().split("\n")
        start = next(i for i, ln in enumerate(smaps) if ln.startswith(f"{addr:x}-"))
        flags = next(ln for ln in smaps[start:] if ln.startswith("VmFlags:"))
        assert " mg" in flags  # MADV_MERGEABLE
    finally:
        mem.close()
