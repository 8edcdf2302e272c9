#!/usr/bin/env python3
"""Save/restore benchmark: time from `restore` to a shell answering `exec`, against a cold boot's time
from `create` to the same answer, on one daemon; plus the save's own time and size, and the guest's
clocks across a save and restore (wall time against the host's; CLOCK_MONOTONIC's step).

Each run: create a domain (cold boot, timed until `exec true` answers), read its clocks, `save` it
(timed), `restore` it (timed until `exec true` answers), read its clocks again. The exec calls go through
the client library (no interpreter start-up in the numbers). Results go to
bench/results/snapshot-<timestamp>.json.

    python bench/snapshot.py [--runs 3] [--memory 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from density import Daemon

from hyperdisco.client import Connection


def _exec_ready(conn: Connection, name: str) -> float:
    """Time until `exec true` in the domain answers with status 0."""
    t0 = time.monotonic()
    dom = conn.lookup(name)
    while dom.exec("true", timeout=120).status != 0:
        time.sleep(0.05)
    return time.monotonic() - t0


def _clocks(conn: Connection, name: str) -> tuple[float, float, float, float]:
    """(host wall time, guest wall time, guest CLOCK_MONOTONIC from /proc/timer_list's "now at", guest
    CLOCK_BOOTTIME from /proc/uptime), read together. The guest's busybox date has whole seconds only:
    its wall time is known to within 0.5 s."""
    t0 = time.time()
    out = conn.lookup(name).exec("date +%s; grep -m1 'now at' /proc/timer_list | cut -d' ' -f3; "
                                 "cut -d' ' -f1 /proc/uptime").text.split()
    host = (t0 + time.time()) / 2
    nums = [float(x) for x in out if x.replace(".", "", 1).isdigit()]
    return host, nums[-3] + 0.5, nums[-2] / 1e9, nums[-1]


def one_run(conn: Connection, work: Path, i: int, memory: int) -> dict[str, Any]:
    name = f"snap{i}"
    t0 = time.monotonic()
    conn.create({"name": name, "memory": memory})
    created = time.monotonic() - t0
    cold = created + _exec_ready(conn, name)
    host0, wall0, mono0, boot0 = _clocks(conn, name)
    path = work / f"{name}.save"
    t0 = time.monotonic()
    saved = conn.call("save", dom=name, file=str(path))
    save_s = time.monotonic() - t0
    t_saved = time.monotonic()
    t0 = time.monotonic()
    conn.call("restore", file=str(path))
    restore_call = time.monotonic() - t0
    restore = restore_call + _exec_ready(conn, name)
    away = time.monotonic() - t_saved
    host1, wall1, mono1, boot1 = _clocks(conn, name)
    conn.lookup(name).destroy()
    path.unlink()
    return {"cold_create_to_exec_s": cold, "save_s": save_s, "save_bytes": saved["bytes"],
            "save_detail": saved["detail"], "restore_call_s": restore_call, "restore_to_exec_s": restore,
            "guest_wall_error_before_s": wall0 - host0, "guest_wall_error_after_s": wall1 - host1,
            "guest_monotonic_advance_s": mono1 - mono0, "guest_boottime_advance_s": boot1 - boot0,
            "host_advance_s": host1 - host0,
            "suspended_s": away}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    stamp = harness.timestamp()
    with tempfile.TemporaryDirectory(prefix="hd-snapshot-") as tmp:
        work = Path(tmp)
        daemon = Daemon(work)
        daemon.start()
        try:
            conn = Connection(str(daemon.socket))
            runs = []
            for i in range(args.runs):
                r = one_run(conn, work, i, args.memory)
                harness.say(f"run {i}: cold boot to exec {r['cold_create_to_exec_s']:.2f} s, save "
                            f"{r['save_s']:.2f} s ({r['save_bytes'] / 1048576:.1f} MiB), restore to exec "
                            f"{r['restore_to_exec_s']:.3f} s (restore call {r['restore_call_s']:.3f} s); "
                            f"guest wall clock off by {r['guest_wall_error_after_s']:+.3f} s after, "
                            f"monotonic advanced {r['guest_monotonic_advance_s']:.2f} s, boottime "
                            f"{r['guest_boottime_advance_s']:.2f} s over {r['host_advance_s']:.2f} s of host "
                            f"time ({r['suspended_s']:.2f} s from save to restored)")
                runs.append(r)
        finally:
            daemon.stop()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
    speedup = med["cold_create_to_exec_s"] / med["restore_to_exec_s"]
    harness.say(f"median: cold boot to exec {med['cold_create_to_exec_s']:.2f} s, restore to exec "
                f"{med['restore_to_exec_s']:.3f} s ({speedup:.1f}x)")
    doc = {"benchmark": "snapshot", "memory_mib": args.memory, "commit": harness.hyperdisco_commit(),
           "runs": runs, "median": med}
    harness.write_json(harness.results_path(args.out, "snapshot", stamp), doc, harness.say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
