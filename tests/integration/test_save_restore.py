"""save / restore of a running domain (docs/save-format.md): the stock guest suspends itself, comes back
in a new domain and carries on: its shell (a variable of the console's shell), its processes (a counter
loop continues without a gap), its disks (a file written before save reads back after, through a
reconnected blkfront); a corrupt or truncated file is refused with one line."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from hyperdisco.client import Connection

from .conftest import Xl, domain_cfg
from .test_disks import MKFS, ext4_image, text, wait_for

pytestmark = pytest.mark.slow


def _console_type(xl: Xl, dom: str, line: str) -> None:
    """Type `line` at the guest's console shell (the shell exec's subshells are children of)."""
    conn = Connection(xl.env["HYPERDISCO_SOCKET"])
    with conn:
        d = conn.lookup(dom)
        with d.console() as c:
            c.write(line.encode() + b"\r")
            time.sleep(1.0)


def test_save_restore_carries_on(xl: Xl, tmp_path: Path) -> None:
    disk = []
    if MKFS is not None:
        img = ext4_image(tmp_path / "data.img", 32, {"before.txt": "host\n"})
        disk = [f"disk = [ 'format=raw, vdev=xvdb, access=rw, target={img}' ]"]
    xl("create", domain_cfg(tmp_path, "sr1", *disk))
    xl("exec", "sr1", "echo up")
    _console_type(xl, "sr1", "export SAVED_VAR=kept-across-restore")
    # a counter the guest's own process prints to a file, once every 0.2 s
    xl("exec", "sr1", "(i=0; while true; do i=$((i+1)); echo $i >> /tmp/counter; sleep 0.2; done) "
                      ">/dev/null 2>&1 &")
    if disk:
        wait_for(xl, "sr1", "[ -b /dev/xvdb ]")
        xl("exec", "sr1", "mkdir -p /mnt/d && mount /dev/xvdb /mnt/d && echo before-save > /mnt/d/g.txt "
                          "&& sync")
    time.sleep(1.0)
    save = tmp_path / "sr1.save"
    r = xl("save", "sr1", str(save))
    assert "Saved: saved" in r.stderr, r.stderr
    assert "sr1" not in xl.rows()  # the saved domain ended
    r = xl("restore", str(save))
    assert "Restored domain sr1" in r.stderr, r.stderr
    # the variable of the console's shell is still set: exec's subshell inherits it
    assert text(xl("exec", "sr1", "echo var=$SAVED_VAR")).split()[-1] == "var=kept-across-restore"
    time.sleep(2.0)
    counts = [int(x) for x in xl("exec", "sr1", "cat /tmp/counter").stdout.split() if x.isdigit()]
    assert len(counts) > 10
    assert counts == list(range(1, len(counts) + 1)), counts  # no gap, no repeat: the same process
    if disk:
        r = xl("exec", "sr1", "cat /mnt/d/g.txt && echo after-restore > /mnt/d/h.txt && sync && "
                              "cat /mnt/d/h.txt")
        assert text(r).split()[-2:] == ["before-save", "after-restore"], r.stdout
    xl("destroy", "sr1")


def test_bad_save_files_one_line(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "sr2"))
    xl("exec", "sr2", "echo up")
    save = tmp_path / "sr2.save"
    xl("save", "sr2", str(save))
    data = save.read_bytes()
    cases = {"truncated": data[:len(data) // 2],
             "corrupt": data[:5000] + bytes([data[5000] ^ 1]) + data[5001:],
             "other-version": data[:8] + b"\x07\0\0\0" + data[12:], "empty": b""}
    for name, content in cases.items():
        bad = tmp_path / f"{name}.save"
        bad.write_bytes(content)
        r = xl("restore", str(bad), check=False)
        assert r.returncode != 0, name
        lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("Loading")]
        assert len(lines) == 1 and re.match(r"hyperdisco: restore: ", lines[0]), (name, r.stderr)
    assert "sr2" not in xl.rows()
    # the good file still restores
    xl("restore", str(save))
    assert xl("exec", "sr2", "echo back").stdout.strip().endswith("back")


def test_checkpoint_keeps_running(xl: Xl, tmp_path: Path) -> None:
    """save -c: the domain carries on (its suspend cancelled); the file restores the state at the save."""
    xl("create", domain_cfg(tmp_path, "sr3"))
    xl("exec", "sr3", "echo at-save > /tmp/state")
    save = tmp_path / "sr3.save"
    r = xl("save", "-c", "sr3", str(save))
    assert "Saved: saved" in r.stderr, r.stderr
    r = xl("exec", "sr3", "cat /tmp/state; echo after-save > /tmp/state; cat /tmp/state")
    assert text(r).split()[-2:] == ["at-save", "after-save"], r.stdout
    xl("destroy", "sr3")
    xl("restore", str(save))
    assert text(xl("exec", "sr3", "cat /tmp/state")).split()[-1] == "at-save"


def test_save_refuses_existing_file(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "sr4"))
    xl("exec", "sr4", "echo up")
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    r = xl("save", "sr4", str(victim), check=False)
    assert r.returncode != 0 and "File exists" in r.stderr, r.stderr
    assert victim.read_text() == "keep me"
    assert xl("exec", "sr4", "echo still").stdout.strip().endswith("still")  # not suspended
