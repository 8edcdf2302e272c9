"""xen/include/public/io/netif.h: the network protocol between netfront and netback.

A packet on the tx ring is one xen_netif_tx_request with XEN_NETTXF_* flags (its `size` is the whole
packet's), optionally followed by xen_netif_extra_info slots (XEN_NETTXF_extra_info, chained by
XEN_NETIF_EXTRA_FLAG_MORE), then one request per further fragment while XEN_NETTXF_more_data is set.
Every tx request is answered by a xen_netif_tx_response; extra-info slots by XEN_NETIF_RSP_NULL. On the
rx ring the frontend posts empty granted pages (xen_netif_rx_request) and the backend answers each with a
xen_netif_rx_response whose status is the byte count in that page (negative: an error); the first
response of a packet may be followed by an extra-info slot (GSO) occupying the next response.
Layouts are the natural C ones: grant_ref_t is uint32_t, so rx_request has 2 bytes of padding.
"""

from __future__ import annotations

import struct

from .ring import ring_size

__all__ = [
    "NETTXF_csum_blank", "NETTXF_data_validated", "NETTXF_more_data", "NETTXF_extra_info",
    "NETRXF_data_validated", "NETRXF_csum_blank", "NETRXF_more_data", "NETRXF_extra_info",
    "NETRXF_gso_prefix", "EXTRA_TYPE_NONE", "EXTRA_TYPE_GSO", "EXTRA_TYPE_MCAST_ADD", "EXTRA_TYPE_MCAST_DEL",
    "EXTRA_TYPE_HASH", "EXTRA_TYPE_XDP", "EXTRA_TYPE_MAX", "EXTRA_FLAG_MORE", "GSO_TYPE_NONE",
    "GSO_TYPE_TCPV4", "GSO_TYPE_TCPV6", "RSP_DROPPED", "RSP_ERROR", "RSP_OKAY", "RSP_NULL", "TX_REQUEST",
    "TX_RESPONSE", "RX_REQUEST", "RX_RESPONSE", "EXTRA_INFO", "EXTRA_GSO", "TX_ENTRY", "RX_ENTRY",
    "TX_RING_SIZE", "RX_RING_SIZE", "MAX_TX_SIZE", "NR_SLOTS_MIN",
]

# tx request flags (XEN_NETTXF_*)
NETTXF_csum_blank = 1 << 0
NETTXF_data_validated = 1 << 1
NETTXF_more_data = 1 << 2
NETTXF_extra_info = 1 << 3

# rx response flags (XEN_NETRXF_*)
NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4

# xen_netif_extra_info types and flags
EXTRA_TYPE_NONE = 0
EXTRA_TYPE_GSO = 1
EXTRA_TYPE_MCAST_ADD = 2
EXTRA_TYPE_MCAST_DEL = 3
EXTRA_TYPE_HASH = 4
EXTRA_TYPE_XDP = 5
EXTRA_TYPE_MAX = 6
EXTRA_FLAG_MORE = 1 << 0

# GSO types (XEN_NETIF_GSO_TYPE_*)
GSO_TYPE_NONE = 0
GSO_TYPE_TCPV4 = 1
GSO_TYPE_TCPV6 = 2

# response status (XEN_NETIF_RSP_*)
RSP_DROPPED = -2
RSP_ERROR = -1
RSP_OKAY = 0
RSP_NULL = 1

TX_REQUEST = struct.Struct("<IHHHH")  # gref, offset, flags, id, size
TX_RESPONSE = struct.Struct("<Hh")  # id, status
RX_REQUEST = struct.Struct("<H2xI")  # id, (pad), gref
RX_RESPONSE = struct.Struct("<HHHh")  # id, offset, flags, status
EXTRA_INFO = struct.Struct("<BB6s")  # type, flags, union u (6 bytes)
EXTRA_GSO = struct.Struct("<HBBH")  # u.gso: size, type, pad, features
TX_ENTRY = max(TX_REQUEST.size, TX_RESPONSE.size)  # a ring entry is the union of request and response
RX_ENTRY = max(RX_REQUEST.size, RX_RESPONSE.size)
TX_RING_SIZE = ring_size(TX_ENTRY)  # 256 with 4 KiB pages
RX_RING_SIZE = ring_size(RX_ENTRY)  # 256

MAX_TX_SIZE = 0xFFFF  # XEN_NETIF_MAX_TX_SIZE: the largest packet, in bytes
NR_SLOTS_MIN = 18  # XEN_NETIF_NR_SLOTS_MIN: slots a backend must accept per packet (and netfront's rx limit)
