"""The block backend (blkback): virtual block devices for xen-blkfront, served from disk images."""

from __future__ import annotations

from .abi import devid_to_vdev, vdev_to_devid
from .device import VbdBackend
from .manager import BlockDevices, open_image
from .ring import BlkRing, RingError

__all__ = ["BlkRing", "BlockDevices", "RingError", "VbdBackend", "devid_to_vdev", "open_image",
           "vdev_to_devid"]
