"""The 2-level event-channel ABI (xen/common/event_2l.c; layouts in xen/include/public/xen.h): one pending
and one mask bit per port in shared_info, a selector word per vCPU in its vcpu_info. The guest changes these
bits with locked instructions on its vCPUs (Linux's sync_set_bit/sync_test_and_clear_bit in
drivers/xen/events/events_2l.c), so every read-modify-write here is one host atomic (core/atomic.py):
with several vCPUs the guest runs on other host threads while one vCPU's thread delivers an event."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..xen import abi
from . import atomic
from .evtchn_abi import EvtchnError
from .memory import PAGE

if TYPE_CHECKING:
    from .evtchn import EventChannels

BITS = 64  # xen_ulong_t on x86-64
COMPAT_BITS = 32  # xen_ulong_t of a 32-bit guest (EventChannels.compat_shinfo: its layout, xen/xen.py)


class TwoLevel:
    name = "2-level"

    @property
    def max_ports(self) -> int:
        return abi.EVTCHN_2L_COMPAT_NR_CHANNELS if self.ec.compat_shinfo else abi.EVTCHN_2L_NR_CHANNELS

    def __init__(self, owner: EventChannels) -> None:
        self.ec = owner
        self._si: tuple[int, int] | None = None  # (guest address, host address) of shared_info

    def _shared_info(self) -> int | None:
        gpa = self.ec.shared_info
        if gpa is None:
            return None
        if self._si is None or self._si[0] != gpa:
            self._si = (gpa, self.ec.mem.host_address(gpa, PAGE))
        return self._si[1]

    def _word(self, array: int, port: int) -> tuple[int, int] | None:
        """(host address of the word holding `port` in `array`, its bit mask), if shared_info is mapped.
        `array` is SI_EVTCHN_PENDING or SI_EVTCHN_MASK; in the 32-bit layout words are 4 bytes."""
        si = self._shared_info()
        if si is None or not 0 <= port < self.max_ports:
            return None
        if self.ec.compat_shinfo:
            base = abi.SI_EVTCHN_PENDING if array == abi.SI_EVTCHN_PENDING else abi.COMPAT_SI_EVTCHN_MASK
            word, bit = divmod(port, COMPAT_BITS)
            return si + base + 4 * word, 1 << bit
        word, bit = divmod(port, BITS)
        return si + array + 8 * word, 1 << bit

    def _or(self, at: int, bits: int) -> int:
        return (atomic.fetch_or_u32 if self.ec.compat_shinfo else atomic.fetch_or_u64)(at, bits)

    def _and_not(self, at: int, bits: int) -> int:
        if self.ec.compat_shinfo:
            return atomic.fetch_and_u32(at, ~bits & 0xFFFFFFFF)
        return atomic.fetch_and_u64(at, ~bits & 0xFFFFFFFFFFFFFFFF)

    def _load(self, at: int) -> int:
        return (atomic.load_u32 if self.ec.compat_shinfo else atomic.load_u64)(at)

    def _select(self, vcpu: int, port: int) -> None:
        """Set the port's word in the vCPU's selector; an upcall for it if that bit was clear (Xen's
        guest_test_and_set_bit on evtchn_pending_sel, then vcpu_mark_events_pending)."""
        vi = self.ec.vcpu_info.get(vcpu)
        if vi is None:
            return
        if self.ec.compat_shinfo:
            word = port // COMPAT_BITS
            at = vi + abi.COMPAT_VI_PENDING_SEL
            if at % 4:
                old = self.ec.mem.u32(at)
                self.ec.mem.set_u32(at, old | 1 << word)
            else:
                old = atomic.fetch_or_u32(self.ec.mem.host_address(at, 4), 1 << word)
        else:
            word = port // BITS
            at = vi + abi.VI_PENDING_SEL
            if at % 8:  # a vcpu_info the guest placed unaligned: no locked access across a line on the host
                old = self.ec.mem.u64(at)
                self.ec.mem.set_u64(at, old | 1 << word)
            else:
                old = atomic.fetch_or_u64(self.ec.mem.host_address(at, 8), 1 << word)
        if not old >> word & 1:
            self.ec.mark_vcpu(vcpu)

    def set_pending(self, port: int, vcpu: int) -> None:
        pend = self._word(abi.SI_EVTCHN_PENDING, port)
        if pend is None or self._or(pend[0], pend[1]) & pend[1]:
            return
        mask = self._word(abi.SI_EVTCHN_MASK, port)
        if mask is not None and not self._load(mask[0]) & mask[1]:
            self._select(vcpu, port)

    def clear_pending(self, port: int) -> None:
        pend = self._word(abi.SI_EVTCHN_PENDING, port)
        if pend is not None:
            self._and_not(pend[0], pend[1])

    def unmask(self, port: int, vcpu: int) -> None:
        """event_2l.c's evtchn_2l_unmask: only a mask that was set and a port that is pending raise."""
        mask = self._word(abi.SI_EVTCHN_MASK, port)
        if mask is None or not self._and_not(mask[0], mask[1]) & mask[1]:
            return
        if self.is_pending(port):
            self._select(vcpu, port)

    def is_pending(self, port: int) -> bool:
        pend = self._word(abi.SI_EVTCHN_PENDING, port)
        return pend is not None and bool(self._load(pend[0]) & pend[1])

    def is_masked(self, port: int) -> bool:
        mask = self._word(abi.SI_EVTCHN_MASK, port)
        return mask is None or bool(self._load(mask[0]) & mask[1])

    def is_busy(self, port: int) -> bool:
        return False

    def set_priority(self, port: int, priority: int) -> None:
        raise EvtchnError(abi.ENOSYS, "priorities need the FIFO ABI")  # event_channel.h: no set_priority op

    def port_freed(self, port: int) -> None:
        pass

    def hypervisor_pages(self) -> set[int]:
        return set()
