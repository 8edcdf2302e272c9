"""The save-file container (hyperdisco/core/savefile.py): a round trip keeps every section and only the
non-zero pages; every truncation and every flipped byte is refused with one line."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from hyperdisco.core import savefile
from hyperdisco.core.savefile import PAGE, SaveFileError, SaveWriter, read_save


def _ram() -> bytearray:
    ram = bytearray(16 * PAGE)
    ram[0:5] = b"first"
    ram[3 * PAGE + 100] = 7
    ram[4 * PAGE:5 * PAGE] = b"\xff" * PAGE
    ram[15 * PAGE + PAGE - 1] = 1
    return ram


def _write(path: Path) -> bytes:
    out = io.BytesIO()
    w = SaveWriter(out, {"hyperdisco": "0.1.0", "kernel": "sha256:abc", "config": {"name": "g"}})
    w.json_section(b"VCPU", {"index": 0, "rip": 0x1234})
    stored = w.memory_section(0x100000, _ram())
    assert stored == 4
    w.json_section(b"EVTC", {"abi": "2l"})
    w.finish()
    data = out.getvalue()
    path.write_bytes(data)
    return data


def test_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "s"
    data = _write(p)
    sf = read_save(str(p))
    assert sf.version == savefile.FORMAT_VERSION
    assert sf.header["kernel"] == "sha256:abc" and sf.header["config"] == {"name": "g"}
    assert sf.json(b"VCPU") == [{"index": 0, "rip": 0x1234}]
    assert sf.json(b"EVTC") == [{"abi": "2l"}]
    restored = bytearray(16 * PAGE)
    for gpa, chunk in sf.memory_runs():
        off = gpa - 0x100000
        restored[off:off + len(chunk)] = chunk
    assert restored == _ram()
    # only the 4 non-zero pages are stored (runs: page 0, pages 3-4, page 15), each run page-aligned in
    # the file after its record's padding
    assert len(data) < 9 * PAGE
    extents = list(sf.memory_extents())
    assert [(g, s // PAGE) for g, _o, s in extents] == [
        (0x100000, 1), (0x100000 + 3 * PAGE, 2), (0x100000 + 15 * PAGE, 1)]
    for gpa, offset, size in extents:
        assert offset % PAGE == 0
        assert data[offset:offset + size] == bytes(_ram()[gpa - 0x100000:gpa - 0x100000 + size])
    assert [(g, len(c) // PAGE) for g, c in sf.memory_runs()] == [
        (0x100000, 1), (0x100000 + 3 * PAGE, 2), (0x100000 + 15 * PAGE, 1)]


def test_every_truncation_refused(tmp_path: Path) -> None:
    p = tmp_path / "s"
    data = _write(p)
    q = tmp_path / "t"
    # every cut point in the non-memory parts, and a stride through the memory
    cuts = list(range(0, 200)) + list(range(200, len(data), 97)) + list(range(len(data) - 80, len(data)))
    for cut in cuts:
        q.write_bytes(data[:cut])
        with pytest.raises(SaveFileError) as e:
            read_save(str(q))
        assert "\n" not in str(e.value)


def test_every_flipped_byte_refused(tmp_path: Path) -> None:
    p = tmp_path / "s"
    data = _write(p)
    q = tmp_path / "c"
    positions = list(range(0, 300)) + list(range(300, len(data), 61)) + [len(data) - 1]
    for i in positions:
        bad = bytearray(data)
        bad[i] ^= 0x40
        q.write_bytes(bytes(bad))
        with pytest.raises(SaveFileError) as e:
            read_save(str(q))
        assert "\n" not in str(e.value)


def test_trailing_data_and_other_version(tmp_path: Path) -> None:
    p = tmp_path / "s"
    data = _write(p)
    p.write_bytes(data + b"x")
    with pytest.raises(SaveFileError, match="after the checksum"):
        read_save(str(p))
    p.write_bytes(data[:8] + struct.pack("<I", 1) + data[12:])
    with pytest.raises(SaveFileError, match="version 1, this hyperdisco reads version 2"):
        read_save(str(p))
    p.write_bytes(b"garbage")
    with pytest.raises(SaveFileError, match="not a hyperdisco save file"):
        read_save(str(p))
    with pytest.raises(SaveFileError, match="cannot open"):
        read_save(str(tmp_path / "missing"))


def test_writer_refuses_unknown_tag() -> None:
    w = SaveWriter(io.BytesIO(), {})
    with pytest.raises(ValueError):
        w.section(b"ZZZZ", b"")
    with pytest.raises(ValueError):
        w.section(b"END ", b"")


def test_long_runs_split() -> None:
    view = memoryview(b"\x01" * (5 * PAGE))
    assert list(savefile.nonzero_runs(view, max_run=2)) == [(0, 2), (2, 2), (4, 1)]


def test_padding_must_be_zero_and_exact(tmp_path: Path) -> None:
    """A run record's padding is checked: a non-zero byte in it, or a pad that does not end at a page
    boundary, is refused (even with a checksum recomputed to match)."""
    import hashlib

    p = tmp_path / "s"
    data = bytearray(_write(p))
    sf = read_save(str(p))
    _gpa, offset, _size = next(sf.memory_extents())
    pad_start = offset - 1  # the last padding byte before the first run's pages

    def resealed(b: bytearray) -> bytes:
        body = bytes(b[:-44])
        return body + b[-44:-32] + hashlib.sha256(body).digest()

    bad = bytearray(data)
    bad[pad_start] = 1
    p.write_bytes(resealed(bad))
    with pytest.raises(SaveFileError, match="padding"):
        read_save(str(p))
    # the record's pad field says one byte less: the pages would start unaligned
    rec = _first_record(data)
    bad = bytearray(data)
    struct.pack_into("<I", bad, rec + 12, struct.unpack_from("<I", bad, rec + 12)[0] - 1)
    p.write_bytes(resealed(bad))
    with pytest.raises(SaveFileError, match="memory run record"):
        read_save(str(p))


def _first_record(data: bytearray) -> int:
    """File offset of the first memory run record (just after the "MEM " section header)."""
    return data.index(b"MEM ") + 12
