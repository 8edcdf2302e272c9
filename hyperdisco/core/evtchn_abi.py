"""The interface between the event-channel port table (evtchn.py) and the two ways Xen lays pending and
mask state out in guest memory: the 2-level bitmaps in shared_info (evtchn_2l.py, xen/common/event_2l.c)
and the FIFO queues (evtchn_fifo.py, xen/common/event_fifo.c). Xen's `struct evtchn_port_ops`
(xen/common/event_channel.h) is the same split: the rest of the core calls these without knowing which
ABI the guest chose."""

from __future__ import annotations

from typing import Protocol


class EvtchnError(Exception):
    def __init__(self, errno: int, msg: str = "") -> None:
        super().__init__(msg or f"errno {errno}")
        self.errno = errno


class EventAbi(Protocol):
    name: str  # "2-level" or "FIFO"
    @property
    def max_ports(self) -> int:
        """Ports this ABI can name (Xen's max_evtchns)."""
        ...

    def set_pending(self, port: int, vcpu: int) -> None:
        """Mark `port` pending and, if it is not masked, make `vcpu` see an upcall."""
        ...

    def clear_pending(self, port: int) -> None: ...

    def unmask(self, port: int, vcpu: int) -> None:
        """EVTCHNOP_unmask: clear the mask and deliver to `vcpu` what is pending."""
        ...

    def is_pending(self, port: int) -> bool: ...

    def is_masked(self, port: int) -> bool: ...

    def is_busy(self, port: int) -> bool:
        """The port cannot be reused yet (FIFO: still LINKED on a queue)."""
        ...

    def set_priority(self, port: int, priority: int) -> None:
        """EVTCHNOP_set_priority (EvtchnError: -ENOSYS for 2-level, as Xen's missing port op)."""
        ...

    def port_freed(self, port: int) -> None:
        """The port was closed (its pending bit is already cleared)."""
        ...

    def hypervisor_pages(self) -> set[int]:
        """Guest pages the ABI keeps (FIFO control blocks and event array)."""
        ...
