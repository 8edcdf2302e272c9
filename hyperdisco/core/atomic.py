"""Atomic read-modify-write of guest memory, for words that running vCPUs change at the same time.

The event-channel words (2-level: shared_info's pending and mask bitmaps and each vcpu_info's selector;
FIFO: each port's event word and each control block's READY word) are changed by the guest with locked
instructions on its vCPUs while the hypervisor changes them from another host thread. A Python
read-then-write would undo a guest's `lock bts` of a mask bit or a `lock btr` of a pending bit that landed
in between; Xen uses atomic operations on these words for the same reason (xen/common/event_2l.c and
event_fifo.c: guest_test_and_set_bit, guest_clear_bit, cmpxchg). Python has no atomic operation on an
mmap, so they come from GCC's runtime library (libatomic: `__atomic_fetch_or_8`, `__atomic_fetch_and_4`,
`__atomic_compare_exchange_4`..., one `lock`-prefixed instruction each on x86-64 for an aligned word),
loaded when this module is imported: before a domain process enters its jail, where no library can be
opened any more. Each call is one ctypes call (~0.3 us).

Callers pass host addresses of naturally aligned words they bounds-checked in the domain's memory
(`PhysicalPages.host_address`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

SEQ_CST = 5  # __ATOMIC_SEQ_CST
_SYMBOLS = {
    "__atomic_fetch_or_8": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]),
    "__atomic_fetch_and_8": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]),
    "__atomic_load_8": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_int]),
    "__atomic_fetch_or_4": (ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]),
    "__atomic_fetch_and_4": (ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]),
    "__atomic_load_4": (ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_int]),
    "__atomic_store_4": (None, [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]),
    "__atomic_compare_exchange_4": (ctypes.c_bool, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                                    ctypes.c_uint32, ctypes.c_int, ctypes.c_int]),
}


def _load() -> dict[str, Any] | None:
    for name in ("libatomic.so.1", ctypes.util.find_library("atomic")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fns = {}
        for sym, (res, args) in _SYMBOLS.items():
            fn = getattr(lib, sym)
            fn.restype, fn.argtypes = res, args
            fns[sym] = fn
        return fns
    return None


_FNS = _load()
AVAILABLE = _FNS is not None


def _fn(sym: str) -> Any:
    if _FNS is None:
        raise RuntimeError("hyperdisco: atomic guest-memory operations need libatomic "
                           "(apt-get install libatomic1)")
    return _FNS[sym]


def fetch_or_u64(address: int, bits: int) -> int:
    """*address |= bits atomically (address 8-byte aligned host memory); the old value."""
    return int(_fn("__atomic_fetch_or_8")(address, bits & 0xFFFFFFFFFFFFFFFF, SEQ_CST))


def fetch_and_u64(address: int, bits: int) -> int:
    """*address &= bits atomically (address 8-byte aligned host memory); the old value."""
    return int(_fn("__atomic_fetch_and_8")(address, bits & 0xFFFFFFFFFFFFFFFF, SEQ_CST))


def load_u64(address: int) -> int:
    return int(_fn("__atomic_load_8")(address, SEQ_CST))


def fetch_or_u32(address: int, bits: int) -> int:
    """*address |= bits atomically (address 4-byte aligned host memory); the old value."""
    return int(_fn("__atomic_fetch_or_4")(address, bits & 0xFFFFFFFF, SEQ_CST))


def fetch_and_u32(address: int, bits: int) -> int:
    """*address &= bits atomically (address 4-byte aligned host memory); the old value."""
    return int(_fn("__atomic_fetch_and_4")(address, bits & 0xFFFFFFFF, SEQ_CST))


def load_u32(address: int) -> int:
    return int(_fn("__atomic_load_4")(address, SEQ_CST))


def store_u32(address: int, value: int) -> None:
    _fn("__atomic_store_4")(address, value & 0xFFFFFFFF, SEQ_CST)


def cmpxchg_u32(address: int, old: int, new: int) -> int:
    """Store `new` at `address` if it holds `old`, atomically; the value found (== old: stored)."""
    expected = ctypes.c_uint32(old & 0xFFFFFFFF)
    _fn("__atomic_compare_exchange_4")(address, ctypes.byref(expected), new & 0xFFFFFFFF, SEQ_CST, SEQ_CST)
    return int(expected.value)
