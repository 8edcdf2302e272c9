"""The newc cpio writer/reader and the initramfs sanity check."""

from __future__ import annotations

import gzip
import lzma
import stat

import pytest

from hyperdisco.errors import ImageError
from hyperdisco.images.cpio import CpioWriter, check_cpio, cpio_entries, cpio_members


def _archive() -> bytes:
    w = CpioWriter()
    w.directory("etc")
    w.directory("/bin/", mode=0o700)
    w.file("etc/hello", b"hello\n", mode=0o600)
    w.file("empty", b"")
    w.file("odd", b"abc")  # data not a multiple of 4
    w.symlink("bin/sh", "busybox")
    w.chardev("dev-console", 5, 1, 0o600)
    return w.finish()


def test_round_trip_members_and_order() -> None:
    assert cpio_members(_archive()) == ["etc", "bin", "etc/hello", "empty", "odd", "bin/sh", "dev-console"]


def test_round_trip_modes_data_and_devices() -> None:
    entries = {e.name: e for e in cpio_entries(_archive())}
    assert entries["etc"].mode == stat.S_IFDIR | 0o755
    assert entries["bin"].mode == stat.S_IFDIR | 0o700
    assert entries["etc/hello"].mode == stat.S_IFREG | 0o600
    assert entries["etc/hello"].data == b"hello\n"
    assert entries["odd"].data == b"abc"
    assert entries["empty"].data == b""
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"busybox"
    dev = entries["dev-console"]
    assert stat.S_ISCHR(dev.mode) and (dev.rdevmajor, dev.rdevminor) == (5, 1)


def test_layout_padding_and_trailer() -> None:
    data = _archive()
    assert len(data) % 512 == 0
    assert data.startswith(b"070701")
    assert b"TRAILER!!!\0" in data
    # Every header starts 4-byte aligned.
    pos = 0
    while (pos := data.find(b"070701", pos)) >= 0:
        assert pos % 4 == 0
        pos += 6
    # First header: 13 eight-digit hex fields, namesize counts the NUL, check is 0.
    fields = [int(data[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert fields[11] == len("etc") + 1
    assert fields[12] == 0
    assert data[110:114] == b"etc\0"


def test_writer_rejects_bad_paths_and_duplicates() -> None:
    w = CpioWriter()
    w.file("a", b"")
    with pytest.raises(ValueError):
        w.file("a", b"")
    with pytest.raises(ValueError):
        w.file("../escape", b"")
    with pytest.raises(ValueError):
        w.directory("/")


def test_gzip_archive_is_readable() -> None:
    assert cpio_members(gzip.compress(_archive())) == cpio_members(_archive())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_archive(), id="newc"),
        pytest.param(gzip.compress(_archive()), id="gzip"),
        pytest.param(lzma.compress(_archive()), id="xz"),
        pytest.param(b"070707" + b"0" * 70, id="odc"),
        pytest.param(b"\0" * 512 + _archive(), id="zero-padded"),
        pytest.param(b"\x02\x21\x4c\x18" + b"\0" * 16, id="lz4-legacy-by-magic"),
        pytest.param(b"\x28\xb5\x2f\xfd" + b"\0" * 16, id="zstd-by-magic"),
    ],
)
def test_check_cpio_accepts(data: bytes) -> None:
    check_cpio(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello world, not an archive", id="text"),
        pytest.param(b"\x7fELF" + b"\0" * 60, id="elf"),
        pytest.param(gzip.compress(b"just some gzipped text"), id="gzip-not-cpio"),
    ],
)
def test_check_cpio_rejects(data: bytes) -> None:
    with pytest.raises(ImageError) as exc:
        check_cpio(data, "/tmp/x.img")
    msg = str(exc.value)
    assert msg == "hyperdisco: /tmp/x.img: not a cpio initramfs"
    assert "\n" not in msg
