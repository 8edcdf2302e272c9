"""The blkif ABI in one namespace for blkback (`from . import abi; abi.X`).

Nothing is defined here: the names live in the modules of the Xen public headers that define them and
are re-exported: xen/io/blkif.py (requests, responses, segments, VDISK_*, the vdev <-> devid encoding),
xen/io/ring.py (the shared ring's indices and __RING_SIZE), xen/io/xenbus.py (enum xenbus_state) and
xen/io/protocols.py (the "protocol" node).
"""

from __future__ import annotations

from ...xen.io.blkif import *  # noqa: F403
from ...xen.io.protocols import *  # noqa: F403
from ...xen.io.ring import *  # noqa: F403
from ...xen.io.xenbus import *  # noqa: F403
