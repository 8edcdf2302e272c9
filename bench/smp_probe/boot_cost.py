#!/usr/bin/env python3
"""Boot cost of the engine changes of issue 9: the same default-guest boot (`hyperdisco run --stats --exec
true`) with different checkouts of hyperdisco, interleaved round by round so that load on the (shared)
host hits every variant alike. Reports, per variant, the median and best wall time to user space and to
the end, and the CPU time (user + system) of the whole process tree (the CLI, the zygote, the domain
process: sampled from /proc every 20 ms, so up to 20 ms of a process's last moments can be missed), which
a loaded host disturbs much less than wall time.

    python bench/smp_probe/boot_cost.py --rounds 5 NAME=CHECKOUT_DIR [NAME=CHECKOUT_DIR ...]
    # e.g. stock=/tmp/hd-638c9b2 atomics=/tmp/hd-1efaafb coherent=.   (git archive COMMIT | tar -x -C DIR)

Results go to stdout and, as JSON, to --out (default bench/results/boot-cost-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def one_boot(tree: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("LIBUNICORN_PATH", None)
    t0 = time.monotonic()
    # cwd: `python -m` puts the working directory first on sys.path, before PYTHONPATH
    proc = subprocess.Popen([PY, "-m", "hyperdisco", "run", "--stats", "--exec", "true"], env=env, cwd=tree,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in _tree(proc.pid):
                c = _cpu_s(pid)
                if c is not None:
                    cpu[pid] = max(c, cpu.get(pid, 0.0))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate(timeout=900)
    m = re.search(r"engine\.code\.pages_dropped\s+(\d+)", out)
    dropped = float(m.group(1)) if m else 0.0
    wall = time.monotonic() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"boot with {tree} failed ({proc.returncode}): {out.strip()[-300:]}")
    m = re.search(r"user space\s+([\d.]+) s", out)
    return {
        "wall_s": wall,
        "user_space_s": float(m.group(1)) if m else float("nan"),
        "cpu_s": sum(cpu.values()),
        "pages_dropped": dropped,
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
            print(f"round {r + 1} {name:14s} " + " ".join(f"{k}={v:.2f}" for k, v in runs[name][-1].items()),
                  flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
    summary = {}
    for name, _tree in variants:
        med = {k: statistics.median(x[k] for x in runs[name]) for k in runs[name][0]}
        best = {k: min(x[k] for x in runs[name]) for k in runs[name][0]}
        summary[name] = {"median": med, "min": best}
        u, w, c = med["user_space_s"], med["wall_s"], med["cpu_s"]
        print(f"{name:14s} median (best): user space {u:.2f} ({best['user_space_s']:.2f}) s, "
              f"total wall {w:.2f} ({best['wall_s']:.2f}) s, CPU {c:.2f} ({best['cpu_s']:.2f}) s  "
              f"({args.rounds} runs)")
    out = args.out or HERE.parent / "results" / f"boot-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"variants": {n: str(t) for n, t in variants}, "runs": runs,
                               "median": summary}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
