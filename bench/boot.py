#!/usr/bin/env python3
"""Boot benchmark: hyperdisco vs QEMU TCG on the same Debian kernel and initramfs.

Each run boots the guest with ``hyperdisco.run=bench`` on the kernel command line; the initramfs then
prints ``MARK:<name>`` lines between small workloads and powers off.  The harness timestamps every
marker as it arrives on the child's stdout (relative to process spawn), measures the wall time to
process exit and the child's peak RSS, and compares medians.  See bench/README.md.

    python bench/boot.py [--runs 5] [--memory 256] [--out bench/results/boot-<timestamp>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
from harness import KINDS, TAIL_LINES, say

MARKERS = ("user", "loop0", "loop1000", "true200", "dd_syscalls40k", "dd_16M_buffer", "poweroff")
# (phase name, start marker, end marker)
PHASES = (
    ("loop1000", "loop0", "loop1000"),
    ("true200", "loop1000", "true200"),
    ("dd_syscalls40k", "true200", "dd_syscalls40k"),
    ("dd_16M_buffer", "dd_syscalls40k", "dd_16M_buffer"),
)
# (key in a run's metrics, label, unit)
METRICS = (
    ("linux_banner_s", "wall to 'Linux version'", "s"),
    ("run_init_s", "wall to 'Run /init' (kernel)", "s"),
    ("user_space_s", "wall to user space", "s"),
    ("phase_loop1000_s", "phase loop1000 (sh loop)", "s"),
    ("phase_true200_s", "phase true200 (fork+exec)", "s"),
    ("phase_dd_syscalls40k_s", "phase dd_syscalls40k", "s"),
    ("phase_dd_16M_buffer_s", "phase dd_16M_buffer", "s"),
    ("workload_s", "user -> MARK:poweroff", "s"),
    ("poweroff_s", "wall to power-off (exit)", "s"),
    ("peak_rss_mb", "peak RSS", "MiB"),
)
MARK_RE = re.compile(r"MARK:([A-Za-z0-9_]+)")
# Kernel lines timed as events (absent with 'quiet'): the banner (first kernel output on both peers;
# QEMU prints SeaBIOS/iPXE lines before it) and the exec of /init.
EVENT_LINES = (("linux_banner", "Linux version "), ("run_init", "Run /init as init process"))
TRAP_RE = re.compile(r"^\s+(\S+)\s+(\d+)\s*$")
TIMING_RE = re.compile(r"^\s+(.+?)\s+([0-9.]+) s\s*$")
DEFAULT_TIMEOUT = 120.0


@dataclasses.dataclass
class RunResult(harness.Run):
    traps: dict[str, int] = dataclasses.field(default_factory=dict)
    self_timings: dict[str, float] = dataclasses.field(default_factory=dict)


# -- running one child ---------------------------------------------------------------------------------


def run_child(kind: str, index: int, argv: list[str], timeout: float) -> RunResult:
    res = RunResult(kind=kind, index=index, argv=argv)
    child = harness.spawn(argv, timeout)
    events: dict[str, float] = {}
    for t, line in child.out:
        for event, text in EVENT_LINES:
            if text in line:
                events.setdefault(event, t)
        for name in MARK_RE.findall(line):
            res.marks.setdefault(name, t)
    timed_out = child.timed_out

    res.exit_status = child.exit_status
    res.metrics["peak_rss_mb"] = child.peak_rss_mb
    if not timed_out:
        res.metrics["poweroff_s"] = child.wall
    m = res.marks
    for name, t in events.items():
        res.metrics[f"{name}_s"] = t
    if "user" in m:
        res.metrics["user_space_s"] = m["user"]
    for phase, start, end in PHASES:
        if start in m and end in m:
            res.metrics[f"phase_{phase}_s"] = m[end] - m[start]
    if "user" in m and "poweroff" in m:
        res.metrics["workload_s"] = m["poweroff"] - m["user"]
    if kind == "hyperdisco":
        res.traps, res.self_timings = parse_stats(child.err)

    missing = [name for name in MARKERS if name not in m]
    if timed_out:
        res.failure = f"timed out after {timeout:.0f} s (killed)"
    elif res.exit_status != 0:
        res.failure = f"exit status {res.exit_status}"
    elif missing:
        res.failure = f"missing markers: {', '.join(missing)}"
    res.ok = res.failure is None
    if not res.ok:
        res.stdout_tail = [ln for _, ln in child.out[-TAIL_LINES:]]
        res.stderr_tail = child.err[-TAIL_LINES:]
    return res


def parse_stats(err_lines: list[str]) -> tuple[dict[str, int], dict[str, float]]:
    """Parse hyperdisco's ``--stats`` block (``-- timings --`` / ``-- traps --``) from its stderr."""
    traps: dict[str, int] = {}
    timings: dict[str, float] = {}
    section = None
    for line in err_lines:
        if line.startswith("-- ") and line.rstrip().endswith(" --"):
            section = line.strip("- ").strip()
            continue
        if section == "traps":
            mt = TRAP_RE.match(line)
            if mt:
                traps[mt.group(1)] = int(mt.group(2))
            else:
                section = None
        elif section == "timings":
            mm = TIMING_RE.match(line)
            if mm:
                timings[mm.group(1)] = float(mm.group(2))
            else:
                section = None
    return traps, timings


# -- the two peers -------------------------------------------------------------------------------------


def bench_cmdline(quiet: bool) -> str:
    return "hyperdisco.run=bench" + (" quiet" if quiet else "")


def hyperdisco_argv(kernel: Path, initrd: Path, memory: int, quiet: bool) -> list[str]:
    return [sys.executable, "-m", "hyperdisco", "run", "--kernel", str(kernel), "--initrd", str(initrd),
            "--cmdline", f"console=hvc0 {bench_cmdline(quiet)}", "--memory", str(memory), "--stats"]


def qemu_argv(qemu: str, bzimage: Path, initrd: Path, memory: int, quiet: bool) -> list[str]:
    return [qemu, "-accel", "tcg", "-m", str(memory), "-nographic", "-no-reboot",
            "-kernel", str(bzimage), "-initrd", str(initrd),
            "-append", f"console=ttyS0 {bench_cmdline(quiet)}"]


def find_qemu(install: bool) -> str | None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None and install:
        say("qemu-system-x86_64 not found; installing qemu-system-x86 with apt-get")
        rc = subprocess.run(["apt-get", "install", "-y", "qemu-system-x86"], stdin=subprocess.DEVNULL,
                            stdout=sys.stderr, stderr=sys.stderr).returncode
        if rc != 0:
            say(f"apt-get install failed (exit {rc})")
        qemu = shutil.which("qemu-system-x86_64")
    return qemu


# -- host info -----------------------------------------------------------------------------------------


def host_info(qemu: str | None) -> dict[str, Any]:
    return {
        "cpu_model": harness.cpu_model(),
        "nproc": os.cpu_count(),
        "host_kernel": platform.release(),
        "host_os": platform.platform(),
        "python": platform.python_version(),
        "unicorn": harness.unicorn_version(),
        "qemu": harness.first_line([qemu, "--version"]) if qemu else None,
        "hyperdisco_commit": harness.hyperdisco_commit(),
        "loadavg_at_start": os.getloadavg(),
    }


# -- summarising ---------------------------------------------------------------------------------------


def median_traps(runs: list[RunResult]) -> dict[str, float]:
    ok = [r for r in runs if r.ok and r.traps]
    names = sorted({name for r in ok for name in r.traps})
    return {name: statistics.median(r.traps.get(name, 0) for r in ok) for name in names}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} {unit}" if unit == "MiB" else f"{value:.3f} {unit}"


def print_table(results: dict[str, list[RunResult]], med: dict[str, dict[str, float]],
                ratios: dict[str, float]) -> None:
    lines = harness.table_lines(harness.comparison_rows(results, med, ratios, METRICS, _fmt))
    print("medians (ratio = hyperdisco / QEMU, lower is better for hyperdisco)")
    print("\n".join(lines))


def print_traps(traps: dict[str, float], n_runs: int) -> None:
    if not traps:
        return
    print(f"\nhyperdisco trap counts (median of {n_runs} ok run{'s' if n_runs != 1 else ''})")
    width = max(len(n) for n in traps)
    for name, value in traps.items():
        print(f"  {name:<{width}}  {value:>10.0f}")


def print_failures(results: dict[str, list[RunResult]]) -> None:
    failed = [r for k in KINDS for r in results[k] if not r.ok]
    for r in failed:
        seen = [name for name, _ in sorted(r.marks.items(), key=lambda kv: kv[1])]
        print(f"\nFAILED {r.kind} run {r.index}: {r.failure}; markers seen: {seen}")
        harness.print_tails(r)


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Boot + micro-workload benchmark: hyperdisco vs QEMU TCG")
    p.add_argument("--runs", type=int, default=5, help="runs per hypervisor (default 5)")
    p.add_argument("--quick", action="store_true", help="1 run each (overrides --runs)")
    p.add_argument("--memory", type=int, default=256, metavar="MiB", help="guest memory (default 256)")
    p.add_argument("--only", choices=KINDS, help="run only this hypervisor")
    p.add_argument("--out", type=Path, help="JSON results file (default bench/results/boot-<timestamp>.json)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="kill a run after this many seconds (default 120)")
    p.add_argument("--quiet-kernel", action="store_true", help="add 'quiet' to both kernel command lines")
    p.add_argument("--install-qemu", action="store_true",
                   help="apt-get install qemu-system-x86 if qemu-system-x86_64 is missing")
    args = p.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = harness.default_images(say)
    kinds = [args.only] if args.only else list(KINDS)
    qemu = None
    if "qemu" in kinds:
        qemu = find_qemu(args.install_qemu)
        if qemu is None:
            say("qemu-system-x86_64 missing (use --install-qemu to apt-get it); skipping the QEMU peer")
            kinds.remove("qemu")
    if not kinds:
        return 1

    argvs = {
        "hyperdisco": hyperdisco_argv(images.kernel, images.initrd, args.memory, args.quiet_kernel),
        "qemu": qemu_argv(qemu or "qemu-system-x86_64", images.bzimage, images.initrd, args.memory,
                          args.quiet_kernel),
    }
    stamp = harness.timestamp()
    out_path = harness.results_path(args.out, "boot", stamp)
    info = host_info(qemu)
    results: dict[str, list[RunResult]] = {k: [] for k in KINDS}
    for kind, i, label in harness.schedule(args.runs, kinds):
        say(f"{label} ...")
        r = run_child(kind, i, argvs[kind], args.timeout)
        results[kind].append(r)
        if r.ok:
            met = r.metrics
            say(f"{label} ok: user space {met['user_space_s']:.3f} s, "
                f"power-off {met['poweroff_s']:.3f} s, peak RSS {met['peak_rss_mb']:.0f} MiB")
        else:
            say(f"{label} FAILED: {r.failure}")

    med = {k: harness.medians(results[k], [key for key, _, _ in METRICS]) for k in KINDS}
    ratios = harness.ratios(med)
    traps = median_traps(results["hyperdisco"])

    print_table(results, med, ratios)
    print_traps(traps, sum(r.ok for r in results["hyperdisco"]))
    print_failures(results)

    doc = {
        "benchmark": "boot",
        "started": stamp,
        "config": {"runs": args.runs, "memory_mib": args.memory, "timeout_s": args.timeout,
                   "quiet_kernel": args.quiet_kernel, "kinds": kinds, "kernel_release": images.kernel_release,
                   "kernel_elf": str(images.kernel), "bzimage": str(images.bzimage),
                   "initrd": str(images.initrd),
                   "argv": {k: argvs[k] for k in kinds}},
        "host": info,
        "metric_units": {key: unit for key, _, unit in METRICS},
        "runs": {k: [dataclasses.asdict(r) for r in results[k]] for k in kinds},
        "medians": {k: med[k] for k in kinds},
        "ratios_hyperdisco_over_qemu": ratios,
        "hyperdisco_median_traps": traps,
    }
    harness.write_json(out_path, doc, say)
    all_ok = all(r.ok for k in kinds for r in results[k])
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
