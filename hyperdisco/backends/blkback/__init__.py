"""The block backend (blkback): virtual block devices for xen-blkfront, served from disk images."""

from __future__ import annotations

from .abi import devid_to_vdev, vdev_to_devid
from .device import VbdBackend
from .host import VbdHost
from .manager import BlockDevices, PreparedDisk, prepare_image
from .ring import BlkRing, RingError

__all__ = ["BlkRing", "BlockDevices", "PreparedDisk", "RingError", "VbdBackend", "VbdHost", "devid_to_vdev",
           "prepare_image", "vdev_to_devid"]
