#!/usr/bin/env python3
"""Boot cost of the engine changes of issue 9: the same default-guest boot (`hyperdisco run --stats --exec
true`) with different checkouts of hyperdisco, interleaved round by round so that load on the (shared)
host hits every variant alike. Reports, per variant, the median wall time to user space and to the end,
and the median CPU time (user + system) of the whole run.

    python bench/smp_probe/boot_cost.py --rounds 5 NAME=CHECKOUT_DIR [NAME=CHECKOUT_DIR ...]
    # e.g. stock=/tmp/hd-638c9b2 atomics=/tmp/hd-1efaafb coherent=.   (git archive COMMIT | tar -x -C DIR)

Results go to stdout and, as JSON, to --out (default bench/results/boot-cost-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def one_boot(tree: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("LIBUNICORN_PATH", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run([PY, "-m", "hyperdisco", "run", "--stats", "--exec", "true"], env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"boot with {tree} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    out = proc.stdout + proc.stderr
    m = re.search(r"user space\s+([\d.]+) s", out)
    return {
        "wall_s": wall,
        "user_space_s": float(m.group(1)) if m else float("nan"),
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    variants = [(v.split("=", 1)[0], Path(v.split("=", 1)[1]).resolve()) for v in args.variants]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    for _name, tree in variants:  # warm-up: builds (unicorn, fast path) and page cache
        one_boot(tree)
    for r in range(args.rounds):
        for name, tree in variants:
            runs[name].append(one_boot(tree))
            print(f"round {r + 1} {name:10s} " + " ".join(f"{k}={v:.2f}" for k, v in runs[name][-1].items()),
                  flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
    summary = {}
    for name, _tree in variants:
        med = {k: statistics.median(x[k] for x in runs[name]) for k in runs[name][0]}
        summary[name] = med
        print(f"{name:10s} median: user space {med['user_space_s']:.2f} s, total wall {med['wall_s']:.2f} s, "
              f"CPU {med['cpu_s']:.2f} s  ({args.rounds} runs)")
    out = args.out or HERE.parent / "results" / f"boot-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"variants": {n: str(t) for n, t in variants}, "runs": runs,
                               "median": summary}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
