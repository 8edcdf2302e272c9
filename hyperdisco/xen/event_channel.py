"""xen/include/public/event_channel.h: the event_channel_op hypercall's commands, port states and argument
layouts, and the 2-level ABI's number of channels."""

from __future__ import annotations

import struct

__all__ = [
    "EVTCHNOP_bind_interdomain", "EVTCHNOP_bind_virq", "EVTCHNOP_bind_pirq", "EVTCHNOP_close",
    "EVTCHNOP_send", "EVTCHNOP_status", "EVTCHNOP_alloc_unbound", "EVTCHNOP_bind_ipi", "EVTCHNOP_bind_vcpu",
    "EVTCHNOP_unmask", "EVTCHNOP_reset", "EVTCHNOP_init_control", "EVTCHNOP_expand_array",
    "EVTCHNOP_set_priority", "EVTCHNSTAT_closed", "EVTCHNSTAT_unbound", "EVTCHNSTAT_interdomain",
    "EVTCHNSTAT_pirq", "EVTCHNSTAT_virq", "EVTCHNSTAT_ipi", "EVTCHN_ALLOC_UNBOUND", "EVTCHN_BIND_INTERDOMAIN",
    "EVTCHN_BIND_VIRQ", "EVTCHN_BIND_IPI", "EVTCHN_BIND_VCPU", "EVTCHN_PORT", "EVTCHN_STATUS",
    "EVTCHN_STATUS_UNION", "EVTCHN_2L_NR_CHANNELS", "EVTCHN_RESET", "EVTCHN_INIT_CONTROL",
    "EVTCHN_EXPAND_ARRAY", "EVTCHN_SET_PRIORITY", "EVTCHN_FIFO_PRIORITY_MAX", "EVTCHN_FIFO_PRIORITY_DEFAULT",
    "EVTCHN_FIFO_PRIORITY_MIN", "EVTCHN_FIFO_MAX_QUEUES", "EVTCHN_FIFO_PENDING", "EVTCHN_FIFO_MASKED",
    "EVTCHN_FIFO_LINKED", "EVTCHN_FIFO_BUSY", "EVTCHN_FIFO_LINK_BITS", "EVTCHN_FIFO_LINK_MASK",
    "EVTCHN_FIFO_NR_CHANNELS", "EVTCHN_FIFO_CONTROL_BLOCK_SIZE", "EVTCHN_FIFO_CB_READY",
    "EVTCHN_FIFO_CB_HEAD",
]

# --- event_channel.h ----------------------------------------------------------------------------------
EVTCHNOP_bind_interdomain, EVTCHNOP_bind_virq, EVTCHNOP_bind_pirq, EVTCHNOP_close = 0, 1, 2, 3
EVTCHNOP_send, EVTCHNOP_status, EVTCHNOP_alloc_unbound, EVTCHNOP_bind_ipi = 4, 5, 6, 7
EVTCHNOP_bind_vcpu, EVTCHNOP_unmask, EVTCHNOP_reset, EVTCHNOP_init_control = 8, 9, 10, 11
EVTCHNOP_expand_array, EVTCHNOP_set_priority = 12, 13
EVTCHNSTAT_closed, EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain = 0, 1, 2
EVTCHNSTAT_pirq, EVTCHNSTAT_virq, EVTCHNSTAT_ipi = 3, 4, 5
EVTCHN_ALLOC_UNBOUND = struct.Struct("<HHI")  # dom, remote_dom, port (OUT)
EVTCHN_BIND_INTERDOMAIN = struct.Struct("<H2xII")  # remote_dom, remote_port, local_port (OUT)
EVTCHN_BIND_VIRQ = struct.Struct("<III")  # virq, vcpu, port (OUT)
EVTCHN_BIND_IPI = struct.Struct("<II")  # vcpu, port (OUT)
EVTCHN_BIND_VCPU = struct.Struct("<II")  # port, vcpu
EVTCHN_PORT = struct.Struct("<I")  # close, send, unmask
EVTCHN_STATUS = struct.Struct("<H2xIII")  # dom, port, status (OUT), vcpu (OUT); union u at 16
EVTCHN_STATUS_UNION = 16
# event_channel.h, "2-level ABI": EVTCHN_2L_NR_CHANNELS (sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64),
# the bits of shared_info's evtchn_pending[] (xen.h)
EVTCHN_2L_NR_CHANNELS = 64 * 64  # 2-level ABI: 64 words of 64 bits

EVTCHN_RESET = struct.Struct("<H")  # dom
# --- event_channel.h, "FIFO ABI" (Xen 4.4 and later) ---------------------------------------------------
EVTCHN_INIT_CONTROL = struct.Struct("<QIIB7x")  # control_gfn, offset, vcpu, link_bits (OUT)
EVTCHN_EXPAND_ARRAY = struct.Struct("<Q")  # array_gfn
EVTCHN_SET_PRIORITY = struct.Struct("<II")  # port, priority
EVTCHN_FIFO_PRIORITY_MAX, EVTCHN_FIFO_PRIORITY_DEFAULT, EVTCHN_FIFO_PRIORITY_MIN = 0, 7, 15
EVTCHN_FIFO_MAX_QUEUES = EVTCHN_FIFO_PRIORITY_MIN + 1
# event_word_t (uint32_t) bits; the low LINK_BITS bits link to the next event of the queue
EVTCHN_FIFO_PENDING, EVTCHN_FIFO_MASKED, EVTCHN_FIFO_LINKED, EVTCHN_FIFO_BUSY = 31, 30, 29, 28
EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1
EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS
# struct evtchn_fifo_control_block { uint32_t ready; uint32_t _rsvd; event_word_t head[MAX_QUEUES]; }
EVTCHN_FIFO_CB_READY, EVTCHN_FIFO_CB_HEAD = 0, 8
EVTCHN_FIFO_CONTROL_BLOCK_SIZE = EVTCHN_FIFO_CB_HEAD + 4 * EVTCHN_FIFO_MAX_QUEUES
