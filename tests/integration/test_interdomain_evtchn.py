"""Inter-domain event channels between two guests, each in its own domain process (domain 0 brokers
them): from inside the guests, through /dev/xen/evtchn, A offers a port to B (EVTCHNOP_alloc_unbound),
B binds it (EVTCHNOP_bind_interdomain) and the two notify each other both ways (EVTCHNOP_send); C may
not bind a port offered to B, nobody may bind a domain that does not exist. Closing one end re-offers the
other to the same domain (B binds A's port again), a round-trip latency is measured, and destroying B
while its channel is bound leaves A's guest, its port and the daemon working; a re-created B (a new
domain ID) does not inherit the old offer but binds a fresh one.

The guest side is tests/guest/evtchn_peer.c, built here with `gcc -static` and added to the default
initramfs as /bin/evtchn_peer (a second newc archive, as in test_disks_hostile.py). Programs that must
outlive one `exec` run in the background in the guest, writing to a file the test polls.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import Xl, build_guest_program, domain_cfg, initrd_with_program

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent.parent / "guest" / "evtchn_peer.c"
PEER = "/bin/evtchn_peer"
PINGS = 200


def build(tmp_path: Path) -> Path:
    return build_guest_program(SOURCE, tmp_path / "evtchn_peer")


def initrd_with(images: GuestImages, binary: Path, out: Path) -> Path:
    return initrd_with_program(images, binary, "evtchn_peer", out)


def boot(xl: Xl, tmp_path: Path, images: GuestImages, initrd: Path, name: str) -> int:
    """Create the domain, load the evtchn driver in it; its domain ID, as `list` shows it."""
    xl("create", domain_cfg(tmp_path, name, f'kernel = "{images.kernel}"', f'ramdisk = "{initrd}"'))
    r = xl("exec", name, f"modprobe xen-evtchn && ls /dev/xen && ls -l {PEER}", "--timeout", "120")
    assert "evtchn" in r.stdout and PEER in r.stdout, r.stdout
    return int(xl.rows()[name][1])


def run_peer(xl: Xl, dom: str, args: str) -> tuple[int, str]:
    """evtchn_peer in the foreground: its exit status and output."""
    r = xl("exec", dom, f"{PEER} {args}", "--timeout", "60", timeout=90, check=False)
    return r.returncode, r.stdout


def wait_output(xl: Xl, dom: str, job: str, pattern: str, timeout: int = 30) -> str:
    """The output file of a background evtchn_peer once a line matches `pattern` (an ERR or TIMEOUT line
    ends the wait too), or after `timeout` seconds."""
    pat = f"{pattern}|^ERR|^TIMEOUT"
    r = xl("exec", dom, f"i=0; until grep -qE '{pat}' /tmp/{job}.out 2>/dev/null; do i=$((i+1)); "
                        f"[ $i -gt {timeout * 5} ] && break; sleep 0.2; done; cat /tmp/{job}.out",
           "--timeout", str(timeout + 30), timeout=timeout + 60)
    return r.stdout


def start_peer(xl: Xl, dom: str, job: str, args: str, pattern: str = "^PORT ") -> str:
    """evtchn_peer in the background (its pid in /tmp/JOB.pid); its output once `pattern` shows."""
    xl("exec", dom, f"{PEER} {args} > /tmp/{job}.out 2>&1 & echo $! > /tmp/{job}.pid")
    return wait_output(xl, dom, job, pattern)


def line(out: str, key: str) -> str | None:
    m = re.search(rf"^{key}(?: (.*))?$", out, re.M)
    return None if m is None else (m.group(1) or "")


def bind_error(out: str) -> str | None:
    return line(out, "ERR")


def test_interdomain_event_channels(xl: Xl, tmp_path: Path, images: GuestImages) -> None:
    binary = build(tmp_path)
    initrd = initrd_with(images, binary, tmp_path / "initrd-evtchn.cpio")
    a = boot(xl, tmp_path, images, initrd, "ea")
    b = boot(xl, tmp_path, images, initrd, "eb")
    c = boot(xl, tmp_path, images, initrd, "ec")
    assert len({0, a, b, c}) == 4, (a, b, c)

    # A offers a port to B; B binds it; an event each way, then a second one from B
    out_a = start_peer(xl, "ea", "offer", f"offer {b} 60")
    port = line(out_a, "PORT")
    assert port is not None and port.isdigit(), out_a
    rc, out_b = run_peer(xl, "eb", f"bind {a} {port}")
    assert rc == 0 and "DONE" in out_b, f"B's bind of d{a} port {port}: {bind_error(out_b)}\n{out_b}"
    local = line(out_b, "LOCAL")
    assert local is not None and local.isdigit(), out_b
    assert line(out_b, "GOT") == local, out_b  # A's answer arrived on B's end
    print(f"B's bind: {out_b.strip()!r}")
    out_a = wait_output(xl, "ea", "offer", "^DONE")
    assert line(out_a, "GOT") == port and line(out_a, "GOT2") is not None and "DONE" in out_a, out_a

    # an echo server in A, offered to B
    out_e = start_peer(xl, "ea", "echo", f"echo {b} 90")
    eport = line(out_e, "PORT")
    assert eport is not None and eport.isdigit(), out_e

    # C may not bind a port offered to B (Xen's evtchn_bind_interdomain: EINVAL), nor one of a domain that
    # does not exist (ESRCH)
    rc, out_c = run_peer(xl, "ec", f"bind {a} {eport}")
    assert rc == 1 and bind_error(out_c) == "EINVAL", f"C bound d{a} port {eport} offered to d{b}: {out_c}"
    ghost = max(a, b, c) + 100
    rc, out_c = run_peer(xl, "ec", f"bind {ghost} 1")
    err = bind_error(out_c)
    assert rc == 1 and err, f"C's bind to the nonexistent d{ghost} did not fail: {out_c}"
    print(f"bind to a nonexistent domain: {err}")

    # round trips B -> A -> B; B's end is closed when ping exits, A's is re-offered to B
    rc, out_b = run_peer(xl, "eb", f"ping {a} {eport} {PINGS}")
    rtt = re.search(r"^RTT n (\d+) min (\d+) median (\d+) max (\d+)$", out_b, re.M)
    assert rc == 0 and rtt, out_b
    print(f"inter-domain event round trip over {PINGS}: min {rtt.group(2)} us, median {rtt.group(3)} us, "
          f"max {rtt.group(4)} us")
    rc, out_b = run_peer(xl, "eb", f"bind {a} {eport}")
    assert rc == 0 and line(out_b, "GOT") == line(out_b, "LOCAL"), \
        f"B could not bind A's port again after closing its end: {out_b}"

    # B binds once more and holds the channel open: destroyed while bound
    out_b = start_peer(xl, "eb", "hold", f"bind {a} {eport} 300", "^HOLDING")
    assert "HOLDING" in out_b, out_b
    rc, out_c = run_peer(xl, "ec", f"bind {a} {eport}")  # bound to B now: still not C's
    assert rc == 1 and bind_error(out_c) == "EINVAL", f"C bound d{a} port {eport}, bound to d{b}: {out_c}"
    xl("destroy", "eb")
    assert "eb" not in xl.rows()

    # A sends on its end after B is gone: harmless (Xen: the port is unbound again, a send is dropped)
    xl("exec", "ea", "kill -USR1 $(cat /tmp/echo.pid)")
    out_e = wait_output(xl, "ea", "echo", "^KICK")
    assert line(out_e, "KICK") == "0", out_e
    assert xl("exec", "ea", "echo still-alive").stdout.strip().endswith("still-alive")

    # a re-created B has a new domain ID: the old offer is not its to bind; a fresh one is
    b2 = boot(xl, tmp_path, images, initrd, "eb")
    assert b2 not in (a, b, c)
    rc, out_b = run_peer(xl, "eb", f"bind {a} {eport}")
    assert rc == 1 and bind_error(out_b), f"the new d{b2} bound A's port offered to d{b}: {out_b}"
    out_a = start_peer(xl, "ea", "offer2", f"offer {b2} 60")
    port2 = line(out_a, "PORT")
    assert port2 is not None and port2.isdigit(), out_a
    rc, out_b = run_peer(xl, "eb", f"bind {a} {port2}")
    assert rc == 0 and line(out_b, "GOT") == line(out_b, "LOCAL"), out_b
    out_a = wait_output(xl, "ea", "offer2", "^DONE")
    assert line(out_a, "GOT") == port2 and "DONE" in out_a, out_a

    # the daemon and every domain carry on
    rows = xl.rows()
    assert {"ea", "eb", "ec"} <= set(rows), rows
    for dom in ("ea", "eb", "ec"):
        assert xl("exec", dom, "echo still-alive").stdout.strip().endswith("still-alive"), dom
    log = xl("dmesg").stdout
    assert "internal error" not in log and "Traceback" not in log, log[-4000:]
