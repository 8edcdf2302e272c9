"""Reseeding a restored guest's random number generator (docs/clones.md, "Random numbers in clones").

Every domain restored from a save file carries the saved kernel's CRNG state; clones of one file share
it, and a plain restore replays the stream the saved run already produced after its save (a `save -c`
original goes on too). Linux reseeds it on its own only at its periodic reseed (at most every 60 s once
up 2 minutes: drivers/char/random.c) or through a vmgenid driver, which Debian 12's kernel has not; its
Xen resume (drivers/xen/manage.c do_suspend) calls no PM notifier, so random_pm_notification's reseed
never runs either. So the toolstack does it from inside, as soon as the restore is done and before
`restore` answers: 32 bytes from the host's os.urandom go to the guest's root shell on stdin of
`hd-reseed` (a static helper built into the busybox initramfs: images/guest/hd-reseed.c), which hands
them to the kernel with RNDADDENTROPY and forces crng_reseed() with RNDRESEEDCRNG. A guest with the
agent (a Debian image) runs the same two ioctls through guest-exec with perl (perl-base is Essential in
Debian), or hd-reseed when it has it.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable
from typing import Any

SEED_BYTES = 32  # a full ChaCha20 key's worth; the kernel's pool is BLAKE2s-256
RESEED_TIMEOUT_S = 60.0
_OK_RE = re.compile(rb"hd-reseed: reseeded (\d+) bytes")

# include/uapi/linux/random.h: RNDADDENTROPY = _IOW('R', 0x03, int [2]), RNDRESEEDCRNG = _IO('R', 0x07);
# struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
_PERL = ("perl -e 'my $h = <STDIN>; $h =~ s/\\s+//g; my $d = pack(\"H*\", $h); "
         "open(my $f, \"<\", \"/dev/urandom\") or die \"hd-reseed: /dev/urandom: $!\\n\"; "
         "ioctl($f, 0x40085203, pack(\"ii\", 8 * length($d), length($d)) . $d) "
         "or die \"hd-reseed: RNDADDENTROPY: $!\\n\"; "
         "ioctl($f, 0x5207, 0) or die \"hd-reseed: RNDRESEEDCRNG: $!\\n\"; "
         "print \"hd-reseed: reseeded \", length($d), \" bytes\\n\"'")


def command(seed: bytes, agent: bool) -> str:
    """The shell command that reseeds: the seed is piped in by printf (a shell builtin), never on a
    command line another guest process could read in /proc."""
    feed = f"printf %s {seed.hex()} | "
    if not agent:
        return feed + "/bin/hd-reseed"  # short: typed as one line at the busybox console
    return f"if [ -x /bin/hd-reseed ]; then {feed}/bin/hd-reseed; else {feed}{_PERL}; fi"


def outcome(status: int, output: bytes) -> tuple[bool, str]:
    """(reseeded, what to tell the user) from the command's exit status and output."""
    m = _OK_RE.search(output)
    if status == 0 and m is not None:
        return True, f"reseeded with {int(m.group(1))} bytes of host randomness"
    lines = [ln.strip() for ln in output.decode(errors="replace").splitlines() if ln.strip()]
    why = lines[-1] if lines else f"exit status {status}"
    if status == 127 or "not found" in why:
        why = "the guest has no hd-reseed (nor perl)"
    return False, f"NOT reseeded: {why}"[:200]


def reseed(run: Callable[[str, float], dict[str, Any]], agent: bool) -> dict[str, Any]:
    """Reseed through `run(command, timeout)` (the daemon's exec: agent or console), returning
    {"reseeded": bool, "reseed": text}; an exec that fails is reported, not raised: the domain runs."""
    seed = os.urandom(SEED_BYTES)
    try:
        r = run(command(seed, agent), RESEED_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure of the exec is the answer, the restore stands
        return {"reseeded": False, "reseed": f"NOT reseeded: {exc}"[:200]}
    ok, text = outcome(int(r.get("status", -1)), base64.b64decode(r.get("output", "")))
    return {"reseeded": ok, "reseed": text}
