"""qcow2 interoperability with QEMU's tools in a real guest, and flushed writes surviving SIGKILL of the
daemon (issue 4): the guest writes through xen-blkfront -> blkback -> the image, the host checks with
qemu-img; images qemu-io filled read back in the guest.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdisco.backends.disk import open_disk
from hyperdisco.backends.disk.cow import CowImage
from hyperdisco.images import GuestImages

from .conftest import Xl, domain_cfg, domain_pid

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                       reason="qemu-img/qemu-io (qemu-utils) not installed"),
]

MiB = 1 << 20
WORD = b"hyperdisco-pattern-"  # the guest writes `yes WORD<tag>` into a file, then dd's that file


def pattern(tag: str, length: int) -> bytes:
    line = WORD + tag.encode() + b"\n"
    return (line * (length // len(line) + 1))[:length]


def make_pattern_cmd(tag: str, length: int, path: str) -> str:
    """Guest shell: the pattern (see pattern()) in a file, so dd reads whole blocks."""
    return f"yes {WORD.decode()}{tag} | head -c {length} > {path}"


def cfg(tmp_path: Path, name: str, *disks: str) -> str:
    items = ", ".join(f"'{d}'" for d in disks)
    return domain_cfg(tmp_path, name, f"disk = [ {items} ]")


def text(r: subprocess.CompletedProcess[str]) -> str:
    """The command's output without the kernel's console messages interleaved."""
    return "\n".join(ln for ln in r.stdout.splitlines() if not re.match(r"\s*\[\s*\d+\.\d+\]", ln))


def wait_for_disks(xl: Xl, dom: str, *vdevs: str) -> None:
    test = " && ".join(f"[ -b /dev/{v} ]" for v in vdevs)
    r = xl("exec", dom, f"i=0; until {test}; do i=$((i+1)); [ $i -gt 150 ] && exit 1; sleep 0.2; done",
           "--timeout", "90", check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((ln for ln in f if ln.startswith("State:")), "")
    except OSError:
        return "zombie (gone)"


def md5(data: bytes | bytearray) -> str:
    return hashlib.md5(data).hexdigest()


def guest_md5(xl: Xl, dom: str, dev: str, offset: int, length: int) -> str:
    """md5 of the guest's view of [offset, offset+length) of /dev/dev (4 KiB aligned)."""
    assert offset % 4096 == 0 and length % 4096 == 0
    r = xl("exec", dom, f"dd if=/dev/{dev} bs=4096 skip={offset // 4096} count={length // 4096} "
                        "iflag=direct 2>/dev/null | md5sum")
    found = re.findall(r"\b([0-9a-f]{32})\b", text(r))
    assert found, r.stdout
    return found[-1]


def qemu_img_check(image: Path, leaks_ok: bool = False) -> str:
    r = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(image)], capture_output=True, text=True)
    # 0: no errors; 3: leaked clusters only (no corruption)
    assert r.returncode in ((0, 3) if leaks_ok else (0,)), (r.returncode, r.stdout, r.stderr)
    assert "corrupt" not in r.stdout.lower() or "no errors" in r.stdout.lower(), r.stdout
    return r.stdout


def qemu_convert(image: Path, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(out)], check=True,
                   capture_output=True)
    return out.read_bytes()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# qcow2 interop


def test_guest_writes_to_qcow2_qemu_img_reads_them(xl: Xl, tmp_path: Path) -> None:
    plain = tmp_path / "plain.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(plain), "64M"], check=True)
    # a backing file with recognisable contents around where the guest writes
    base = tmp_path / "base.raw"
    base_bytes = bytearray(pattern("base", 64 * MiB))
    base.write_bytes(base_bytes)
    base_sum = sha256(base)
    over = tmp_path / "over.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(over)],
                   check=True)

    # offsets inside 64 KiB clusters (partial clusters: the rest must come from the base / be zeros)
    a_off, a_len = 1283 * 4096, 1 * MiB + 12 * 4096
    b_off, b_len = 9 * 4096 + 40 * MiB, 300 * 1024
    xl("create", cfg(tmp_path, "q2", f"format=qcow2, vdev=xvdb, access=rw, target={plain}",
                     f"format=qcow2, vdev=xvdc, access=rw, target={over}"))
    wait_for_disks(xl, "q2", "xvdb", "xvdc")
    r = xl("exec", "q2", f"{make_pattern_cmd('plain', a_len, '/tmp/a')} && "
                         f"{make_pattern_cmd('over', b_len, '/tmp/b')} && "
                         f"dd if=/tmp/a of=/dev/xvdb bs=4096 seek={a_off // 4096} conv=fsync 2>/dev/null && "
                         f"dd if=/tmp/b of=/dev/xvdc bs=4096 seek={b_off // 4096} conv=fsync 2>/dev/null && "
                         "sync && echo WROTE")
    assert "WROTE" in text(r), r.stdout
    # the guest reads back its writes and (through the qcow2) the backing file's bytes
    assert guest_md5(xl, "q2", "xvdb", a_off, a_len) == md5(pattern("plain", a_len))
    assert guest_md5(xl, "q2", "xvdc", b_off, b_len) == md5(pattern("over", b_len))
    assert guest_md5(xl, "q2", "xvdc", 0, 64 * 1024) == md5(base_bytes[:64 * 1024])
    r = xl("exec", "q2", f"dd if=/dev/xvdb bs=4096 skip={a_off // 4096} count=1 2>/dev/null | od -A n -c "
                         "| head -2")
    assert "h   y   p   e   r" in r.stdout, r.stdout
    xl("destroy", "q2")  # closes the images

    qemu_img_check(plain)
    flat = qemu_convert(plain, tmp_path / "plain.raw")
    assert len(flat) == 64 * MiB
    assert flat[a_off:a_off + a_len] == pattern("plain", a_len)
    assert flat[:a_off].count(0) == a_off and flat[a_off + a_len:].count(0) == len(flat) - a_off - a_len

    qemu_img_check(over)
    flat = qemu_convert(over, tmp_path / "over.raw")
    expect = bytearray(base_bytes)
    expect[b_off:b_off + b_len] = pattern("over", b_len)
    assert flat[b_off:b_off + b_len] == pattern("over", b_len)
    assert flat == bytes(expect)  # the partial clusters around the write kept the backing file's bytes
    assert sha256(base) == base_sum  # the backing file never changes
    info = subprocess.run(["qemu-img", "info", "--output=json", str(over)], capture_output=True, text=True,
                          check=True).stdout
    assert '"backing-filename"' in info and str(base) in info


def test_qemu_io_filled_qcow2_reads_back_in_the_guest(xl: Xl, tmp_path: Path) -> None:
    img = tmp_path / "filled.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 3M 64k",
                    "-c", "write -P 0x3c 5000k 12k", str(img)], check=True, capture_output=True)
    qemu_img_check(img)
    before = sha256(img)
    xl("create", cfg(tmp_path, "qio", f"format=qcow2, vdev=xvdb, access=ro, target={img}"))
    wait_for_disks(xl, "qio", "xvdb")
    r = xl("exec", "qio", "dd if=/dev/xvdb bs=4096 count=1 2>/dev/null | od -A d -t x1 | head -3; "
                          "dd if=/dev/xvdb bs=4096 skip=768 count=1 2>/dev/null | hexdump -C | head -2; "
                          "dd if=/dev/xvdb bs=1024 skip=5000 count=12 2>/dev/null | xxd | head -1")
    out = text(r)
    assert re.search(r"^0000000( 5a){16}$", out, re.M), r.stdout
    assert re.search(r"^00000000( +a5){16}", out.replace("  ", " "), re.M), r.stdout
    assert re.search(r"^00000000: 3c3c 3c3c", out, re.M), r.stdout
    assert guest_md5(xl, "qio", "xvdb", 0, 4 * MiB) == md5(b"\x5a" * MiB + bytes(2 * MiB) + b"\xa5" * 65536
                                                           + bytes(MiB - 65536))
    window = bytearray(2 * MiB)  # [4 MiB, 6 MiB): 0x3c at [5000 KiB, 5012 KiB)
    window[(5000 - 4096) * 1024:(5012 - 4096) * 1024] = b"\x3c" * (12 * 1024)
    assert guest_md5(xl, "qio", "xvdb", 4 * MiB, 2 * MiB) == md5(bytes(window))
    xl("destroy", "qio")
    assert sha256(img) == before  # read-only: not a byte changed


# ---------------------------------------------------------------------------------------------------------
# SIGKILL of the daemon


class Daemon:
    """A daemon subprocess of our own (the conftest fixture's pattern), so the test can SIGKILL it."""

    def __init__(self, tmp_path: Path, tag: str) -> None:
        self.sock = tmp_path / f"{tag}.sock"
        self.logpath = tmp_path / f"{tag}.log"
        self.log = open(self.logpath, "w")
        argv = [sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(self.sock), "-v"]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            assert self.proc.poll() is None, self.logpath.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        self.xl = Xl(self.sock)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def daemons(images: GuestImages, tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def test_flushed_writes_survive_sigkill_of_the_daemon(daemons: list[Daemon], tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    q = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "64M"], check=True)
    cbase = tmp_path / "cbase.raw"
    cbase.write_bytes(pattern("cbase", 16 * MiB))
    cow = tmp_path / "d.cow"
    CowImage.create(str(cow), str(cbase), "raw", 16 * MiB)
    cbase_sum = sha256(cbase)

    first = Daemon(tmp_path, "first")
    daemons.append(first)
    xl = first.xl
    xl("create", cfg(tmp_path, "k9", f"format=raw, vdev=xvdb, access=rw, target={raw}",
                     f"format=qcow2, vdev=xvdc, access=rw, target={q}",
                     f"format=cow, vdev=xvdd, access=rw, target={cow}"))
    wait_for_disks(xl, "k9", "xvdb", "xvdc", "xvdd")
    length = 2 * MiB + 20 * 4096
    offs = {"xvdb": 777 * 4096, "xvdc": 1031 * 4096 + 8 * MiB, "xvdd": 5 * MiB + 3 * 4096}
    cmds = [make_pattern_cmd(dev, length, f"/tmp/{dev}") for dev in offs]
    cmds += [f"dd if=/tmp/{dev} of=/dev/{dev} bs=4096 seek={off // 4096} conv=fsync 2>/dev/null"
             for dev, off in offs.items()]
    r = xl("exec", "k9", " && ".join(cmds) + " && echo FSYNCED")
    assert "FSYNCED" in text(r), r.stdout  # every dd returned from fsync: the flushes were answered
    # more writes without a flush may be in flight at the kill: allowed to be lost, must not corrupt
    xl("exec", "k9", "(dd if=/dev/urandom of=/dev/xvdc bs=64k seek=600 count=64 2>/dev/null &) ; "
                     "(dd if=/dev/urandom of=/dev/xvdd bs=64k seek=200 count=32 2>/dev/null &) ; true")
    # the domain's block backend lives in its domain process: kill that (and domain 0 with it)
    vmm = domain_pid(xl, "k9")
    os.kill(vmm, signal.SIGKILL)
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{vmm}") and "zombie" not in _state(vmm):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    expect = {dev: pattern(dev, length) for dev in offs}
    with open(raw, "rb") as f:
        f.seek(offs["xvdb"])
        assert f.read(length) == expect["xvdb"]
    qemu_img_check(q, leaks_ok=True)
    flat = qemu_convert(q, tmp_path / "d.flat")
    assert flat[offs["xvdc"]:offs["xvdc"] + length] == expect["xvdc"]
    assert flat[:offs["xvdc"]].count(0) == offs["xvdc"]  # nothing before it was touched
    disk = open_disk(str(cow), "cow", readonly=True)  # the overlay's header and table are consistent
    try:
        assert disk.read(offs["xvdd"], length) == expect["xvdd"]
        assert disk.read(0, 4096) == pattern("cbase", 4096)  # untouched clusters still read the base
    finally:
        disk.close()
    assert sha256(cbase) == cbase_sum

    # the locks died with the daemon: a new daemon opens all three read-write, and its guest sees the data
    second = Daemon(tmp_path, "second")
    daemons.append(second)
    second.xl("create", cfg(tmp_path, "after", f"format=raw, vdev=xvdb, access=rw, target={raw}",
                            f"format=qcow2, vdev=xvdc, access=rw, target={q}",
                            f"format=cow, vdev=xvdd, access=rw, target={cow}"))
    wait_for_disks(second.xl, "after", "xvdb", "xvdc", "xvdd")
    for dev, off in offs.items():
        assert guest_md5(second.xl, "after", dev, off, length) == md5(expect[dev]), dev
    second.xl("destroy", "after")
    qemu_img_check(q, leaks_ok=True)
    os.sync()
