#!/usr/bin/env python3
"""Hypercall fuzzing campaigns with the PVH test kernel's fuzzer guest (tests/pvh_kernel/cases_fuzz.c).

Each seed boots the test kernel as a one-shot domain (`hyperdisco run`) with `cases=fuzz seed=S
fuzz_s=SECONDS` and records how many hypercalls it made, the histogram of their results, how the domain
ended (it must power off by itself after its final checks) and whether hyperdisco printed a traceback or
an internal error. A seed that fails is printed with the command that replays it (add `trace_from=N` to
the command line to see each call from the Nth on).

    python bench/fuzz_hypercalls.py [--seeds 1-20] [--seconds 60] [--memory 64]
                                    [--out bench/results/fuzz-<timestamp>.json]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import harness

sys.path.insert(0, str(harness.REPO / "tests"))
from integration.pvh_kernel import KernelRun, build_test_kernel  # noqa: E402


def seeds(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _last(notes: list[str], key: str) -> str:
    found = "0"
    for note in notes:
        m = re.search(rf"(?:^|\s){key}=(\d+)", note)
        if m:
            found = m.group(1)
    return found


def fuzz_one(kernel: Path, seed: int, seconds: int, memory: int) -> dict[str, object]:
    cmdline = f"cases=fuzz seed={seed} calls=1000000000 fuzz_s={seconds}"
    argv = [sys.executable, "-m", "hyperdisco", "run", "--kernel", str(kernel), "--memory", str(memory),
            "--cmdline", cmdline, "--timeout", str(seconds + 240), "-v"]
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=seconds + 300)
    wall = time.monotonic() - t0
    run = KernelRun.parse(p.stdout)
    # the fuzzer's own lines ("# fuzz: calls=N" as it goes, the histogram at the end), not the command line
    notes = [m.group(1) for m in re.finditer(r"# fuzz: ([^\n]*)", p.stdout)]
    counts = {("returned_ok" if k == "ok" else k): int(_last(notes, k)) for k in
              ("calls", "ok", "enosys", "efault", "einval", "other")}
    internal = [ln for ln in p.stderr.splitlines() if "Traceback" in ln or "internal error" in ln]
    ok = p.returncode == 0 and run.summary is not None and not run.failed and not internal
    return {"seed": seed, "ok": ok, "exit": p.returncode, "wall_s": round(wall, 2), **counts,
            "failed_checks": run.failed, "internal_errors": internal[:5],
            "end": (p.stderr.strip().splitlines() or [""])[-1],
            "replay": " ".join(argv[1:]).replace(cmdline, f"'{cmdline}'")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-5", help="seeds, e.g. 1-20 or 3,7,9 (default 1-5)")
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time per seed (default 60)")
    ap.add_argument("--memory", type=int, default=64, help="the fuzzing domain's MiB (>= 32; default 64)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    kernel = build_test_kernel()
    results = []
    for seed in seeds(args.seeds):
        r = fuzz_one(kernel, seed, args.seconds, args.memory)
        results.append(r)
        hist = " ".join(f"{k} {r[k]}" for k in ("returned_ok", "enosys", "efault", "einval", "other"))
        harness.say(f"seed {seed}: {'ok' if r['ok'] else 'FAILED'}, {r['calls']} calls in {r['wall_s']} s "
                    f"({hist}); {r['end']}")
        if not r["ok"]:
            harness.say(f"  replay: {r['replay']}")
    total = sum(int(str(r["calls"])) for r in results)
    bad = [r["seed"] for r in results if not r["ok"]]
    harness.say(f"{len(results)} seeds, {total} hypercalls, {len(bad)} failed" + (f": {bad}" if bad else ""))
    doc = {"benchmark": "fuzz_hypercalls", "commit": harness.hyperdisco_commit(), "seconds": args.seconds,
           "memory_mib": args.memory, "total_calls": total, "failed_seeds": bad, "runs": results}
    harness.write_json(harness.results_path(args.out, "fuzz", harness.timestamp()), doc, harness.say)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
