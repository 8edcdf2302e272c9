"""netback: the back end of the stock xen-netfront, inside the domain's own process (io/netif.h).

rings.py moves packets between the guest's tx/rx rings and frames; device.py is one vif's xenbus
handshake and thread; host.py holds a domain's vifs. Frames go to and come from domain 0's switch over
the vif's socket (backends/net/frame.py)."""

from .host import VifHost

__all__ = ["VifHost"]
