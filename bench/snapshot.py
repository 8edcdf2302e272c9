#!/usr/bin/env python3
"""Save/restore benchmark: time from `restore` to a shell answering `exec`, against a cold boot's time
from `create` to the same answer, on one daemon; plus the save's own time and size, and the guest's
clocks across a save and restore (wall time against the host's; CLOCK_MONOTONIC's step).

Each run: create a domain (cold boot, timed until `exec true` answers), read its clocks, `save` it
(timed), `restore` it (timed until `exec true` answers), read its clocks again. The exec calls go through
the client library (no interpreter start-up in the numbers). Results go to
bench/results/snapshot-<timestamp>.json.

With --clones N: host memory of N clones of one saved domain (`restore FILE` N times: RAM mapped
MAP_PRIVATE from the one save file, docs/clones.md) against N cold-booted domains of the same size, on
a fresh daemon each: PSS summed over the daemon and its domain processes (density.smaps_rollup; the save
file's pages in the page cache are split between the clones that map them), net of the idle daemon's,
per domain, and the drop in MemAvailable. Every domain answers `exec` before memory is read.

    python bench/snapshot.py [--runs 3] [--memory 128] [--clones 32] [--out FILE]
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
from density import Daemon, mem_available_kib, smaps_rollup

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


def one_run(conn: Connection, work: Path, i: int, memory: int, reseed: bool = True) -> dict[str, Any]:
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
    conn.call("restore", file=str(path), **({} if reseed else {"reseed": False}))
    restore_call = time.monotonic() - t0
    restore = restore_call + _exec_ready(conn, name)
    away = time.monotonic() - t_saved
    host1, wall1, mono1, boot1 = _clocks(conn, name)
    # a second restore of the same file while the first runs: a later clone (its file already checked
    # and copied by domain 0, dom0/sealed_saves.py)
    t0 = time.monotonic()
    clone = conn.call("restore", file=str(path), **({} if reseed else {"reseed": False}))["name"]
    clone_call = time.monotonic() - t0
    clone_to_exec = clone_call + _exec_ready(conn, clone)
    conn.lookup(clone).destroy()
    conn.lookup(name).destroy()
    path.unlink()
    return {"cold_create_to_exec_s": cold, "save_s": save_s, "save_bytes": saved["bytes"],
            "save_detail": saved["detail"], "restore_call_s": restore_call, "restore_to_exec_s": restore,
            "later_clone_call_s": clone_call, "later_clone_to_exec_s": clone_to_exec,
            "guest_wall_error_before_s": wall0 - host0, "guest_wall_error_after_s": wall1 - host1,
            "guest_monotonic_advance_s": mono1 - mono0, "guest_boottime_advance_s": boot1 - boot0,
            "host_advance_s": host1 - host0,
            "suspended_s": away}


def _memory(daemon: Daemon, base: dict[str, Any], n: int) -> dict[str, Any]:
    roll = smaps_rollup(daemon.pid)
    out: dict[str, Any] = {"rollup_kib": roll, "pss_per_domain_net_kib": (roll["Pss"] - base["Pss"]) / n,
                           "mem_available_drop_per_domain_kib": (base["avail"] - mem_available_kib()) / n}
    for key in ("Pss_Anon", "Pss_File", "Pss_Shmem"):
        out[f"{key.lower()}_per_domain_net_kib"] = (roll.get(key, 0) - base.get(key, 0)) / n
    return out


def _idle(daemon: Daemon) -> dict[str, Any]:
    time.sleep(2.0)
    return {**smaps_rollup(daemon.pid), "avail": mem_available_kib()}


def clones_vs_cold(work: Path, n: int, memory: int, settle: float = 10.0) -> dict[str, Any]:
    """N cold boots on one daemon, then N clones of one saved domain on another: memory per domain."""
    result: dict[str, Any] = {"n": n, "memory_mib": memory}
    for kind in ("cold", "clones"):
        (work / kind).mkdir()
        daemon = Daemon(work / kind)
        daemon.start()
        try:
            conn = Connection(str(daemon.socket))
            base = _idle(daemon)
            ready: list[float] = []
            if kind == "clones":
                conn.create({"name": "tpl", "memory": memory})
                _exec_ready(conn, "tpl")
                save = work / "tpl.save"
                conn.call("save", dom="tpl", file=str(save))
                result["save_bytes"] = save.stat().st_size
            for i in range(n):
                t0 = time.monotonic()
                if kind == "cold":
                    name = f"cold{i}"
                    conn.create({"name": name, "memory": memory})
                else:
                    name = conn.call("restore", file=str(save))["name"]
                ready.append(time.monotonic() - t0 + _exec_ready(conn, name))
                harness.say(f"{kind} {i + 1}/{n}: {name} answers exec after {ready[-1]:.2f} s")
            time.sleep(settle)
            for d in conn.domains():  # every domain still answers before memory is read
                assert d.exec("true", timeout=120).status == 0, d.name
            mem = _memory(daemon, base, n)
            mem["to_exec_s_median"] = statistics.median(ready)
            result[kind] = mem
            harness.say(f"{kind}: {mem['pss_per_domain_net_kib'] / 1024:.1f} MiB PSS per domain (anon "
                        f"{mem['pss_anon_per_domain_net_kib'] / 1024:.1f}, file "
                        f"{mem['pss_file_per_domain_net_kib'] / 1024:.1f}, shmem "
                        f"{mem['pss_shmem_per_domain_net_kib'] / 1024:.1f}), MemAvailable down "
                        f"{mem['mem_available_drop_per_domain_kib'] / 1024:.1f} MiB per domain; median "
                        f"{mem['to_exec_s_median']:.2f} s to exec")
        finally:
            daemon.stop()
    result["pss_ratio_clone_to_cold"] = (result["clones"]["pss_per_domain_net_kib"]
                                         / result["cold"]["pss_per_domain_net_kib"])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--clones", type=int, default=0, help="also: N clones against N cold boots (memory)")
    ap.add_argument("--no-reseed", action="store_true",
                    help="restore without the guest's reseed (its exec round trip): the restore path alone")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    stamp = harness.timestamp()
    with tempfile.TemporaryDirectory(prefix="hd-snapshot-") as tmp:
        work = Path(tmp)
        daemon = Daemon(work)
        daemon.start()
        try:
            conn = Connection(str(daemon.socket))
            runs: list[dict[str, Any]] = []
            for i in range(args.runs):
                r = one_run(conn, work, i, args.memory, reseed=not args.no_reseed)
                harness.say(f"run {i}: cold boot to exec {r['cold_create_to_exec_s']:.2f} s, save "
                            f"{r['save_s']:.2f} s ({r['save_bytes'] / 1048576:.1f} MiB), restore to exec "
                            f"{r['restore_to_exec_s']:.3f} s (restore call {r['restore_call_s']:.3f} s), "
                            f"a later clone {r['later_clone_to_exec_s']:.3f} s "
                            f"(call {r['later_clone_call_s']:.3f} s); "
                            f"guest wall clock off by {r['guest_wall_error_after_s']:+.3f} s after, "
                            f"monotonic advanced {r['guest_monotonic_advance_s']:.2f} s, boottime "
                            f"{r['guest_boottime_advance_s']:.2f} s over {r['host_advance_s']:.2f} s of host "
                            f"time ({r['suspended_s']:.2f} s from save to restored)")
                runs.append(r)
        finally:
            daemon.stop()
        clones = clones_vs_cold(work, args.clones, args.memory) if args.clones else None
    med: dict[str, float] = {}
    if runs:
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
        speedup = med["cold_create_to_exec_s"] / med["restore_to_exec_s"]
        harness.say(f"median: cold boot to exec {med['cold_create_to_exec_s']:.2f} s, restore to exec "
                    f"{med['restore_to_exec_s']:.3f} s ({speedup:.1f}x), a later clone to exec "
                    f"{med['later_clone_to_exec_s']:.3f} s")
    doc = {"benchmark": "snapshot", "memory_mib": args.memory, "reseed": not args.no_reseed,
           "commit": harness.hyperdisco_commit(),
           "runs": runs, "median": med, "clones": clones}
    harness.write_json(harness.results_path(args.out, "snapshot", stamp), doc, harness.say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
