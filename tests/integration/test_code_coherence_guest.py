"""Translated code stays coherent with what blkback writes into the guest's pages (docs/smp-atomicity.md):
two static non-PIE programs whose code differs only in an immediate, run in turn from a disk with the page
cache dropped between runs, so that the second one's code is read by blkback into pages that held the
first one's code (the kernel reuses freed pages first) at the same virtual address. Before the engine
dropped translated code on host writes, the second program could run the first one's code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import CC, Xl, domain_cfg
from .test_disks import MKFS, needs_mkfs, wait_for

pytestmark = pytest.mark.slow

SOURCE = "int main(void) { return CODE; }\n"
ROUNDS = 40


def program(tmp_path: Path, code: int) -> Path:
    if CC is None:
        pytest.skip("no C compiler (gcc) to build the guest programs")
    src = tmp_path / f"p{code}.c"
    src.write_text(SOURCE)
    out = tmp_path / f"p{code}"
    p = subprocess.run([CC, "-static", "-no-pie", "-O2", f"-DCODE={code}", "-o", str(out), str(src)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot build a static guest program: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


@needs_mkfs
def test_programs_read_by_blkback_run_their_own_code(xl: Xl, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    for name, code in (("a", 11), ("b", 22)):
        binary = program(tmp_path, code)
        (seed / name).write_bytes(binary.read_bytes())
        (seed / name).chmod(0o755)
    img = tmp_path / "progs.img"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    assert MKFS is not None
    subprocess.run([MKFS, "-q", "-F", "-d", str(seed), str(img)], check=True)
    xl("create", domain_cfg(tmp_path, "cc1", f"disk = [ 'format=raw, vdev=xvdb, access=ro, target={img}' ]"))
    wait_for(xl, "cc1", "[ -b /dev/xvdb ]")
    script = (
        "mkdir -p /mnt/p && mount -t ext4 -o ro /dev/xvdb /mnt/p && bad=0 && "
        f"for i in $(seq {ROUNDS}); do "
        "echo 3 > /proc/sys/vm/drop_caches; /mnt/p/a; [ $? = 11 ] || bad=$((bad+1)); "
        "echo 3 > /proc/sys/vm/drop_caches; /mnt/p/b; [ $? = 22 ] || bad=$((bad+1)); "
        "done; echo \"RESULT bad=$bad\"; umount /mnt/p"
    )
    r = xl("exec", "cc1", script, "--timeout", "600", timeout=700)
    m = re.search(r"RESULT bad=(\d+)", r.stdout)
    assert m is not None, r.stdout[-2000:]
    assert int(m.group(1)) == 0, f"{m.group(1)} of {2 * ROUNDS} runs ran the other program's code"
