"""Issue 12, item 1, with the guest as the attacker: from inside a domain, write a qcow2 header whose
backing file is the host's /etc/shadow into a raw disk the domain owns. Neither a cow overlay over that
disk nor opening it as qcow2 may ever show the host file: a cow base is read as the format given (raw
by default), never probed; a qcow2 backing file outside the image's directory is refused in one line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed"),
]

SECRET = "/etc/shadow"


def nonzero_runs(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes) of the non-zero stretches of `data`, joined across short gaps of zeros."""
    runs: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if data[i] == 0:
            i += 1
            continue
        j = i
        while j < len(data) and any(data[j:j + 16]):
            j += 1
        runs.append((i, data[i:j]))
        i = j
    return runs


def wait_for(xl: Xl, vdev: str) -> None:
    xl("exec", "attacker", f"i=0; until [ -b /dev/{vdev} ]; do i=$((i+1)); [ $i -gt 150 ] && exit 1; "
                           "sleep 0.2; done", "--timeout", "120")


def printf_octal(data: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in data)


def test_a_guest_built_qcow2_never_reaches_host_files(xl: Xl, tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"  # built on the host only to learn its bytes; the guest writes them
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", SECRET, "-F", "raw", str(evil)],
                   check=True)
    image = evil.read_bytes()
    disk = tmp_path / "guest.raw"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
    spec = f"format=raw, vdev=xvdb, access=rw, target={disk}"
    xl("create", domain_cfg(tmp_path, "attacker", f"disk = [ '{spec}' ]", memory=96))
    wait_for(xl, "xvdb")
    writes = "; ".join(f"printf '{printf_octal(run)}' | dd of=/dev/xvdb bs=1 seek={off} conv=notrunc "
                       "2>/dev/null" for off, run in nonzero_runs(image))
    xl("exec", "attacker", writes + "; sync", "--timeout", "120")
    assert disk.read_bytes()[:4] == b"QFI\xfb"  # the guest's disk now holds a qcow2 header
    xl("block-detach", "attacker", "xvdb")

    # 1. a cow overlay over the guest's disk: the base is raw unless told, so the guest sees its own bytes
    xl("block-attach", "attacker", f"format=cow, vdev=xvdc, access=rw, base={disk}, target={tmp_path}/o.cow")
    wait_for(xl, "xvdc")
    head = xl("exec", "attacker", "dd if=/dev/xvdc bs=4 count=1 2>/dev/null | od -An -c", "--timeout", "60")
    assert "Q   F   I" in head.stdout, head.stdout
    leaked = xl("exec", "attacker", "grep -c 'root:' /dev/xvdc || true", "--timeout", "60").stdout.split()
    assert leaked[-1] == "0", leaked

    # 2. the guest's disk opened as qcow2 (an administrator's mistake): the backing file is refused
    p = xl("block-attach", "attacker", f"format=qcow2, vdev=xvdd, access=ro, target={disk}", check=False)
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0, p.stderr
    assert SECRET in p.stderr or "outside" in p.stderr or "backing" in p.stderr, p.stderr
