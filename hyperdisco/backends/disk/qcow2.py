"""qcow2 images (placeholder until the reader/writer lands)."""

from __future__ import annotations

from collections.abc import Callable

from hyperdisco.backends.disk.base import DiskImage
from hyperdisco.errors import ImageError

QCOW2_MAGIC = b"QFI\xfb"


class Qcow2Image:
    def __init__(self, path: str, readonly: bool, opener: Callable[[str, str], DiskImage],
                 probe: Callable[[str], str]) -> None:
        raise ImageError(f"hyperdisco: {path}: qcow2 is not supported yet")
        self.size = 0
        self.readonly = readonly

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def discard(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
