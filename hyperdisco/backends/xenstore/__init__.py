"""xenstored in Python: the store, its wire protocol, guest rings and dom0's in-process connection.

See server.py for the daemon (`Xenstored`), store.py for the tree and its permissions, ring.py for the
guest's shared page, wire.py for the protocol constants from Xen's xs_wire.h.
"""

from .server import LocalConnection, Quota, Xenstored, XenstoreError
from .wire import XsError

__all__ = ["LocalConnection", "Quota", "XenstoreError", "Xenstored", "XsError"]
