"""dom0/sealed_saves.py and vmm/snapshot.open_save: a restore's save file is checked whole while it is
copied into a sealed memfd; the domain process takes only a sealed copy; the copies are kept per file and
dropped when unused and idle, or beyond the bounds."""

from __future__ import annotations

import fcntl
import io
import os
from pathlib import Path

import pytest

from hyperdisco.core.savefile import PAGE, SaveFileError, SaveWriter, read_save
from hyperdisco.dom0.sealed_saves import SEALS, SealedSaves, seal_copy
from hyperdisco.errors import HyperdiscoError
from hyperdisco.vmm.snapshot import open_save, open_save_soon


def _write(path: Path, name: str = "g", fill: int = 0x5A) -> bytes:
    out = io.BytesIO()
    w = SaveWriter(out, {"hyperdisco": "0.1.0", "kernel": "sha256:abc", "record": {"name": name}})
    w.json_section(b"VCPU", {"index": 0})
    ram = bytearray(8 * PAGE)
    ram[2 * PAGE:3 * PAGE] = bytes([fill]) * PAGE
    w.memory_section(0, ram)
    w.finish()
    path.write_bytes(out.getvalue())
    return out.getvalue()


def test_the_copy_is_the_checked_file_sealed(tmp_path: Path) -> None:
    p = tmp_path / "s"
    data = _write(p)
    fd, save, _st = seal_copy(str(p))
    try:
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
        assert os.pread(fd, len(data) + 1, 0) == data
        assert save.header == read_save(str(p)).header and save.sections == read_save(str(p)).sections
        with pytest.raises(OSError):
            os.pwrite(fd, b"x", 0)
        with pytest.raises(OSError):
            os.ftruncate(fd, PAGE)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cut", [0, 10, 30, 200, -1])
def test_a_cut_or_corrupt_file_is_one_line(tmp_path: Path, cut: int) -> None:
    p = tmp_path / "s"
    data = bytearray(_write(p))
    if cut >= 0:
        p.write_bytes(bytes(data[:cut]))
    else:
        data[data.index(b"\x5a" * PAGE) + 100] ^= 1
        p.write_bytes(bytes(data))
    with pytest.raises(SaveFileError) as e:
        SealedSaves().acquire(str(p))
    assert "\n" not in str(e.value)
    assert ("checksum mismatch" if cut < 0 else "truncated" if cut else "not a hyperdisco") in str(e.value)


def test_the_process_takes_the_sealed_copy_and_refuses_anything_else(tmp_path: Path) -> None:
    p = tmp_path / "s"
    _write(p)
    cache = SealedSaves()
    fd, save = cache.acquire(str(p))
    got = open_save(fd)  # no hashing: the seals, then the index
    assert got.header == save.header and got.sections == save.sections
    assert [(g, n) for g, _o, n in got.memory_extents()] == [(g, n) for g, _o, n in save.memory_extents()]
    # the file itself, or an unsealed memfd with the same bytes: refused in one line
    for unsealed in (os.open(p, os.O_RDONLY), os.memfd_create("x", os.MFD_ALLOW_SEALING)):
        checked = open_save_soon(unsealed)
        with pytest.raises(HyperdiscoError, match=r"^hyperdisco: restore: the save file handed over is not a "
                                                  r"sealed copy$"):
            checked()
    cache.close()


def test_a_second_restore_shares_the_copy_a_rewritten_file_gets_a_new_one(tmp_path: Path) -> None:
    p = tmp_path / "s"
    _write(p, fill=1)
    cache = SealedSaves()
    a, save_a = cache.acquire(str(p))
    b, save_b = cache.acquire(str(p))
    assert save_a is save_b and os.fstat(a).st_ino == os.fstat(b).st_ino  # one memfd
    _write(p, name="other", fill=2)  # rewritten: another mtime (and here size/inode may match)
    os.utime(p, ns=(1, 1))
    c, save_c = cache.acquire(str(p))
    assert os.fstat(c).st_ino != os.fstat(a).st_ino and save_c.header["record"]["name"] == "other"
    assert cache.stats()["entries"] == 2
    for fd in (a, b, c):
        os.close(fd)
    cache.close()


def test_unused_idle_copies_are_dropped_used_ones_kept(tmp_path: Path) -> None:
    now = [0.0]
    cache = SealedSaves(idle=5.0, clock=lambda: now[0])
    files = []
    for i in range(2):
        files.append(tmp_path / f"s{i}")
        _write(files[-1], name=f"g{i}")
    alive = [True]
    fd0, save0 = cache.acquire(str(files[0]))
    cache.used_by(save0, lambda: alive[0])
    fd1, _ = cache.acquire(str(files[1]))
    os.close(fd0)
    os.close(fd1)
    now[0] = 4.0
    cache.prune()
    assert cache.stats()["entries"] == 2  # not idle long enough
    now[0] = 6.0
    cache.prune()
    assert cache.stats()["entries"] == 1  # the unused one went; the one a domain runs from stays
    alive[0] = False
    cache.prune()
    assert cache.stats()["entries"] == 0
    cache.close()


def test_the_bounds_keep_the_cache_small(tmp_path: Path) -> None:
    size = len(_write(tmp_path / "s0"))
    cache = SealedSaves(max_entries=2, max_bytes=10 * size)
    fds = []
    for i in range(3):
        _write(tmp_path / f"s{i}", name=f"g{i}")
        fds.append(cache.acquire(str(tmp_path / f"s{i}"))[0])
    assert cache.stats()["entries"] == 2  # the least recently used unused copy went
    cache = SealedSaves(max_entries=8, max_bytes=size)
    _write(tmp_path / "s0")
    fds.append(cache.acquire(str(tmp_path / "s0"))[0])
    fds.append(cache.acquire(str(tmp_path / "s1"))[0])  # beyond the bytes: serves its restore only
    assert cache.stats()["entries"] == 1
    assert all(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS for fd in fds)  # every one still open
    for fd in fds:
        os.close(fd)


def test_restores_at_once_copy_the_file_once(tmp_path: Path) -> None:
    import threading

    p = tmp_path / "s"
    _write(p)
    cache = SealedSaves()
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(cache.acquire(str(p))[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({os.fstat(fd).st_ino for fd in got}) == 1 and cache.stats()["entries"] == 1
    assert not cache._sealing  # the gates go with the restores that used them
    for fd in got:
        os.close(fd)
    cache.close()
