"""Grant mappings between two guests, each in its own domain process (domain 0 brokers them): from inside
the guests, A grants B a page through /dev/xen/gntalloc (GNTTABOP setup by A's own grant table), B maps it
through /dev/xen/gntdev (GNTTABOP_map_grant_ref of A's grant, answered by A's process through domain 0),
reads A's pattern, sees A's counter move (the page is shared, not copied), writes an answer that A reads
through its own mapping, and unmaps (GNTTABOP_unmap_grant_ref). C may not map a grant made for B; a
read-only grant cannot be mapped for writing but can be read; B destroyed while it maps A's page leaves A's
guest working and able to end its grant, and a re-created B maps a fresh grant.

The guest side is tests/guest/grant_peer.c, built here with `gcc -static` and added to the default
initramfs as /bin/grant_peer (a second newc archive, as in test_interdomain_evtchn.py). The granting side
runs in the background in A, writing to a file the test polls.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import Xl, build_guest_program, domain_cfg, initrd_with_program
from .test_interdomain_evtchn import line, wait_output

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent.parent / "guest" / "grant_peer.c"
PEER = "/bin/grant_peer"
ANSWER = "answer-from-B"  # what `grant_peer map` writes (ANSWER_TEXT in grant_peer.c)
GUEST_TROUBLE = re.compile(r"double fault|Oops|BUG:|Kernel panic|general protection|WARNING:")


def build(tmp_path: Path) -> Path:
    return build_guest_program(SOURCE, tmp_path / "grant_peer")


def initrd_with(images: GuestImages, binary: Path, out: Path) -> Path:
    return initrd_with_program(images, binary, "grant_peer", out)


def boot(xl: Xl, tmp_path: Path, images: GuestImages, initrd: Path, name: str) -> int:
    """Create the domain (on_crash preserve: a crashed guest stays listed, its console readable), load
    gntdev and gntalloc in it; its domain ID, as `list` shows it."""
    xl("create", domain_cfg(tmp_path, name, f'kernel = "{images.kernel}"', f'ramdisk = "{initrd}"',
                            'on_crash = "preserve"'))
    r = xl("exec", name, f"modprobe xen-gntdev && modprobe xen-gntalloc && ls /dev/xen && ls -l {PEER}",
           "--timeout", "120")
    assert "gntdev" in r.stdout and "gntalloc" in r.stdout and PEER in r.stdout, r.stdout
    return int(xl.rows()[name][1])


def alive(xl: Xl, dom: str) -> bool:
    r = xl("exec", dom, "echo still-alive", "--timeout", "30", timeout=60, check=False)
    return r.returncode == 0 and r.stdout.strip().endswith("still-alive")


def why_dead(xl: Xl, dom: str) -> str:
    """What a guest that stopped answering left: its state in `list` and its kernel's last words."""
    rows = xl.rows()
    state = rows[dom][4] if dom in rows else "gone"
    p = subprocess.run(f"sleep 3 | {' '.join(xl.argv('console', dom))}", shell=True, capture_output=True,
                       text=True, env=xl.env, timeout=30)
    tail = p.stdout[-3000:]
    return f"{dom} state {state}; console tail:\n{tail}"


def share(xl: Xl, dom: str, job: str, remote: int, mode: str = "rw", timeout: int = 60) -> int:
    """grant_peer share in the background in `dom` (its pid in /tmp/JOB.pid); the grant reference."""
    xl("exec", dom, f"{PEER} share {remote} {mode} {timeout} > /tmp/{job}.out 2>&1 & "
                    f"echo $! > /tmp/{job}.pid")
    out = wait_output(xl, dom, job, "^GREF ")
    gref = line(out, "GREF")
    assert gref is not None and gref.isdigit(), out
    return int(gref)


def stop_share(xl: Xl, dom: str, job: str) -> str:
    """End a background share's wait (SIGUSR1): it frees its grant; its output once FREED shows."""
    xl("exec", dom, f"kill -USR1 $(cat /tmp/{job}.pid) 2>/dev/null; true")
    return wait_output(xl, dom, job, "^PAGE ")


def map_grant(xl: Xl, dom: str, remote: int, gref: int, mode: str = "rw") -> tuple[int, str]:
    """grant_peer map in the foreground: its exit status and output."""
    r = xl("exec", dom, f"{PEER} map {remote} {gref} {mode}", "--timeout", "60", timeout=90, check=False)
    return r.returncode, r.stdout


def check_mapped(xl: Xl, dom: str, out: str, rc: int, pattern: str, wrote: bool) -> None:
    """A map that worked: A's pattern read, A's counter seen moving, the answer written if asked, unmapped;
    and the mapping guest still answers afterwards (the unmap left it working)."""
    if rc != 0 or "DONE" not in out:
        state = "" if alive(xl, dom) else f"\n{why_dead(xl, dom)}"
        raise AssertionError(f"{dom}'s map failed (rc {rc}): {out}{state}")
    assert re.fullmatch(pattern, line(out, "READ") or ""), out
    live = line(out, "LIVE")
    assert live is not None, out
    c0, c1 = (int(x) for x in live.split())
    assert c1 > c0, f"A's counter did not move under {dom}'s mapping (a copy, not the page?): {out}"
    assert ("WROTE" in out) == wrote, out
    assert alive(xl, dom), f"{dom} stopped answering after it unmapped A's page: {why_dead(xl, dom)}"


def test_interdomain_grants(xl: Xl, tmp_path: Path, images: GuestImages) -> None:
    binary = build(tmp_path)
    initrd = initrd_with(images, binary, tmp_path / "initrd-grants.cpio")
    a = boot(xl, tmp_path, images, initrd, "ga")
    b = boot(xl, tmp_path, images, initrd, "gb")
    c = boot(xl, tmp_path, images, initrd, "gc")
    assert len({0, a, b, c}) == 4, (a, b, c)

    # A grants B a writable page; C may not map it (Xen: GNTST_general_error; gntdev's mmap fails EINVAL)
    gref = share(xl, "ga", "share1", b)
    rc, out_c = map_grant(xl, "gc", a, gref)
    assert rc == 1 and line(out_c, "ERR") == "mmap gntdev EINVAL", \
        f"C mapped d{a}'s grant {gref} made for d{b}: {out_c}"

    # B maps it, reads A's pattern and live counter, answers, unmaps; A reads the answer in its page
    rc, out_b = map_grant(xl, "gb", a, gref)
    print(f"B's map of d{a} grant {gref}: {out_b.strip()!r}")
    check_mapped(xl, "gb", out_b, rc, r"hello-from-A-\d+-rw", wrote=True)
    out_a = wait_output(xl, "ga", "share1", "^PAGE ")
    assert line(out_a, "ANSWER") == ANSWER and "FREED" in out_a, out_a
    assert re.fullmatch(r"hello-from-A-\d+-rw", line(out_a, "PAGE") or ""), out_a

    # a read-only grant: B's writable map is refused (GNTST_general_error), a read-only one works; C's
    # read-only map of it is refused too (not granted to C)
    ro = share(xl, "ga", "share2", b, "ro")
    rc, out_b = map_grant(xl, "gb", a, ro, "rw")
    assert rc == 1 and line(out_b, "ERR") == "mmap gntdev EINVAL", \
        f"B mapped d{a}'s read-only grant {ro} writable: {out_b}"
    rc, out_b = map_grant(xl, "gb", a, ro, "ro")
    check_mapped(xl, "gb", out_b, rc, r"hello-from-A-\d+-ro", wrote=False)
    rc, out_c = map_grant(xl, "gc", a, ro, "ro")
    assert rc == 1 and line(out_c, "ERR") == "mmap gntdev EINVAL", out_c
    # and a read-only map of a writable grant
    rw = share(xl, "ga", "share3", b)
    rc, out_b = map_grant(xl, "gb", a, rw, "ro")
    check_mapped(xl, "gb", out_b, rc, r"hello-from-A-\d+-rw", wrote=False)
    for job in ("share2", "share3"):
        out_a = stop_share(xl, "ga", job)
        assert "STOPPED" in out_a and "FREED" in out_a, out_a

    # B destroyed while it maps A's page: A's guest carries on and ends its grant
    held = share(xl, "ga", "share4", b, "rw", 120)
    xl("exec", "gb", f"{PEER} map {a} {held} ro 300 > /tmp/hold.out 2>&1 &")
    out_b = wait_output(xl, "gb", "hold", "^HOLDING")
    assert "HOLDING" in out_b, out_b
    xl("destroy", "gb")
    assert "gb" not in xl.rows()
    out_a = stop_share(xl, "ga", "share4")
    assert "STOPPED" in out_a and "FREED" in out_a, out_a
    assert re.fullmatch(r"hello-from-A-\d+-rw", line(out_a, "PAGE") or ""), out_a
    assert alive(xl, "ga"), why_dead(xl, "ga")

    # a re-created B (a new domain ID) maps a fresh grant and answers
    b2 = boot(xl, tmp_path, images, initrd, "gb")
    assert b2 not in (a, b, c)
    fresh = share(xl, "ga", "share5", b2)
    rc, out_b = map_grant(xl, "gb", a, fresh)
    check_mapped(xl, "gb", out_b, rc, r"hello-from-A-\d+-rw", wrote=True)
    out_a = wait_output(xl, "ga", "share5", "^PAGE ")
    assert line(out_a, "ANSWER") == ANSWER and "FREED" in out_a, out_a

    # the daemon and every domain carry on; no guest kernel complained
    rows = xl.rows()
    assert {"ga", "gb", "gc"} <= set(rows), rows
    for dom in ("ga", "gb", "gc"):
        assert alive(xl, dom), why_dead(xl, dom)
        kmsg = xl("exec", dom, "dmesg | tail -n 200").stdout
        assert not GUEST_TROUBLE.search(kmsg), f"{dom}'s kernel log:\n{kmsg[-4000:]}"
    log = xl("dmesg").stdout
    assert "internal error" not in log and "Traceback" not in log, log[-4000:]
