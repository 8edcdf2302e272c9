"""The Xen guest ABI (x86-64) in one namespace: `from ..xen import abi; abi.X`.

Nothing is defined here. Each name lives in the module of the Xen public header that defines it
(xen/include/public/...): xen.py (xen.h, arch-x86/xen.h), errno.py, event_channel.py, grant_table.py,
memory.py, vcpu.py, sched.py, physdev.py, hvm.py (hvm/hvm_op.h,
hvm/params.h, arch-x86/hvm/start_info.h), elfnote.py, version.py, features.py, and arch_x86.py (the
hypercall instructions); this module re-exports every one of them. The I/O protocols (ring.h, blkif.h,
xs_wire.h, console.h, ...) are in xen/io/.
Layouts are `struct` format strings with explicit little-endian, unpadded packing, plus byte offsets
where fields are reached singly.
"""

from __future__ import annotations

from .arch_x86 import *  # noqa: F403
from .elfnote import *  # noqa: F403
from .errno import *  # noqa: F403
from .event_channel import *  # noqa: F403
from .features import *  # noqa: F403
from .grant_table import *  # noqa: F403
from .hvm import *  # noqa: F403
from .memory import *  # noqa: F403
from .physdev import *  # noqa: F403
from .sched import *  # noqa: F403
from .vcpu import *  # noqa: F403
from .version import *  # noqa: F403
from .xen import *  # noqa: F403
