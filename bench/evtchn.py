#!/usr/bin/env python3
"""Event-channel delivery cost: FIFO vs 2-level, and against hyperdisco before the FIFO work.

Two measurements, each for three variants:

- ``fifo``:   this checkout, the guest on the FIFO ABI (Linux's default when EVTCHNOP_init_control works)
- ``2l``:     this checkout, the guest on the 2-level ABI (``xen.fifo_events=0``, Linux's own switch)
- ``before``: the tree at ``--before`` (default: the commit before the FIFO landing), 2-level only

1. micro (in process, no guest): the hypervisor's cost of raising one event, `EventChannels.set_pending`
   on a port that is not pending yet, with shared_info/vcpu_info (and for FIFO a control block and one
   event-array page, every word unmasked) in plain guest memory; batches of 1000 distinct ports, the
   guest's state reset between batches outside the timing (2-level: bits cleared; FIFO: the queue
   consumed as Linux's events_fifo.c does). Microseconds per event, median of the batches, in each of
   --micro-rounds interleaved rounds: the best round (the cost with the least interference from other
   load) and the median round.
2. guest (boots the stock kernel): ``dd if=/dev/xvda bs=4k iflag=direct`` on a sparse raw disk, queue
   depth 1: each read is one notification to blkback and one event back, timed in the guest with
   /proc/uptime (10 ms steps); reads per second, median of the runs; plus the run's event count
   (``evtchn.raised``) and upcalls (``inject.upcall``) from ``--stats``.

    python bench/evtchn.py [--runs 3] [--reads 3000] [--before REV] [--out bench/results/evtchn-<ts>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BEFORE = "9d92aa8"  # main just before the FIFO landing (de14633)

MICRO = r'''
import statistics, sys, time
from hyperdisco.core.evtchn import EventChannels, Port
from hyperdisco.core.memory import GuestMemory
from hyperdisco.xen import abi
PAGE = 4096
variant, batches = sys.argv[1], int(sys.argv[2])
mem = GuestMemory(64 * PAGE)
kw = {"max_port": 4095} if variant != "before" else {}
ec = EventChannels(mem, 1, lambda: None, **kw)
ec.shared_info = PAGE
ec.vcpu_info[0] = PAGE
ports = [ec.alloc(Port(abi.EVTCHNSTAT_ipi)) for _ in range(1000)]
consume = None
if variant == "fifo":
    ec.init_control(0, 2, 0, 1, lambda gpa: 0 <= gpa < 64 * PAGE)
    ec.expand_array(3, lambda gpa: 0 <= gpa < 64 * PAGE)  # a zeroed page: every event unmasked
    fifo = ec.abi
    def consume():
        # the guest's side, as events_fifo.c (plain accesses: no concurrency here)
        cb = 2 * PAGE
        ready = mem.u32(cb)
        mem.set_u32(cb, 0)
        for prio in range(16):
            if ready >> prio & 1:
                port = mem.u32(cb + 8 + 4 * prio)
                while port:
                    w = mem.u32(3 * PAGE + 4 * port)
                    mem.set_u32(3 * PAGE + 4 * port, w & ~((1 << 29) | (1 << 17) - 1) & ~(1 << 31))
                    port = w & ((1 << 17) - 1)
        mem.set_u8(PAGE + abi.VI_UPCALL_PENDING, 0)
else:
    def consume():
        mem.fill(PAGE + abi.SI_EVTCHN_PENDING, 512)
        mem.set_u64(PAGE + abi.VI_PENDING_SEL, 0)
        mem.set_u8(PAGE + abi.VI_UPCALL_PENDING, 0)
out = []
for _ in range(batches):
    t0 = time.perf_counter()
    for p in ports:
        ec.set_pending(p)
    out.append((time.perf_counter() - t0) / len(ports) * 1e6)
    assert mem.u8(PAGE + abi.VI_UPCALL_PENDING) == 1
    consume()
print(statistics.median(out))
'''


def tree_for(rev: str, work: Path) -> Path:
    """The package as it was at `rev` (git archive into `work`)."""
    dest = work / f"tree-{rev}"
    if not dest.exists():
        dest.mkdir()
        data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "hyperdisco"], check=True,
                              capture_output=True).stdout
        tar = dest / "src.tar"
        tar.write_bytes(data)
        with tarfile.open(tar) as tf:
            tf.extractall(dest, filter="data")
        tar.unlink()
    return dest


def micro(variant: str, path: Path, batches: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(path))
    out = subprocess.run([sys.executable, "-c", MICRO, variant, str(batches)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip())


def guest_run(variant: str, path: Path, disk: Path, reads: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(path))
    cmdline = "console=hvc0" + (" xen.fifo_events=0" if variant != "fifo" else "")
    script = (f"read a b < /proc/uptime; dd if=/dev/xvda of=/dev/null bs=4k count={reads} iflag=direct "
              f"2>/dev/null; read c d < /proc/uptime; dmesg | grep 'xen:events: Using'; echo T $a $c")
    proc = subprocess.run([sys.executable, "-m", "hyperdisco", "run", "--stats", "--cmdline", cmdline,
                           "--disk", f"format=raw, vdev=xvda, access=ro, target={disk}", "--exec", script,
                           "--timeout", "600"], env=env, capture_output=True, text=True, timeout=900)
    m = re.search(r"^T ([\d.]+) ([\d.]+)$", proc.stdout, re.M)
    if proc.returncode != 0 or m is None:
        raise SystemExit(f"{variant}: the guest run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    want = "FIFO-based" if variant == "fifo" else "2-level"
    if want not in proc.stdout:
        raise SystemExit(f"{variant}: the guest did not use the {want} ABI:\n{proc.stdout[-1000:]}")
    secs = float(m.group(2)) - float(m.group(1))

    def stat(name: str) -> float:
        s = re.search(rf"^\s*{re.escape(name)}\s+(\d+)$", proc.stderr, re.M)
        return float(s.group(1)) if s else 0.0

    return {"reads_per_s": reads / secs if secs > 0 else float("inf"), "seconds": secs,
            "evtchn_raised": stat("evtchn.raised"), "upcalls": stat("inject.upcall")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="guest runs per variant (default 3; 0: micro only)")
    p.add_argument("--reads", type=int, default=3000, help="4 KiB direct reads per guest run (default 3000)")
    p.add_argument("--batches", type=int, default=200, help="micro batches of 1000 events (default 200)")
    p.add_argument("--micro-rounds", type=int, default=5, help="micro rounds per variant (default 5)")
    p.add_argument("--before", default=DEFAULT_BEFORE,
                   help=f"the tree to compare with (default {DEFAULT_BEFORE})")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/evtchn-<timestamp>.json)")
    args = p.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "bench" / "results" / f"evtchn-{stamp}.json"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = {"fifo": REPO, "2l": REPO, "before": tree_for(args.before, work)}
        doc: dict[str, Any] = {"before": args.before, "micro_us_per_event": {}, "guest": {}}
        samples: dict[str, list[float]] = {v: [] for v in paths}
        for _ in range(args.micro_rounds):  # interleaved rounds: host load drifts alike for all variants
            for v, path in paths.items():
                samples[v].append(micro(v, path, args.batches))
        for v, xs in samples.items():
            doc["micro_us_per_event"][v] = {"best": min(xs), "median": statistics.median(xs), "rounds": xs}
            med = statistics.median(xs)
            print(f"micro {v:7s} best {min(xs):6.2f}  median {med:6.2f} us per event raised", flush=True)
        disk = work / "disk.img"
        with disk.open("wb") as f:
            f.truncate(64 << 20)
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in paths}
        for i in range(args.runs):
            for v, path in paths.items():  # interleaved: host load drifts alike for all variants
                r = guest_run(v, path, disk, args.reads)
                runs[v].append(r)
                print(f"guest {v:7s} run {i + 1}: {r['reads_per_s']:7.0f} reads/s, "
                      f"{r['evtchn_raised']:.0f} events, {r['upcalls']:.0f} upcalls", flush=True)
        for v, rs in runs.items():
            if not rs:
                continue
            med = statistics.median(r["reads_per_s"] for r in rs)
            doc["guest"][v] = {"runs": rs, "median_reads_per_s": med}
    if args.runs:
        print("\nmedian 4 KiB QD1 reads/s: " + ", ".join(f"{v} {d['median_reads_per_s']:.0f}"
                                                         for v, d in doc["guest"].items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
