"""Disk images for the block backend: raw files and devices, hyperdisco's copy-on-write overlay, qcow2.

``open_disk(target, format, readonly, persistent, base)`` returns a DiskImage (see base.py):

- ``raw``: the file or block device itself.
- ``cow``: hyperdisco's overlay (format in cow.py) over a read-only ``base``; with ``persistent=False``
  the overlay is an anonymous temporary file, so every write is gone at close (Disco's non-persistent
  disk). Reopening an existing persistent overlay reads the base from its header.
- ``qcow2``: QEMU's format, versions 2 and 3, with backing files (qcow2.py).

``persistent=False`` with ``raw`` or ``qcow2`` opens ``target`` read-only as the base of a temporary
overlay: the domain sees a writable disk, the file never changes.

Read-write opens take an exclusive lock on the file, read-only opens (and bases) a shared one.
"""

from __future__ import annotations

import os

from hyperdisco.backends.disk.base import SECTOR, DiskImage
from hyperdisco.backends.disk.cow import COW_MAGIC, CowImage
from hyperdisco.backends.disk.qcow2 import QCOW2_MAGIC, Qcow2Image
from hyperdisco.backends.disk.raw import RawImage
from hyperdisco.errors import ImageError

FORMATS = ("raw", "cow", "qcow2")

__all__ = [
    "FORMATS", "SECTOR", "CowImage", "DiskImage", "Qcow2Image", "RawImage", "open_disk", "probe_format",
]


def probe_format(path: str) -> str:
    """Guess a (base) image's format from its magic: qcow2, cow, else raw."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ImageError(f"hyperdisco: {path}: disk image does not exist") from None
    except OSError as exc:
        raise ImageError(f"hyperdisco: {path}: cannot open disk image ({exc.strerror or exc})") from None
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    if head == COW_MAGIC:
        return "cow"
    return "raw"


def open_disk(
    target: str,
    format: str = "raw",
    readonly: bool = False,
    persistent: bool = True,
    base: str | None = None,
    _depth: int = 0,
) -> DiskImage:
    """Open (or, for a new cow overlay, create) a disk image. Errors are one-line ImageErrors."""
    if _depth > 16:
        raise ImageError(f"hyperdisco: {target}: backing chain is too long (or loops)")
    if format not in FORMATS:
        raise ImageError(f"hyperdisco: {target}: unknown disk format {format!r} (expected one of "
                         f"{', '.join(FORMATS)})")

    def opener(path: str, fmt: str) -> DiskImage:
        return open_disk(path, fmt, readonly=True, _depth=_depth + 1)

    if format == "cow":
        if not persistent:
            if base is None:
                raise ImageError(f"hyperdisco: {target}: a non-persistent cow disk needs a base image")
            base_img = opener(base, probe_format(base))
            return CowImage.temporary(base_img, os.path.dirname(target) or None)
        return CowImage.open(target, readonly, base, opener, probe_format)
    if not persistent and not readonly:
        base_img = open_disk(target, format, readonly=True, _depth=_depth + 1)
        return CowImage.temporary(base_img, None)
    if format == "raw":
        return RawImage(target, readonly)
    return Qcow2Image(target, readonly, opener, probe_format)
