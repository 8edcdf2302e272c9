"""restore's two reads of a save file (toolstack/save_check.py, core/savefile.read_save_header): the header
first, with read_save's one-line errors for what it covers; the whole-file check on its own thread, which
refuses a corrupt file, and a file rewritten between the two reads, in one line."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from hyperdisco.core.savefile import PAGE, SaveFileError, SaveWriter, read_save, read_save_header
from hyperdisco.toolstack.requests import RequestError
from hyperdisco.toolstack.save_check import SaveCheck


def _write(path: Path, name: str = "g") -> bytes:
    out = io.BytesIO()
    w = SaveWriter(out, {"hyperdisco": "0.1.0", "kernel": "sha256:abc", "record": {"name": name}})
    w.json_section(b"VCPU", {"index": 0})
    ram = bytearray(8 * PAGE)
    ram[2 * PAGE:3 * PAGE] = b"\x5a" * PAGE
    w.memory_section(0, ram)
    w.finish()
    path.write_bytes(out.getvalue())
    return out.getvalue()


def test_the_header_alone_is_read_saves_header(tmp_path: Path) -> None:
    p = tmp_path / "s"
    _write(p)
    assert read_save_header(str(p)) == read_save(str(p)).header


@pytest.mark.parametrize("cut, why", [(0, "not a hyperdisco save file"), (10, "truncated"),
                                      (14, "truncated"), (30, "truncated")])
def test_a_header_cut_short_is_one_line(tmp_path: Path, cut: int, why: str) -> None:
    p = tmp_path / "s"
    p.write_bytes(_write(p)[:cut])
    with pytest.raises(SaveFileError, match=why):
        read_save_header(str(p))


def test_another_version_or_first_section_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "s"
    data = _write(p)
    p.write_bytes(data[:8] + struct.pack("<I", 99) + data[12:])
    with pytest.raises(SaveFileError, match="save format version 99"):
        read_save_header(str(p))
    p.write_bytes(data[:12] + b"VCPU" + data[16:])
    with pytest.raises(SaveFileError, match="no header"):
        read_save_header(str(p))


def test_a_good_file_passes(tmp_path: Path) -> None:
    p = tmp_path / "s"
    _write(p)
    check = SaveCheck(str(p), read_save_header(str(p)))
    check.wait()
    assert check.failure() is None


def test_a_flipped_memory_byte_is_refused(tmp_path: Path) -> None:
    """What the header alone cannot see: the check finds it."""
    p = tmp_path / "s"
    data = bytearray(_write(p))
    i = data.index(b"\x5a" * PAGE)
    data[i + 100] ^= 1
    p.write_bytes(bytes(data))
    header = read_save_header(str(p))  # the header reads fine
    with pytest.raises(RequestError, match=r"^hyperdisco: restore: .*\(checksum mismatch\)$"):
        SaveCheck(str(p), header).wait()


def test_a_file_rewritten_after_its_header_was_read_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "s"
    _write(p, "first")
    header = read_save_header(str(p))
    _write(p, "second")  # a whole, valid file, but not the one whose configuration was built
    with pytest.raises(RequestError, match="changed while it was being restored"):
        SaveCheck(str(p), header).wait()


def test_the_domain_process_check_runs_meanwhile_and_gives_the_file_or_one_line(tmp_path: Path) -> None:
    """vmm/snapshot.open_save_soon: the file comes back checked; a corrupt one raises when it is asked for."""
    import os

    from hyperdisco.errors import HyperdiscoError
    from hyperdisco.vmm.snapshot import open_save_soon

    p = tmp_path / "s"
    data = bytearray(_write(p))
    checked = open_save_soon(os.open(p, os.O_RDONLY))
    assert checked().header == read_save_header(str(p))
    data[data.index(b"\x5a" * PAGE) + 7] ^= 1
    p.write_bytes(bytes(data))
    checked = open_save_soon(os.open(p, os.O_RDONLY))
    with pytest.raises(HyperdiscoError, match=r"^hyperdisco: restore: save file: corrupt save file"):
        checked()
