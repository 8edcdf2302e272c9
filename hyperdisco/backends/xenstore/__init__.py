"""xenstored in Python: the store, its wire protocol, guest rings and dom0's in-process connection.

See server.py for the daemon (`Xenstored`), store.py for the tree and its permissions, ring.py for the
guest's shared page, wire.py for framing and payload parsing (the constants of Xen's xs_wire.h are in
hyperdisco/xen/io/xs_wire.py).
"""

from .server import LocalConnection, Quota, Xenstored, XenstoreError
from .wire import XsError

__all__ = ["LocalConnection", "Quota", "XenstoreError", "Xenstored", "XsError"]
