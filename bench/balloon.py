#!/usr/bin/env python3
"""Ballooning benchmark: the host memory of domains before and after `mem-set` takes memory from them.

Starts one daemon and N domains (default 4 x 256 MiB). Each guest first touches most of its memory and
frees it (busybox `dd bs=160M count=1` reads into one 160 MiB buffer), as a guest that once needed its
memory and no longer does; then every domain is ballooned down with `hyperdisco mem-set DOM T` and the
guests' balloon drivers give the memory back; then `mem-set DOM M` gives it back to them, and the
guests touch it again. At each stage it records, per domain process, RSS and PSS (/proc/PID/smaps_rollup),
what the guest's balloon driver holds (current_kb), the whole tree's PSS (daemon + domain processes) and
the host's MemAvailable, and how long the balloon took to reach its target. Results go to
bench/results/balloon-<timestamp>.json; bench/README.md explains the fields.

    python bench/balloon.py [--domains 4] [--memory 256] [--target 96] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from density import Daemon, host_info, mem_available_kib, smaps_rollup

INFO = "/sys/devices/system/xen_memory/xen_memory0/info/current_kb"


def say(msg: str) -> None:
    harness.say(msg, "balloon")


def domain_pids(daemon: Daemon) -> dict[str, int]:
    from hyperdisco.toolstack.protocol import Client

    c = Client(str(daemon.socket))
    try:
        rows = c.call("list", long=True)
    finally:
        c.close()
    return {r["name"]: int(r["pid"]) for r in rows if r.get("pid")}


def current_kb(daemon: Daemon, name: str) -> int:
    res = daemon.verb("exec", name, f"cat {INFO}", timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"exec in {name} failed: {res.stderr.strip()}")
    return int(res.stdout.split()[-1])


def wait_balloon(daemon: Daemon, names: list[str], ok: Any, timeout: float) -> dict[str, float]:
    """Seconds until each guest's current_kb satisfies `ok(name, kb)`."""
    start = time.monotonic()
    took: dict[str, float] = {}
    while len(took) < len(names):
        for n in names:
            if n not in took and ok(n, current_kb(daemon, n)):
                took[n] = round(time.monotonic() - start, 2)
        if time.monotonic() - start > timeout:
            late = sorted(set(names) - set(took))
            raise RuntimeError(f"balloons not at target after {timeout:.0f} s: {late}")
        time.sleep(0.5)
    return took


def stage(daemon: Daemon, names: list[str], label: str) -> dict[str, Any]:
    pids = domain_pids(daemon)
    doms = {}
    for n in names:
        roll = smaps_rollup(pids[n])
        doms[n] = {"rss_kib": roll.get("Rss", 0), "pss_kib": roll.get("Pss", 0),
                   "guest_current_kib": current_kb(daemon, n)}
    tree = smaps_rollup(daemon.pid)
    out = {"domains": doms, "tree_pss_kib": tree.get("Pss", 0), "host_mem_available_kib": mem_available_kib(),
           "mean_domain_rss_kib": sum(d["rss_kib"] for d in doms.values()) / len(doms),
           "mean_domain_pss_kib": sum(d["pss_kib"] for d in doms.values()) / len(doms)}
    say(f"{label:<28} domain RSS {out['mean_domain_rss_kib'] / 1024:7.1f} MiB  PSS "
        f"{out['mean_domain_pss_kib'] / 1024:7.1f} MiB (mean)  tree PSS "
        f"{out['tree_pss_kib'] / 1024:7.1f} MiB  host available "
        f"{out['host_mem_available_kib'] / 1024:8.1f} MiB")
    return out


def touch(daemon: Daemon, names: list[str], mib: int) -> None:
    for n in names:
        res = daemon.verb("exec", n, f"dd if=/dev/zero of=/dev/null bs={mib}M count=1 2>&1", timeout=300)
        if "1+0 records in" not in res.stdout:
            raise RuntimeError(f"{n}: dd bs={mib}M failed: {res.stdout.strip()} {res.stderr.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", type=int, default=4)
    ap.add_argument("--memory", type=int, default=256, help="each domain's memory (MiB)")
    ap.add_argument("--target", type=int, default=96, help="the mem-set target (MiB)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stamp = harness.timestamp()
    doc: dict[str, Any] = {"benchmark": "balloon", "host": host_info(), "args": vars(args) | {"out": None}}
    fill = args.memory * 5 // 8
    with tempfile.TemporaryDirectory(prefix="hd-balloon-") as tmp:
        daemon = Daemon(Path(tmp))
        daemon.start()
        try:
            names = [f"bal{i}" for i in range(args.domains)]
            for n in names:
                cfg = Path(tmp) / f"{n}.cfg"
                cfg.write_text(f'name = "{n}"\nmemory = {args.memory}\n')
                res = daemon.verb("create", str(cfg), timeout=300)
                if res.returncode != 0:
                    raise RuntimeError(f"create {n}: {res.stderr.strip()}")
            start_kb = {n: current_kb(daemon, n) for n in names}
            doc["booted"] = stage(daemon, names, "booted")
            touch(daemon, names, fill)
            doc["touched_and_freed"] = stage(daemon, names, f"touched {fill} MiB, freed")
            t0 = time.monotonic()
            for n in names:
                daemon.verb("mem-set", n, str(args.target))
            doc["down_seconds"] = wait_balloon(daemon, names, lambda n, kb: kb <= (args.target << 10) + 1024,
                                               args.timeout)
            doc["down_wall_s"] = round(time.monotonic() - t0, 2)
            doc["ballooned_down"] = stage(daemon, names, f"mem-set {args.target} MiB")
            for n in names:
                daemon.verb("mem-set", n, str(args.memory))
            doc["up_seconds"] = wait_balloon(daemon, names, lambda n, kb: kb >= start_kb[n] - 1024,
                                             args.timeout)
            doc["ballooned_up"] = stage(daemon, names, f"mem-set {args.memory} MiB")
            touch(daemon, names, fill)
            doc["touched_again"] = stage(daemon, names, f"touched {fill} MiB again")
        finally:
            daemon.stop()
    before, after = doc["touched_and_freed"], doc["ballooned_down"]
    doc["summary"] = {
        "domain_rss_before_mib": round(before["mean_domain_rss_kib"] / 1024, 1),
        "domain_rss_after_mib": round(after["mean_domain_rss_kib"] / 1024, 1),
        "domain_pss_before_mib": round(before["mean_domain_pss_kib"] / 1024, 1),
        "domain_pss_after_mib": round(after["mean_domain_pss_kib"] / 1024, 1),
        "host_available_gain_mib": round((after["host_mem_available_kib"]
                                          - before["host_mem_available_kib"]) / 1024, 1),
    }
    say(f"summary: {doc['summary']}")
    harness.write_json(harness.results_path(args.out, "balloon", stamp), doc, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
