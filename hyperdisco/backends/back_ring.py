"""The back end of a request/response ring of io/ring.h (DEFINE_RING_TYPES), for any protocol whose
entries are fixed-size: consume requests, produce responses, decide when to notify.

The shared page is the frontend's and hostile: the producer index is read once per look and checked
(RING_REQUEST_PROD_OVERFLOW: never more than a ring ahead of our responses), entries are copied out of
the page before they are parsed (the guest may rewrite them meanwhile), and our own indices (req_cons,
rsp_prod_pvt) live here, never read back from the page. Notification follows ring.h:
RING_PUSH_RESPONSES_AND_CHECK_NOTIFY after publishing, RING_FINAL_CHECK_FOR_REQUESTS before sleeping.
"""

from __future__ import annotations

from typing import Protocol

from ..xen.io.ring import REQ_EVENT, REQ_PROD, RING_HEADER, RSP_EVENT, RSP_PROD, ring_size
from ..xen.xen import PAGE

M32 = 0xFFFFFFFF


class RingError(Exception):
    """The shared ring is inconsistent: the device must be disconnected."""


class RingPage(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def u32(self, offset: int) -> int: ...  # one access each (core/memory.py)
    def set_u32(self, offset: int, value: int) -> None: ...


class BackRing:
    def __init__(self, page: RingPage, entry: int) -> None:
        self.page = page
        self.entry = entry
        self.size = ring_size(entry, PAGE)
        self.req_cons = 0
        self.rsp_prod_pvt = 0

    def unconsumed(self) -> int:
        """Requests the frontend produced that we have not taken (RingError if it claims too many)."""
        prod = self.page.u32(REQ_PROD)
        if (prod - self.rsp_prod_pvt) & M32 > self.size:  # RING_REQUEST_PROD_OVERFLOW
            raise RingError(f"req_prod {prod} is more than a ring ahead of rsp_prod {self.rsp_prod_pvt}")
        return (prod - self.req_cons) & M32

    def requests(self, n: int) -> list[bytes]:
        """Copy the next n requests out of the page (n <= unconsumed()) and consume them."""
        out = self.peek_many(n)
        self.advance(n)
        return out

    def peek_many(self, n: int) -> list[bytes]:
        """Copies of the next n requests (n <= unconsumed()), not consumed: advance(k) takes k of them."""
        out: list[bytes] = []
        e = self.entry
        at = self.req_cons
        while n > 0:
            idx = at % self.size
            run = min(n, self.size - idx)
            raw = self.page.read(RING_HEADER + idx * e, run * e)  # one copy of the run, never re-read
            out.extend(raw[i * e:(i + 1) * e] for i in range(run))
            at = (at + run) & M32
            n -= run
        return out

    def peek(self) -> bytes:
        """A copy of the request at req_cons, not consumed (unconsumed() > 0)."""
        return self.page.read(RING_HEADER + (self.req_cons % self.size) * self.entry, self.entry)

    def advance(self, k: int = 1) -> None:
        """Consume the request(s) peek() or peek_many() returned."""
        self.req_cons = (self.req_cons + k) & M32

    def put_response(self, data: bytes) -> None:
        """Write the next response (published by push())."""
        idx = self.rsp_prod_pvt % self.size
        self.page.write(RING_HEADER + idx * self.entry, data)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & M32

    def push(self) -> bool:
        """Publish the responses written so far: True if the frontend asked to be notified of them
        (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY)."""
        old = self.page.u32(RSP_PROD)
        new = self.rsp_prod_pvt
        if old == new:
            return False
        self.page.set_u32(RSP_PROD, new)
        event = self.page.u32(RSP_EVENT)
        return (new - event) & M32 < (new - old) & M32

    def wait_for(self, need: int) -> bool:
        """Ask to be notified when `need` requests are unconsumed (req_event, as Linux netback's
        xenvif_rx_ring_slots_available) and look again: True if they are there already."""
        if self.unconsumed() >= need:
            return True
        self.page.set_u32(REQ_EVENT, (self.req_cons + need) & M32)
        return self.unconsumed() >= need

    def final_check(self) -> bool:
        """Arm req_event and look again (RING_FINAL_CHECK_FOR_REQUESTS): True if requests arrived."""
        if self.unconsumed():
            return True
        self.page.set_u32(REQ_EVENT, (self.req_cons + 1) & M32)
        return self.unconsumed() > 0
