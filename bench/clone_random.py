#!/usr/bin/env python3
"""When do two clones' kernel random outputs part? (docs/clones.md, "Random numbers in clones")

A domain boots, runs long enough for Linux's CRNG to leave its early-boot reseeding (uptime > 120 s:
then it reseeds from its input pool at most once every 60 s, drivers/char/random.c crng_has_old_seed),
calls getrandom once (so a due reseed happens before the save), is saved, and restored twice with
`reseed: false` and twice as restore does by default (toolstack/reseed.py: hd-reseed in the guest). Each
clone then calls getrandom at once, the unreseeded ones again after --wait seconds. With a kernel that
has no vmgenid driver (Debian 12's: CONFIG_VIRT_DRIVERS is not set), the unreseeded clones' first
outputs are expected equal: both carry the same CRNG state and nothing reseeds it; after the next
periodic reseed, which mixes in each clone's own interrupt timings, they differ. The reseeded ones
differ at once. Results: bench/results/clone_random-<timestamp>.json.

    python bench/clone_random.py [--uptime 125] [--wait 65]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from density import Daemon

from hyperdisco.client import Connection
from hyperdisco.images.cpio import CpioWriter

GUEST_PROGRAM = Path(__file__).resolve().parent.parent / "tests" / "guest" / "getrandom.c"


def _getrandom(conn: Connection, name: str) -> str:
    out = conn.lookup(name).exec("/bin/getrandom", timeout=120).text
    m = re.findall(r"getrandom=([0-9a-f]{32})", out)
    if not m:
        raise RuntimeError(f"{name}: no getrandom output: {out!r}")
    return m[-1]


def _uptime(conn: Connection, name: str) -> float:
    out = conn.lookup(name).exec("cut -d' ' -f1 /proc/uptime", timeout=120).text.split()
    return float([x for x in out if re.fullmatch(r"\d+\.\d+", x)][-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uptime", type=float, default=125.0, help="guest uptime before the save (s)")
    ap.add_argument("--wait", type=float, default=65.0, help="seconds between the two reads in each clone")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        harness.say("no C compiler for the guest program")
        return 1
    stamp = harness.timestamp()
    images = harness.default_images(harness.say)
    with tempfile.TemporaryDirectory(prefix="hd-clonerand-") as tmp:
        work = Path(tmp)
        prog = work / "getrandom"
        subprocess.run([cc, "-static", "-O2", "-o", str(prog), str(GUEST_PROGRAM)], check=True)
        extra = CpioWriter()
        extra.file("bin/getrandom", prog.read_bytes(), 0o755)
        initrd = work / "initrd.cpio"
        initrd.write_bytes(Path(images.initrd).read_bytes() + extra.finish())
        daemon = Daemon(work)
        daemon.start()
        try:
            conn = Connection(str(daemon.socket))
            conn.create({"name": "tpl", "memory": 128, "ramdisk": str(initrd)})
            while conn.lookup("tpl").exec("true", timeout=120).status != 0:
                time.sleep(0.1)
            while (up := _uptime(conn, "tpl")) < args.uptime:
                time.sleep(min(10.0, args.uptime - up + 0.5))
            before = _getrandom(conn, "tpl")
            save = work / "tpl.save"
            conn.call("save", dom="tpl", file=str(save))
            # two clones as the stock kernel leaves them (--no-reseed), two as restore makes them
            names = [conn.call("restore", file=str(save), reseed=False)["name"] for _ in range(2)]
            reseeded = [conn.call("restore", file=str(save)) for _ in range(2)]
            first = {n: _getrandom(conn, n) for n in names}
            first_reseeded = {r["name"]: _getrandom(conn, r["name"]) for r in reseeded}
            time.sleep(args.wait)
            later = {n: _getrandom(conn, n) for n in names}
        finally:
            daemon.stop()
    doc: dict[str, Any] = {"benchmark": "clone_random", "commit": harness.hyperdisco_commit(),
                           "uptime_at_save_s": up, "template_last": before, "first": first, "later": later,
                           "wait_s": args.wait, "first_equal": len(set(first.values())) == 1,
                           "later_equal": len(set(later.values())) == 1,
                           "reseeded": [{k: r.get(k) for k in ("name", "reseed", "seconds", "reseed_seconds")}
                                        for r in reseeded],
                           "first_reseeded": first_reseeded,
                           "first_reseeded_equal": len(set(first_reseeded.values())) == 1}
    harness.say(f"saved at uptime {up:.0f} s; first getrandom in each clone without the reseed: "
                f"{'EQUAL' if doc['first_equal'] else 'different'} {sorted(first.values())}; "
                f"{args.wait:.0f} s later: {'EQUAL' if doc['later_equal'] else 'different'}; "
                f"reseeded clones: {'EQUAL' if doc['first_reseeded_equal'] else 'different'} "
                f"{sorted(first_reseeded.values())}, reseed took "
                f"{', '.join(str(r.get('reseed_seconds')) for r in reseeded)} s")
    harness.write_json(harness.results_path(args.out, "clone_random", stamp), doc, harness.say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
