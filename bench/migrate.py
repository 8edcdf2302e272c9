#!/usr/bin/env python3
"""Live-migration benchmark (docs/migration.md): two daemons on this host, a 256 MiB guest migrated from
one to the other and back, idle and while it writes memory; per migration the rounds, pages and bytes
sent, total time and downtime (the guest's vCPU stopped to the destination's answer that it runs).
Also what dirty tracking costs the guest: a memory-writing loop in the guest (dd of 32 MiB to its
tmpfs, timed by the guest) without tracking, and while a rate-capped pre-copy (4 MiB/s: the sender
mostly sleeps, the write protection is on) runs. Results go to bench/results/migrate-<timestamp>.json.

    python bench/migrate.py [--runs 3] [--memory 256] [--vcpus 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness
from density import Daemon

from hyperdisco.client import Connection

WRITER = ("(while true; do dd if=/dev/zero of=/tmp/churn bs=1M count=64 2>/dev/null; done) "
          ">/dev/null 2>&1 & echo writer=$!")
# the guest's own view of the pause: a loop of shell builtins reading CLOCK_BOOTTIME (which goes on while
# the guest is suspended) as fast as it can; the largest step between two samples is the time it did not run
SAMPLER = ("(while true; do read u _ < /proc/uptime; echo $u; done > /tmp/samples) >/dev/null 2>&1 & "
           "echo sampler=$!")
DD = ("a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/tmp/dd bs=1M count=32 2>/dev/null; "
      "b=$(cut -d' ' -f1 /proc/uptime); rm -f /tmp/dd; echo dd $a $b")


def _ready(conn: Connection, name: str) -> None:
    dom = conn.lookup(name)
    while dom.exec("true", timeout=120).status != 0:
        time.sleep(0.05)


def _guest_pause(conn: Connection, name: str, seen: int) -> tuple[float, int]:
    """The largest step between two of the sampler's CLOCK_BOOTTIME readings after the first `seen` (the
    migration's pause as the guest saw it: an upper bound, see docs/migration.md), and how many there are
    now. Lines the shell may have cut short are skipped."""
    text = conn.lookup(name).exec("cat /tmp/samples", timeout=120).text
    vals = [float(x) for x in text.split()[seen:] if x.replace(".", "", 1).isdigit() and len(x) < 12]
    steps = [b - a for a, b in zip(vals, vals[1:], strict=False) if 0 <= b - a < 3600]
    return max(steps), seen + len(text.split()[seen:])


def _dd_seconds(conn: Connection, name: str) -> float:
    out = conn.lookup(name).exec(DD, timeout=120).text.split()
    i = out.index("dd")
    return float(out[i + 2]) - float(out[i + 1])


def _in_background(conn_path: Path, name: str, dest: Path,
                   rate: float) -> tuple[threading.Thread, dict[str, Any]]:
    """A migration on a connection of its own (a Connection serves one call at a time), in a thread."""
    box: dict[str, Any] = {}
    mover = Connection(str(conn_path))
    t = threading.Thread(target=lambda: box.update(migrate(mover, name, dest, rate=rate)))
    t.start()
    return t, box


def migrate(conn: Connection, name: str, dest: Path, rate: float | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    r: dict[str, Any] = conn.call("migrate", dom=name, dest=str(dest), timeout=300, rate=rate)
    r["call_s"] = time.monotonic() - t0
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    stamp = harness.timestamp()
    results: dict[str, list[dict[str, Any]]] = {"idle": [], "sampled": [], "writing": []}
    slowdown: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="hd-migrate-") as tmp:
        daemons = [Daemon(Path(tmp) / "a"), Daemon(Path(tmp) / "b")]
        for d in daemons:
            d.workdir.mkdir()
            d.start()
        try:
            conns = [Connection(str(d.socket)) for d in daemons]
            name = "mig"
            conns[0].create({"name": name, "memory": args.memory, "vcpus": args.vcpus})
            _ready(conns[0], name)
            here = 0
            for kind in ("idle", "sampled", "writing"):
                if kind == "sampled":
                    out = conns[here].lookup(name).exec(SAMPLER).text
                    sampler = next(w.split("=")[1] for w in out.split() if w.startswith("sampler="))
                    time.sleep(1.0)
                    seen = 0
                if kind == "writing":
                    conns[here].lookup(name).exec(f"kill {sampler}; rm -f /tmp/samples; true")
                    out = conns[here].lookup(name).exec(WRITER).text
                    writer = next(w.split("=")[1] for w in out.split() if w.startswith("writer="))
                    time.sleep(1.0)
                for i in range(args.runs):
                    time.sleep(1.0)
                    r = migrate(conns[here], name, daemons[1 - here].socket)
                    here = 1 - here
                    _ready(conns[here], name)
                    if kind == "sampled":
                        r["guest_pause_s"], seen = _guest_pause(conns[here], name, seen)
                        harness.say(f"sampled run {i}: the guest's CLOCK_BOOTTIME stepped "
                                    f"{r['guest_pause_s']:.3f} s between two samples")
                    harness.say(f"{kind} run {i}: {r['rounds']} rounds {r['round_pages']}, {r['pages']} "
                                f"pages ({r['bytes'] / 1048576:.1f} MiB), {r['seconds']:.2f} s in all, "
                                "downtime "
                                f"{r['downtime_s'] * 1000:.0f} ms, suspend asked to running there "
                                f"{r['suspend_to_running_s']:.2f} s")
                    results[kind].append(r)
            # the guest's cost of tracking: its own timing of a 32 MiB write, alone and during pre-copy
            conns[here].lookup(name).exec(f"kill {writer}; pkill dd; rm -f /tmp/churn; true")
            time.sleep(1.0)
            for i in range(args.runs):
                plain = _dd_seconds(conns[here], name)
                t, _box = _in_background(daemons[here].socket, name, daemons[1 - here].socket, 4.0)
                time.sleep(1.0)  # the pre-copy is under way (about 20 s at 4 MiB/s)
                tracked = _dd_seconds(conns[here], name)
                t.join()
                here = 1 - here
                _ready(conns[here], name)
                harness.say(f"tracking run {i}: guest dd of 32 MiB {plain:.2f} s alone, {tracked:.2f} s "
                            "during a 4 MiB/s pre-copy")
                slowdown.append({"dd_alone_s": plain, "dd_tracked_s": tracked})
            conns[here].lookup(name).destroy()
        finally:
            for d in daemons:
                d.stop()
    keys = ("seconds", "downtime_s", "bytes", "pages", "rounds", "suspend_to_running_s")
    med = {kind: {k: statistics.median(r[k] for r in rs) for k in keys} for kind, rs in results.items()}
    med["sampled"]["guest_pause_s"] = statistics.median(r["guest_pause_s"] for r in results["sampled"])
    med["tracking"] = {k: statistics.median(r[k] for r in slowdown) for k in ("dd_alone_s", "dd_tracked_s")}
    harness.say(f"median pause seen by the guest: {med['sampled']['guest_pause_s'] * 1000:.0f} ms")
    for kind in ("idle", "sampled", "writing"):
        m = med[kind]
        harness.say(f"median {kind}: {m['seconds']:.2f} s, downtime {m['downtime_s'] * 1000:.0f} ms, "
                    f"{m['bytes'] / 1048576:.1f} MiB sent in {m['rounds']:.0f} rounds")
    harness.say(f"median guest dd: {med['tracking']['dd_alone_s']:.2f} s alone, "
                f"{med['tracking']['dd_tracked_s']:.2f} s tracked")
    doc = {"benchmark": "migrate", "memory_mib": args.memory, "vcpus": args.vcpus,
           "commit": harness.hyperdisco_commit(), "runs": results, "tracking": slowdown, "median": med}
    harness.write_json(harness.results_path(args.out, "migrate", stamp), doc, harness.say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
