"""xen/include/public/io/xenbus.h: enum xenbus_state, the states a frontend and backend publish in their
xenstore `state` nodes."""

from __future__ import annotations

__all__ = [
    "XenbusStateUnknown", "XenbusStateInitialising", "XenbusStateInitWait", "XenbusStateInitialised",
    "XenbusStateConnected", "XenbusStateClosing", "XenbusStateClosed", "XenbusStateReconfiguring",
    "XenbusStateReconfigured",
]

# enum xenbus_state (xenbus.h)
XenbusStateUnknown = 0
XenbusStateInitialising = 1
XenbusStateInitWait = 2
XenbusStateInitialised = 3
XenbusStateConnected = 4
XenbusStateClosing = 5
XenbusStateClosed = 6
XenbusStateReconfiguring = 7
XenbusStateReconfigured = 8
