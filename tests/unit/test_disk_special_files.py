"""Issue 12 item 2: special files as disk images, bases, backing files, kernels and ramdisks are refused
in one line, without blocking, and what is read is bounded."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from hyperdisco.backends.disk import open_disk
from hyperdisco.errors import ImageError
from hyperdisco.images import load_kernel_elf
from hyperdisco.images.hostfile import read_regular_file
from hyperdisco.toolstack import build

MIB = 1 << 20

pytestmark = pytest.mark.timeout(30)  # a regression here is a hang: fail it instead

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img not installed (apt-get install qemu-utils)")


def one_line(exc: pytest.ExceptionInfo[ImageError], *words: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(("fmt", "readonly", "persistent"), [
    ("raw", False, True), ("raw", True, True), ("qcow2", False, True), ("qcow2", True, True),
    ("raw", False, False), ("cow", False, True), ("cow", True, True),
])
def test_fifo_target_is_refused_without_blocking(fifo: Path, fmt: str, readonly: bool,
                                                 persistent: bool) -> None:
    with pytest.raises(ImageError) as exc:
        open_disk(str(fifo), fmt, readonly=readonly, persistent=persistent)
    one_line(exc, str(fifo), "is a FIFO, not a disk image")


def test_fifo_as_cow_base_is_refused(tmp_path: Path, fifo: Path) -> None:
    for persistent in (True, False):
        with pytest.raises(ImageError) as exc:
            open_disk(str(tmp_path / "o.cow"), "cow", persistent=persistent, base=str(fifo))
        one_line(exc, str(fifo), "FIFO")
    assert not (tmp_path / "o.cow").exists()


@needs_qemu_img
def test_fifo_as_qcow2_backing_file_is_refused(tmp_path: Path, fifo: Path) -> None:
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "fifo", "-F", "raw", str(top),
                    "1M"], check=True)
    with pytest.raises(ImageError) as exc:
        open_disk(str(top), "qcow2")
    one_line(exc, "FIFO")


def test_directory_socket_and_char_device_are_not_disks(tmp_path: Path) -> None:
    for readonly in (False, True):
        with pytest.raises(ImageError) as exc:
            open_disk(str(tmp_path), readonly=readonly)
        one_line(exc, "is a directory, not a disk image")
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(ImageError) as exc:
            open_disk(str(sock_path))
        one_line(exc, "is a socket")
    finally:
        sock.close()
    with pytest.raises(ImageError) as exc:
        open_disk("/dev/zero", readonly=True)
    one_line(exc, "/dev/zero", "is a character device")
    with pytest.raises(ImageError) as exc:
        open_disk(str(tmp_path / "o.cow"), "cow", base="/dev/zero")
    one_line(exc, "character device")


def test_kernel_and_ramdisk_special_files(tmp_path: Path, fifo: Path) -> None:
    with pytest.raises(ImageError) as exc:
        load_kernel_elf(fifo)
    one_line(exc, str(fifo), "is a FIFO, not a kernel file")
    with pytest.raises(ImageError) as exc:
        build.domain_config("d", str(fifo), None, None, 64)  # the client must not hang on it
    one_line(exc, "FIFO")
    with pytest.raises(ImageError) as exc:
        load_kernel_elf(Path("/dev/zero"))
    one_line(exc, "character device")
    with pytest.raises(ImageError) as exc:
        build._initrd(*build._file_key(Path("/dev/zero")))
    one_line(exc, "/dev/zero", "is a character device, not a ramdisk file")
    with pytest.raises(ImageError) as exc:
        build._initrd(*build._file_key(fifo))
    one_line(exc, "FIFO")
    with pytest.raises(ImageError) as exc:
        build._initrd(*build._file_key(tmp_path))
    one_line(exc, "is a directory")


def test_sizes_are_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(257 * MIB)  # sparse
    with pytest.raises(ImageError) as exc:
        load_kernel_elf(big)
    one_line(exc, "kernel file is larger than 256 MiB")
    with pytest.raises(ImageError) as exc:
        read_regular_file(big, 1 << 30 >> 3, "ramdisk")
    one_line(exc, "ramdisk file is larger than 128 MiB")
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1000)
    assert read_regular_file(small, 1000, "ramdisk") == b"x" * 1000
    with pytest.raises(ImageError):
        read_regular_file(small, 999, "ramdisk")


def test_kernel_decompression_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import bz2
    import gzip
    import lzma

    from hyperdisco.images import bzimage

    monkeypatch.setattr(bzimage, "MAX_KERNEL_BYTES", MIB)
    bomb = bytes(MIB + 4096)
    for payload in (gzip.compress(bomb, 1), lzma.compress(bomb, preset=0), bz2.compress(bomb, 1)):
        with pytest.raises(ImageError, match="decompresses to more than 1 MiB"):
            bzimage.decompress_payload(payload, "k")
    assert bzimage.decompress_payload(gzip.compress(bytes(MIB), 1), "k") == bytes(MIB)  # at the bound: fine
