"""One Ethernet frame as it travels between a domain's netback (in the domain process) and domain 0's
switch, over the vif's SOCK_SEQPACKET socket pair: one message per frame, an 8-byte header and then the
frame from its destination MAC on (no FCS).

The header carries what the Xen netif protocol says about the frame beside its bytes (io/netif.h): the
checksum state (XEN_NETTXF_csum_blank / data_validated on the sender's tx ring become the same flags on
the receiver's rx ring) and, for a TCP super-frame the sender's stack did not segment (GSO), the segment
size and kind (XEN_NETIF_GSO_TYPE_TCPV4/TCPV6). Everything in it is as untrusted as the frame: a
receiver checks the header before it uses it (parse() below).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("<BBHI")  # flags, gso_type, gso_size, reserved (0)
CSUM_BLANK = 1 << 0  # the L4 checksum field holds only the pseudo-header sum; the receiver may finish it
DATA_VALIDATED = 1 << 1  # the sender vouches for the checksums
FLAGS_MASK = CSUM_BLANK | DATA_VALIDATED
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 2  # XEN_NETIF_GSO_TYPE_* (xen/include/public/io/netif.h)
ETH_HLEN = 14
ETH_MIN = ETH_HLEN  # shorter is not a frame
MAX_FRAME = 65535 + ETH_HLEN  # XEN_NETIF_MAX_TX_SIZE (0xFFFF) of payload behind the Ethernet header
MAX_MESSAGE = HEADER.size + MAX_FRAME
SOCKET_BUFFER = 4 << 20  # SO_SNDBUF/SO_RCVBUF of each end: frames in flight before drops


class FrameError(ValueError):
    """A message that is not a frame (too short or long, unknown flags or GSO kind)."""


@dataclass(frozen=True, slots=True)
class Meta:
    flags: int = 0
    gso_type: int = GSO_NONE
    gso_size: int = 0


PLAIN = Meta()


def pack(meta: Meta, frame: bytes | bytearray | memoryview) -> bytes:
    return HEADER.pack(meta.flags, meta.gso_type, meta.gso_size, 0) + bytes(frame)


def parse(message: bytes | bytearray | memoryview) -> tuple[Meta, memoryview]:
    """Split one message into its header and frame, checking both: FrameError if anything is off."""
    n = len(message)
    if n < HEADER.size + ETH_MIN or n > MAX_MESSAGE:
        raise FrameError(f"message of {n} bytes")
    flags, gso_type, gso_size, _res = HEADER.unpack_from(message, 0)
    if flags & ~FLAGS_MASK:
        raise FrameError(f"unknown flags {flags:#x}")
    if gso_type not in (GSO_NONE, GSO_TCPV4, GSO_TCPV6):
        raise FrameError(f"unknown GSO type {gso_type}")
    if gso_type != GSO_NONE and gso_size == 0:
        raise FrameError("GSO without a segment size")
    meta = PLAIN if flags == 0 and gso_type == GSO_NONE else Meta(flags, gso_type, gso_size)
    return meta, memoryview(message)[HEADER.size:]


def mac_bytes(text: str) -> bytes:
    """'00:16:3e:01:02:03' -> 6 bytes (ValueError when it is not one)."""
    parts = text.split(":")
    hexdigits = "0123456789abcdefABCDEF"
    if len(parts) != 6 or not all(len(p) == 2 and all(c in hexdigits for c in p) for p in parts):
        raise ValueError(f"{text!r} is not a MAC address")
    return bytes(int(p, 16) for p in parts)


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
