"""The default initramfs boots real root filesystems (hyperdisco/images/guest/init): root=UUID=/LABEL=,
an /sbin/init that is an absolute symlink inside the new root (as Debian's -> /lib/systemd/systemd),
init=, ro/rw, rootfstype=, rootwait=; a root it cannot use is one line, then the initramfs's shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages
from hyperdisco.images.rootfs import default_busybox

from .conftest import hyperdisco

pytestmark = pytest.mark.slow

MKFS = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
needs_mkfs = pytest.mark.skipif(MKFS is None, reason="mkfs.ext4 (e2fsprogs) not installed")

UUID = "3f1c2a9e-5b1d-4c2e-9a7f-0d6b8e4c2a11"
LABEL = "hdroot"

# The new root's programs: each says who it is, as what pid, and how / is mounted, then powers off.
SCRIPT = """#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo "{marker} pid=$$ root=$(/bin/busybox awk '$2 == "/" {{print $3 "," $4}}' /proc/mounts)"
/bin/busybox poweroff -f
"""


def root_image(path: Path, busybox: Path, uuid: str = UUID, label: str = LABEL) -> Path:
    """A small ext4 root: busybox as /bin/sh, /sbin/init -> /opt/hd/start (absolute, so it resolves only
    inside this filesystem), and a second program /opt/hd/other for init=."""
    tree = path.with_suffix(".tree")
    for d in ("bin", "sbin", "proc", "dev", "opt/hd"):
        (tree / d).mkdir(parents=True)
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    os.chmod(tree / "bin" / "busybox", 0o755)
    os.symlink("busybox", tree / "bin" / "sh")
    for name, marker in (("start", "HD-ROOT-INIT"), ("other", "HD-ROOT-OTHER")):
        (tree / "opt" / "hd" / name).write_text(SCRIPT.format(marker=marker))
        os.chmod(tree / "opt" / "hd" / name, 0o755)
    os.symlink("/opt/hd/start", tree / "sbin" / "init")
    with open(path, "wb") as f:
        f.truncate(32 << 20)
    assert MKFS is not None
    subprocess.run([MKFS, "-q", "-F", "-U", uuid, "-L", label, "-d", str(tree), str(path)], check=True)
    return path


@pytest.fixture
def image(images: GuestImages, tmp_path: Path) -> Path:
    return root_image(tmp_path / "root.img", default_busybox())


def boot(image: Path, cmdline: str) -> str:
    """Boot with `image` as xvda and `cmdline`; the guest must power itself off. Its console output."""
    r = hyperdisco("run", "--disk", f"format=raw, vdev=xvda, access=rw, target={image}",
                   "--cmdline", f"console=hvc0 {cmdline}", "--timeout", "90", timeout=120)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr)
    assert "Traceback" not in r.stderr
    return r.stdout


def marker_line(out: str, marker: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(marker)]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


@needs_mkfs
def test_root_by_uuid_read_only_follows_an_absolute_init_symlink(image: Path) -> None:
    out = boot(image, f"root=UUID={UUID} ro")
    line = marker_line(out, "HD-ROOT-INIT")
    assert line.split()[1:] == ["pid=1", "root=ext4,ro,relatime"], line
    assert "staying in the initramfs" not in out


@needs_mkfs
def test_root_by_label_read_write_with_rootfstype_and_rootwait(image: Path) -> None:
    out = boot(image, f"root=LABEL={LABEL} rw rootfstype=ext4 rootwait")
    line = marker_line(out, "HD-ROOT-INIT")
    assert line.split()[1:] == ["pid=1", "root=ext4,rw,relatime"], line


@needs_mkfs
def test_init_names_another_program_of_the_new_root(image: Path) -> None:
    out = boot(image, "root=/dev/xvda init=/opt/hd/other")
    line = marker_line(out, "HD-ROOT-OTHER")
    assert line.split()[1] == "pid=1", line
    assert "HD-ROOT-INIT" not in out


class Console:
    """`hyperdisco run` with a disk, driven as a user would: read the console until the initramfs's shell
    prompt, then type."""

    def __init__(self, image: Path, cmdline: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hyperdisco", "run", "--disk",
             f"format=raw, vdev=xvda, access=rw, target={image}", "--cmdline", f"console=hvc0 {cmdline}",
             "--timeout", "120"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.out = bytearray()

    def wait_prompt(self) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while b"hyperdisco-guest: up" not in self.out or not self.out.rstrip().endswith(b"#"):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.out[-2000:]
            chunk = self.proc.stdout.read()
            if chunk:
                self.out += chunk.replace(b"\x1b[6n", b"")
            else:
                time.sleep(0.05)

    def finish(self, typed: bytes) -> tuple[int, str, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(typed)
        self.proc.stdin.flush()
        rest, err = self.proc.communicate(timeout=60)
        out = (bytes(self.out) + rest).decode(errors="replace")
        return self.proc.returncode, out, err.decode(errors="replace")


def fails_to_the_shell(image: Path, cmdline: str) -> str:
    """Boot a root that cannot be used: its one line, then the initramfs's shell, which still works."""
    c = Console(image, cmdline)
    try:
        c.wait_prompt()
        rc, out, err = c.finish(b"echo shell-$((6*7)); poweroff\n")
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
    assert rc == 0, (out[-3000:], err)
    assert "Traceback" not in err
    assert "shell-42" in out
    lines = [ln for ln in out.splitlines() if "hyperdisco-guest: root=" in ln]
    assert len(lines) == 1, out[-3000:]
    assert "HD-ROOT" not in out
    return lines[0].strip()


@needs_mkfs
def test_a_missing_root_is_one_line_and_the_initramfs_shell(image: Path) -> None:
    line = fails_to_the_shell(image, "root=UUID=00000000-0000-4000-8000-000000000000 rootwait=3")
    assert line == ("hyperdisco-guest: root=UUID=00000000-0000-4000-8000-000000000000: no such device "
                    "(waited 3 s); staying in the initramfs"), line


@needs_mkfs
def test_an_init_that_is_not_on_the_root_is_one_line(image: Path) -> None:
    line = fails_to_the_shell(image, f"root=LABEL={LABEL} init=/sbin/missing")
    assert line == (f"hyperdisco-guest: root=LABEL={LABEL}: no /sbin/missing on /dev/xvda; "
                    "staying in the initramfs"), line
