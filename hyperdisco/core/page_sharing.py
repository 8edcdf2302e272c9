"""Content-based page sharing (Disco's transparent page sharing, for identical pages of any origin).

Every domain's RAM is private anonymous memory marked MADV_MERGEABLE (core/memory.py), and so are the
private copies a guest makes of its shared boot image (loader/shared_image.py). The host kernel's same-page
merging (KSM) then keeps one copy-on-write page for every set of identical pages across all domains: zero
pages, the kernel text every guest patched the same way at boot, the same files in every page cache.
This module turns the host's scanner on when the hypervisor is asked to (`hyperdisco daemon
--share-pages`) and reads its counters for `hyperdisco info`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HyperdiscoError
from .memory import PAGE

KSM = Path("/sys/kernel/mm/ksm")


def _read(name: str) -> int:
    try:
        return int((KSM / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def enable(pages_to_scan: int = 2000, sleep_ms: int = 20) -> None:
    """Start the host's merging scanner (needs root). `pages_to_scan` per `sleep_ms` bounds its CPU."""
    if not (KSM / "run").exists():
        raise HyperdiscoError("hyperdisco: this host kernel has no same-page merging (/sys/kernel/mm/ksm)")
    try:
        (KSM / "pages_to_scan").write_text(str(pages_to_scan))
        (KSM / "sleep_millisecs").write_text(str(sleep_ms))
        (KSM / "run").write_text("1")
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise HyperdiscoError(f"hyperdisco: cannot enable page sharing ({why}); run as root") from None


def stats() -> dict[str, int]:
    """What the scanner shares now: pages_shared are the kept copies, pages_sharing the pages they
    replace (memory saved ≈ pages_sharing pages)."""
    return {"running": _read("run"), "pages_shared": _read("pages_shared"),
            "pages_sharing": _read("pages_sharing"), "saved_mib": _read("pages_sharing") * PAGE >> 20,
            "full_scans": _read("full_scans")}
