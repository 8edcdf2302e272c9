"""core/dirty_log.py: the pages written since the last look, from the host kernel's asynchronous
userfaultfd write protection and PAGEMAP_SCAN, over a memfd mapping as guest RAM is."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator

import pytest

from hyperdisco.core.dirty_log import PAGE, DirtyLog, DirtyLogError

PAGES = 256


@pytest.fixture
def ram() -> Iterator[tuple[mmap.mmap, int]]:
    fd = os.memfd_create("test-dirty-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGES * PAGE)
    m = mmap.mmap(fd, PAGES * PAGE)
    os.close(fd)
    yield m, ctypes.addressof(ctypes.c_char.from_buffer(m))
    # the ctypes reference keeps the buffer exported; the mapping goes with the process


@pytest.fixture
def log() -> Iterator[DirtyLog]:
    try:
        d = DirtyLog.open()
    except DirtyLogError as exc:
        pytest.skip(f"no dirty tracking on this host: {exc}")
    yield d
    d.close()


def test_written_pages_are_reported_once(ram: tuple[mmap.mmap, int], log: DirtyLog) -> None:
    m, addr = ram
    m[0:PAGE] = b"x" * PAGE  # written before tracking: clean once it starts
    log.start(addr, PAGES * PAGE)
    assert list(log.collect()) == []
    m[5 * PAGE] = 1
    m[7 * PAGE + 100] = 2
    m[8 * PAGE + 4095] = 3
    m[200 * PAGE] = 4  # a page never touched before
    assert list(log.collect()) == [(5, 1), (7, 2), (200, 1)]
    assert list(log.collect()) == []  # protected again by the scan itself
    m[5 * PAGE] = 9
    assert list(log.collect()) == [(5, 1)]


def test_kernel_writes_are_seen(ram: tuple[mmap.mmap, int], log: DirtyLog) -> None:
    """A backend's preadv into guest memory is a write too."""
    m, addr = ram
    log.start(addr, PAGES * PAGE)
    r, w = os.pipe()
    os.write(w, b"z" * 100)
    os.readv(r, [memoryview(m)[30 * PAGE:31 * PAGE]])
    os.close(r)
    os.close(w)
    assert list(log.collect()) == [(30, 1)]


def test_every_page_and_stop(ram: tuple[mmap.mmap, int], log: DirtyLog) -> None:
    m, addr = ram
    log.start(addr, PAGES * PAGE)
    for i in range(PAGES):
        m[i * PAGE] = 1
    assert list(log.collect()) == [(0, PAGES)]
    log.stop()
    with pytest.raises(ValueError):
        list(log.collect())
    m[3 * PAGE] = 1  # untracked: writes work as ever
    assert m[3 * PAGE] == 1
