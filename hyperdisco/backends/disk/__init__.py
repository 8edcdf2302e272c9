"""Disk images for the block backend: raw files and devices, hyperdisco's copy-on-write overlay, qcow2.

``open_disk(target, format, readonly, persistent, base, *, base_format, opener)`` returns a DiskImage
(see base.py):

- ``raw``: the file or block device itself, byte for byte: never probed, whatever its contents.
- ``cow``: hyperdisco's overlay (format in cow.py) over a read-only ``base`` of format ``base_format``
  (default raw: a base's format is never guessed from its contents, which a guest may have written);
  with ``persistent=False`` the overlay is an anonymous temporary file, so every write is gone at close
  (Disco's non-persistent disk). Reopening an existing persistent overlay reads the base and its format
  from its header.
- ``qcow2``: QEMU's format, versions 2 and 3, with backing files whose format the image records
  (qcow2.py).

Backing files named inside images (qcow2 backing files, a cow header's base) are followed only inside
the image's own directory tree, the directories in ``$HYPERDISCO_BACKING_DIRS`` and those of
``HostOpener(backing_dirs=...)`` (base.py).

``persistent=False`` with ``raw`` or ``qcow2`` opens ``target`` read-only as the base of a temporary
overlay: the domain sees a writable disk, the file never changes.

Read-write opens take an exclusive lock on the file, read-only opens (and bases) a shared one. Only regular
files and block devices are images: a directory, FIFO, socket or character device anywhere in a chain is
refused in one line, and no open ever blocks.

Host files are reached only through a FileOpener (base.py), chosen per call with ``open_disk(...,
opener=...)`` and used for the whole chain: HostOpener (the default) opens the host's files;
RecordingOpener(inner) also keeps a dup of every descriptor it returns, as (kind, path, readonly, fd)
records, so that they can be sent to another process; HandedOpener(records) serves exactly those
descriptors there and refuses every other file. Closing an image closes its descriptors and never
unlocks explicitly, so a process holding a handed dup keeps the lock.
"""

from __future__ import annotations

import os

from hyperdisco.backends.disk.base import (
    SECTOR,
    DiskImage,
    FileOpener,
    HandedOpener,
    HostOpener,
    ImageMissing,
    OpenRecord,
    RecordingOpener,
    pread_full,
)
from hyperdisco.backends.disk.cow import COW_MAGIC, CowImage
from hyperdisco.backends.disk.qcow2 import QCOW2_MAGIC, Qcow2Image
from hyperdisco.backends.disk.raw import RawImage
from hyperdisco.errors import ImageError

FORMATS = ("raw", "cow", "qcow2")

__all__ = [
    "FORMATS", "SECTOR", "CowImage", "DiskImage", "FileOpener", "HandedOpener", "HostOpener", "ImageMissing",
    "OpenRecord", "Qcow2Image", "RawImage", "RecordingOpener", "open_disk", "probe_format",
]


def probe_format(path: str, opener: FileOpener | None = None) -> str:
    """Guess an image's format from its magic: qcow2, cow, else raw. For people and tools only: open_disk
    never uses it (a format is always given or recorded, never guessed from possibly guest-written data).
    """
    fd = (opener or HostOpener()).open(path, readonly=True)
    try:
        head = pread_full(fd, 8, 0)
    except OSError as exc:
        raise ImageError(f"hyperdisco: {path}: cannot read disk image ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
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
    *,
    base_format: str | None = None,
    opener: FileOpener | None = None,
    _depth: int = 0,
) -> DiskImage:
    """Open (or, for a new cow overlay, create) a disk image. Errors are one-line ImageErrors.

    Every host file of the image's chain (cow bases, qcow2 backing files, temporary overlays) is opened
    through ``opener`` (default: HostOpener, the host's files directly).
    """
    if _depth > 16:
        raise ImageError(f"hyperdisco: {target}: backing chain is too long (or loops)")
    if format not in FORMATS:
        raise ImageError(f"hyperdisco: {target}: unknown disk format {format!r} (expected one of "
                         f"{', '.join(FORMATS)})")
    files: FileOpener = opener if opener is not None else HostOpener()

    def open_lower(path: str, fmt: str) -> DiskImage:
        return open_disk(path, fmt, readonly=True, opener=files, _depth=_depth + 1)

    if base_format is not None and base_format not in FORMATS:
        raise ImageError(f"hyperdisco: {target}: unknown base format {base_format!r} (expected one of "
                         f"{', '.join(FORMATS)})")
    if format == "cow":
        if not persistent:
            if base is None:
                raise ImageError(f"hyperdisco: {target}: a non-persistent cow disk needs a base image")
            base_img = open_lower(base, base_format or "raw")
            return CowImage.temporary(base_img, os.path.dirname(target) or None, opener=files)
        return CowImage.open(target, readonly, base, open_lower, opener=files, base_format=base_format)
    if not persistent and not readonly:
        base_img = open_disk(target, format, readonly=True, opener=files, _depth=_depth + 1)
        return CowImage.temporary(base_img, None, opener=files)
    if format == "raw":
        return RawImage(target, readonly, opener=files)
    return Qcow2Image(target, readonly, open_lower, opener=files)
