"""The FIFO event-channel ABI (Xen 4.4 and later; xen/common/event_fifo.c, layouts in
xen/include/public/event_channel.h), which Linux uses whenever EVTCHNOP_init_control succeeds
(drivers/xen/events/events_fifo.c, "Using FIFO-based ABI"), else it falls back to 2-level.

Each port has a 32-bit event word in an event array the guest builds page by page (EVTCHNOP_expand_array,
1024 words a page, up to 128 pages: 2^17 ports): PENDING, MASKED, LINKED, BUSY and a 17-bit LINK to the
next event of its queue. Each vCPU has a control block (EVTCHNOP_init_control) with a READY bit and a HEAD
per priority (0 highest .. 15 lowest). Raising an unmasked event that is not yet LINKED appends it to the
queue of (its vCPU, its priority): the hypervisor keeps each queue's tail, links the old tail's word to the
new port (or writes HEAD when the queue was empty) and sets the priority's READY bit; a READY bit that was
clear means an upcall. The guest consumes a queue from HEAD, clearing LINKED (and LINK) of each word with
cmpxchg, so the hypervisor may link to a tail only while that tail is still LINKED: it sets BUSY on the
tail word (the guest's unmask spins while BUSY is set) and retries its cmpxchg a bounded number of times
(event_fifo.c's evtchn_fifo_set_link). Every access to an event word or the READY word is a host atomic
(core/atomic.py): the guest changes them with locked instructions on other vCPUs meanwhile.

Queue state (the tails, each port's priority and the queue it was last linked on) lives here, under one
lock: Xen takes a lock per queue; one per domain is enough for a handful of vCPUs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..xen import abi
from . import atomic
from .evtchn_abi import EvtchnError
from .memory import PAGE

if TYPE_CHECKING:
    from .evtchn import EventChannels

WORDS_PER_PAGE = PAGE // 4
MAX_ARRAY_PAGES = abi.EVTCHN_FIFO_NR_CHANNELS // WORDS_PER_PAGE  # 128
PENDING = 1 << abi.EVTCHN_FIFO_PENDING
MASKED = 1 << abi.EVTCHN_FIFO_MASKED
LINKED = 1 << abi.EVTCHN_FIFO_LINKED
BUSY = 1 << abi.EVTCHN_FIFO_BUSY
LINK_MASK = abi.EVTCHN_FIFO_LINK_MASK
_ALL = 0xFFFFFFFF
SET_LINK_TRIES = 4  # event_fifo.c: the guest may change a LINKED word at most 4 ways while it is BUSY


class Fifo:
    name = "FIFO"
    max_ports = abi.EVTCHN_FIFO_NR_CHANNELS

    def __init__(self, owner: EventChannels) -> None:
        self.ec = owner
        self.lock = threading.Lock()
        self.control: dict[int, tuple[int, int]] = {}  # vCPU -> (guest, host) address of its control block
        self.array: list[tuple[int, int]] = []  # event array pages: (guest, host) address
        self.tails: dict[tuple[int, int], int] = {}  # (vCPU, priority) -> the queue's last port, 0: empty
        self.priority: dict[int, int] = {}  # port -> priority, absent: EVTCHN_FIFO_PRIORITY_DEFAULT
        self.lastq: dict[int, tuple[int, int]] = {}  # port -> the queue it was last linked on (fifo_lastq)
        self.early: set[int] = set()  # raised before its array page existed (Xen's evtchn->pending)
        self.link_retries = 0  # tails the guest changed under a set_link (BUSY protocol taken)
        self.link_giveups = 0  # set_link gave up after SET_LINK_TRIES (Xen warns "not linked")
        self._pages: set[int] = set()  # the guest pages above (the balloon asks for each page it takes)

    # -- set-up (EVTCHNOP_init_control, EVTCHNOP_expand_array) -----------------------------------------
    def map_control(self, vcpu: int, gpa: int) -> None:
        if vcpu in self.control:
            raise EvtchnError(abi.EINVAL, f"vcpu {vcpu} already has a FIFO control block")
        self.control[vcpu] = (gpa, self.ec.mem.host_address(gpa, abi.EVTCHN_FIFO_CONTROL_BLOCK_SIZE))
        self._pages.add(gpa & ~(PAGE - 1))

    def add_array_page(self, gpa: int) -> None:
        """event_fifo.c's add_page_to_event_array: the next 1024 ports get words; events raised for them
        before are raised again."""
        if len(self.array) >= MAX_ARRAY_PAGES:
            raise EvtchnError(abi.ENOSPC, "the FIFO event array is full")
        with self.lock:
            self.array.append((gpa, self.ec.mem.host_address(gpa, PAGE)))
            self._pages.add(gpa)
            limit = len(self.array) * WORDS_PER_PAGE
            again = sorted(p for p in self.early if p < limit)
            self.early.difference_update(again)
        for port in again:
            p = self.ec.ports.get(port)
            if p is not None:
                self.set_pending(port, p.vcpu)

    @property
    def nr_ports(self) -> int:
        return len(self.array) * WORDS_PER_PAGE

    def _word(self, port: int) -> int | None:
        """Host address of `port`'s event word, None while its array page is missing."""
        if not 0 < port < len(self.array) * WORDS_PER_PAGE:
            return None
        page, index = divmod(port, WORDS_PER_PAGE)
        return self.array[page][1] + 4 * index

    # -- raising ----------------------------------------------------------------------------------------
    def set_pending(self, port: int, vcpu: int) -> None:
        """event_fifo.c's evtchn_fifo_set_pending."""
        word = self._word(port)
        if word is None:
            if 0 < port < self.max_ports:
                with self.lock:  # against add_array_page taking the set (another vCPU's thread)
                    self.early.add(port)
            return
        prio = self.priority.get(port, abi.EVTCHN_FIFO_PRIORITY_DEFAULT)
        q = (vcpu, prio)
        linked = True
        cb = self.control.get(vcpu)
        with self.lock:
            # MASKED as it was when PENDING was set: a guest that clears MASKED after that sees PENDING
            # (its cmpxchg fails and retries) and asks for EVTCHNOP_unmask, which links the event then
            seen = atomic.fetch_or_u32(word, PENDING)
            if cb is None:  # the guest must not unmask before it set up this vCPU's block: drop the link
                return
            if not seen & MASKED and not atomic.fetch_or_u32(word, LINKED) & LINKED:
                old_q = self.lastq.get(port, (0, 0))
                if self.tails.get(old_q) == port:  # it was that queue's tail: that queue is empty now
                    self.tails[old_q] = 0
                if old_q != q:
                    self.lastq[port] = q
                linked = False
                tail = self.tails.get(q, 0)
                if tail:
                    tail_word = self._word(tail)
                    linked = tail_word is not None and self._set_link(tail_word, port)
                if not linked:
                    atomic.store_u32(cb[1] + abi.EVTCHN_FIFO_CB_HEAD + 4 * prio, port)
                self.tails[q] = port
        if not linked and not atomic.fetch_or_u32(cb[1] + abi.EVTCHN_FIFO_CB_READY, 1 << prio) & 1 << prio:
            self.ec.mark_vcpu(vcpu)

    def _try_set_link(self, word: int, seen: int, link: int) -> tuple[int, int]:
        """Link the word to `link` iff it is still LINKED: (1 linked, 0 not LINKED, -1 changed), value."""
        if not seen & LINKED:
            return 0, seen
        new = (seen & ~(BUSY | LINK_MASK) & _ALL) | link
        found = atomic.cmpxchg_u32(word, seen, new)
        return (1, found) if found == seen else (-1, found)

    def _set_link(self, word: int, link: int) -> bool:
        """event_fifo.c's evtchn_fifo_set_link: True if the tail now links to `link`, False if the
        guest had consumed the tail (the queue is empty: the caller writes HEAD)."""
        res, seen = self._try_set_link(word, atomic.load_u32(word), link)
        if res >= 0:
            return res == 1
        self.link_retries += 1
        atomic.fetch_or_u32(word, BUSY)  # the guest's unmask spins while BUSY: at most 4 other changes remain
        seen = atomic.load_u32(word)
        for _ in range(SET_LINK_TRIES):
            res, seen = self._try_set_link(word, seen, link)
            if res >= 0:
                if res == 0:
                    atomic.fetch_and_u32(word, ~BUSY & _ALL)
                return res == 1
        self.link_giveups += 1
        atomic.fetch_and_u32(word, ~BUSY & _ALL)
        return True

    # -- the rest of the port operations ------------------------------------------------------------------
    def clear_pending(self, port: int) -> None:
        word = self._word(port)
        if word is not None:
            atomic.fetch_and_u32(word, ~PENDING & _ALL)  # the guest unlinks and skips it if it is queued
        with self.lock:
            self.early.discard(port)

    def unmask(self, port: int, vcpu: int) -> None:
        word = self._word(port)
        if word is None:
            return
        atomic.fetch_and_u32(word, ~MASKED & _ALL)
        if atomic.load_u32(word) & PENDING:
            self.set_pending(port, vcpu)

    def is_pending(self, port: int) -> bool:
        word = self._word(port)
        return word is not None and bool(atomic.load_u32(word) & PENDING)

    def is_masked(self, port: int) -> bool:
        word = self._word(port)
        return word is None or bool(atomic.load_u32(word) & MASKED)

    def is_busy(self, port: int) -> bool:
        word = self._word(port)
        return word is not None and bool(atomic.load_u32(word) & LINKED)

    def set_priority(self, port: int, priority: int) -> None:
        """Only later events go to the new queue; one already linked stays where it is (as Xen)."""
        if not 0 <= priority <= abi.EVTCHN_FIFO_PRIORITY_MIN:
            raise EvtchnError(abi.EINVAL, f"priority {priority}")
        self.priority[port] = priority

    def port_freed(self, port: int) -> None:
        self.priority.pop(port, None)  # a new channel on this port starts at the default priority
        with self.lock:
            self.early.discard(port)

    def hypervisor_pages(self) -> set[int]:
        return self._pages
