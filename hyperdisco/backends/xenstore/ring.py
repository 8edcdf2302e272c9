"""The guest's xenstore ring page (docs/misc/xenstore-ring.txt; struct xenstore_domain_interface in
xen/include/public/io/xs_wire.h).

Offset  Length  Field
0       1024    req: input data (guest -> xenstored)
1024    1024    rsp: output data (replies and watch events)
2048    4       req_cons      2052  4  req_prod
2056    4       rsp_cons      2060  4  rsp_prod
2064    4       server feature bitmap (bit 0 ring reconnection, bit 1 connection error indicator)
2068    4       connection state (0 connected, 1 the guest asks for a reset-and-reconnect)
2072    4       connection error indicator (0 none, 1 communication problem, 2 inconsistent producer or
                consumer offset, 3 protocol violation: client data package too long)

Offsets are free-running u32 byte counts, stored at `x % 1024` (MASK_XENSTORE_IDX). Everything on the
page is written by the guest and is untrusted: an input producer more than 1024 bytes ahead of the
consumer, or an output consumer that claims to have read more than was produced, is inconsistent.
"""

from __future__ import annotations

from ...core.memory import PhysicalPages
from ..byte_ring import ByteRing, RingIndexError

RING_SIZE = 1024  # XENSTORE_RING_SIZE
REQ = 0
RSP = 1024
REQ_CONS = 2048
REQ_PROD = 2052
RSP_CONS = 2056
RSP_PROD = 2060
SERVER_FEATURES = 2064
CONNECTION = 2068
ERROR = 2072

FEATURE_RECONNECTION = 1  # XENSTORE_SERVER_FEATURE_RECONNECTION
FEATURE_ERROR = 2  # bit 1: connection error indicator (xenstore-ring.txt)
CONNECTED = 0  # XENSTORE_CONNECTED
RECONNECT = 1  # XENSTORE_RECONNECT

ERROR_NONE = 0
ERROR_COMM = 1
ERROR_RINGIDX = 2
ERROR_PROTO = 3

_MASK32 = 0xFFFFFFFF


class RingError(Exception):
    """The ring is inconsistent; `code` is the value for the connection error indicator."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class Ring:
    def __init__(self, mem: PhysicalPages, gpa: int) -> None:
        self.mem = mem
        self.gpa = gpa
        self.req = ByteRing(mem, gpa + REQ, RING_SIZE, gpa + REQ_CONS, gpa + REQ_PROD)  # guest -> us
        self.rsp = ByteRing(mem, gpa + RSP, RING_SIZE, gpa + RSP_CONS, gpa + RSP_PROD)  # us -> guest

    def advertise(self) -> None:
        """Offer reconnection and the error indicator before touching any data (xenstore-ring.txt:
        the server advertises features before producing or consuming)."""
        self.mem.set_u32(self.gpa + SERVER_FEATURES,
                         self.mem.u32(self.gpa + SERVER_FEATURES) | FEATURE_RECONNECTION | FEATURE_ERROR)

    def reconnect_requested(self) -> bool:
        return self.mem.u32(self.gpa + CONNECTION) == RECONNECT

    def reset(self) -> None:
        """Complete a guest-requested reconnect: empty both queues, clear the error, mark connected."""
        for off in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, ERROR):
            self.mem.set_u32(self.gpa + off, 0)
        self.mem.set_u32(self.gpa + CONNECTION, CONNECTED)

    def set_error(self, code: int) -> None:
        self.mem.set_u32(self.gpa + ERROR, code)

    def read(self, limit: int) -> bytes:
        """Consume up to `limit` bytes of request data."""
        try:
            return self.req.take(limit)
        except RingIndexError as e:
            raise RingError(ERROR_RINGIDX, f"request {e}") from None

    def write(self, data: bytes | memoryview) -> int:
        """Produce as much of `data` as the response ring has room for; returns how much."""
        try:
            return self.rsp.put(data)
        except RingIndexError as e:
            raise RingError(ERROR_RINGIDX, f"response {e}") from None
