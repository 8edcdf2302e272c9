#!/usr/bin/env python3
"""Disk benchmark: hyperdisco's blkback (xen-blkfront) vs QEMU TCG's virtio-blk, same kernel and initramfs.

Every run boots a guest whose /init (bench/tools/disk-init.sh, appended to the default initramfs together
with bench/tools/disktool.c built here with ``gcc -static -O2``) works on a fresh sparse raw image:

1. sequential write: ``dd if=/dev/zero of=DEV bs=1M count=256 oflag=direct`` then ``sync``
2. sequential read:  ``dd if=DEV of=/dev/null bs=1M count=256 iflag=direct``
3. random read:      ``disktool randread``: 4 KiB O_DIRECT preads at random aligned offsets, queue depth 1,
   for ~10 s

The guest times each phase with CLOCK_MONOTONIC; the host also timestamps the MARK: lines around each
phase as they arrive. Medians over the runs, ratio = hyperdisco / QEMU (higher is better for both
throughput and IOPS). See bench/README.md.

    python bench/disk.py [--runs 3] [--mib 256] [--rand-seconds 10] [--out bench/results/disk-<ts>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness
from harness import KINDS, REPO, TAIL_LINES, say

TOOLS = REPO / "bench" / "tools"
DEVICES = {"hyperdisco": "/dev/xvdb", "qemu": "/dev/vda"}
DEFAULT_TIMEOUT = 300.0
MIB = 1 << 20
# (key in a run's metrics, label, unit); all "higher is better" except those in LOWER_IS_BETTER
METRICS = (
    ("write_mibps", "seq write O_DIRECT + sync (guest clock)", "MiB/s"),
    ("read_mibps", "seq read O_DIRECT (guest clock)", "MiB/s"),
    ("randread_iops", "4 KiB random read QD1 O_DIRECT", "IOPS"),
    ("write_host_mibps", "seq write + sync (host-timed MARKs)", "MiB/s"),
    ("read_host_mibps", "seq read (host-timed MARKs)", "MiB/s"),
    ("randread_host_s", "random-read phase length (host)", "s"),
    ("ready_s", "spawn -> MARK:write_start (boot)", "s"),
    ("wall_s", "spawn -> exit (whole run)", "s"),
    ("peak_rss_mb", "peak RSS of the hypervisor", "MiB"),
)
LOWER_IS_BETTER = {"ready_s", "wall_s", "peak_rss_mb"}
NEUTRAL = {"randread_host_s"}  # a check: should be close to --rand-seconds on both
MARKERS = ("write_start", "write_end", "read_start", "read_end", "rand_start", "rand_end", "done")
MARK_RE = re.compile(r"MARK:([A-Za-z0-9_]+)")
TIME_RE = re.compile(r"TIME (\w+) ([0-9.]+) ([0-9.]+) ([0-9.]+)")
RAND_RE = re.compile(r"RANDREAD ops=(\d+) seconds=([0-9.]+) iops=([0-9.]+)")
DEV_RE = re.compile(r"DISKBENCH:dev (\S+) (.*)$")
ERR_RE = re.compile(r"DISKBENCH:error (.*)$")


@dataclasses.dataclass
class RunResult(harness.Run):
    caches_dropped: bool = False
    guest_times: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    randread: dict[str, float] = dataclasses.field(default_factory=dict)
    device: dict[str, str] = dataclasses.field(default_factory=dict)
    image_allocated_mib: float | None = None


# -- building the guest side ---------------------------------------------------------------------------


def build_tool(workdir: Path) -> Path:
    """Compile bench/tools/disktool.c statically with the host's gcc into ``workdir``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("bench: gcc not found (needed to build bench/tools/disktool.c); apt-get install gcc")
    out = workdir / "disktool"
    argv = [gcc, "-static", "-O2", "-Wall", "-o", str(out), str(TOOLS / "disktool.c")]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: building disktool failed ({' '.join(argv)}):\n{proc.stderr.strip()}\n"
                         "(a static build needs libc.a: apt-get install libc6-dev)")
    return out


def build_initrd(base_initrd: Path, modules_dir: Path, tool: Path, out: Path) -> list[str]:
    """Write ``out`` = the default initramfs + a second cpio archive overriding /init.

    The second archive holds /init (bench/tools/disk-init.sh), /bin/disktool and virtio_pci with its
    dependencies (the default initramfs lacks virtio_pci, so QEMU's virtio-blk disk would never appear).
    Returns the appended modules, in load order.
    """
    from hyperdisco.images.cpio import CpioWriter
    from hyperdisco.images.kmod import ModuleTree

    mods = ModuleTree(modules_dir).load_order(["virtio_pci", "virtio_blk"])
    w = CpioWriter()
    w.file("init", (TOOLS / "disk-init.sh").read_bytes(), 0o755)
    w.file("bin/disktool", tool.read_bytes(), 0o755)
    w.file("etc/diskbench.modules", "".join(f"{m.relpath}\n" for m in mods).encode())
    for m in mods:
        w.file(f"lib/modules/{modules_dir.name}/{m.relpath}", (modules_dir / m.relpath).read_bytes())
    out.write_bytes(base_initrd.read_bytes() + w.finish())
    return [m.relpath for m in mods]


# -- running one child ---------------------------------------------------------------------------------


def drop_host_caches() -> bool:
    """Write back and drop the host page cache (needs root); False if not possible."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def run_once(kind: str, index: int, argv: list[str], image: Path, args: argparse.Namespace) -> RunResult:
    res = RunResult(kind=kind, index=index, argv=argv)
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:  # a fresh sparse image for every run
        f.truncate(args.image_mib * MIB)
    if not args.no_drop_caches:
        res.caches_dropped = drop_host_caches()
    child = harness.spawn(argv, args.timeout)
    out, err, code, _, timed_out, wall = child
    res.exit_status = code
    res.metrics["peak_rss_mb"] = child.peak_rss_mb
    try:
        res.image_allocated_mib = image.stat().st_blocks * 512 / MIB
    except OSError:
        pass
    errors: list[str] = []
    for t, line in out:
        for name in MARK_RE.findall(line):
            res.marks.setdefault(name, t)
        if m := TIME_RE.search(line):
            res.guest_times[m.group(1)] = [float(m.group(i)) for i in (2, 3, 4)]
        elif m := RAND_RE.search(line):
            res.randread = {"ops": float(m.group(1)), "seconds": float(m.group(2)), "iops": float(m.group(3))}
        elif m := DEV_RE.search(line):
            res.device = {"dev": m.group(1)}
            for kv in m.group(2).split():
                key, _, value = kv.partition("=")
                res.device[key] = value
        elif m := ERR_RE.search(line):
            errors.append(m.group(1))

    size = args.mib
    mk, gt = res.marks, res.guest_times
    if "write" in gt:
        res.metrics["write_mibps"] = size / (gt["write"][2] - gt["write"][0])
        res.metrics["write_dd_only_mibps"] = size / (gt["write"][1] - gt["write"][0])
    if "read" in gt:
        res.metrics["read_mibps"] = size / (gt["read"][1] - gt["read"][0])
    if res.randread:
        res.metrics["randread_iops"] = res.randread["iops"]
    if "write_start" in mk and "write_end" in mk:
        res.metrics["write_host_mibps"] = size / (mk["write_end"] - mk["write_start"])
    if "read_start" in mk and "read_end" in mk:
        res.metrics["read_host_mibps"] = size / (mk["read_end"] - mk["read_start"])
    if "rand_start" in mk and "rand_end" in mk:
        res.metrics["randread_host_s"] = mk["rand_end"] - mk["rand_start"]
    if "write_start" in mk:
        res.metrics["ready_s"] = mk["write_start"]
    if not timed_out:
        res.metrics["wall_s"] = wall

    missing = [name for name in MARKERS if name not in mk]
    if timed_out:
        res.failure = f"timed out after {args.timeout:.0f} s (killed); markers seen: {list(mk)}"
    elif errors:
        res.failure = "guest: " + "; ".join(errors)
    elif code != 0:
        res.failure = f"exit status {code}"
    elif missing or not res.randread or "write" not in gt or "read" not in gt:
        res.failure = f"incomplete output (missing markers: {', '.join(missing) or 'none'})"
    res.ok = res.failure is None
    if not res.ok:
        res.stdout_tail = [ln for _, ln in out[-TAIL_LINES:]]
        res.stderr_tail = err[-TAIL_LINES:]
    return res


# -- the two peers -------------------------------------------------------------------------------------


def guest_cmdline(kind: str, args: argparse.Namespace) -> str:
    console = "hvc0" if kind == "hyperdisco" else "ttyS0"
    return (f"console={console} quiet diskbench.dev={DEVICES[kind]} diskbench.mib={args.mib} "
            f"diskbench.rand_s={args.rand_seconds:g}")


def hyperdisco_argv(kernel: Path, initrd: Path, image: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "hyperdisco", "run", "--kernel", str(kernel), "--initrd", str(initrd),
            "--cmdline", guest_cmdline("hyperdisco", args), "--memory", str(args.memory),
            "--disk", f"format=raw, vdev=xvdb, access=rw, target={image}"]


def qemu_argv(qemu: str, bzimage: Path, initrd: Path, image: Path, args: argparse.Namespace) -> list[str]:
    return [qemu, "-accel", "tcg", "-M", "pc", "-m", str(args.memory), "-nographic", "-no-reboot",
            "-kernel", str(bzimage), "-initrd", str(initrd), "-append", guest_cmdline("qemu", args),
            "-drive", f"file={image},format=raw,if=virtio,cache={args.qemu_cache}"]


# -- host info -----------------------------------------------------------------------------------------


def host_info(qemu: str | None, workdir: Path) -> dict[str, Any]:
    return {
        "cpu_model": harness.cpu_model(),
        "nproc": os.cpu_count(),
        "host_kernel": platform.release(),
        "python": platform.python_version(),
        "unicorn": harness.unicorn_version(),
        "qemu": harness.first_line([qemu, "--version"]) if qemu else None,
        "gcc": harness.first_line(["gcc", "--version"]),
        "hyperdisco_commit": harness.hyperdisco_commit(),
        "workdir_filesystem": harness.last_line(["df", "--output=source,fstype", str(workdir)]),
        "loadavg_at_start": os.getloadavg(),
    }


# -- summarising ---------------------------------------------------------------------------------------


def medians(runs: list[RunResult]) -> dict[str, float]:
    return harness.medians(runs, [k for k, _, _ in METRICS] + ["write_dd_only_mibps"])


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "IOPS":
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}" if unit in ("MiB/s", "MiB") else f"{value:.2f} {unit}"


def print_table(results: dict[str, list[RunResult]], med: dict[str, dict[str, float]],
                ratios: dict[str, float], args: argparse.Namespace) -> None:
    head, *rows = harness.comparison_rows(results, med, ratios, METRICS, _fmt)
    better = ["-" if key in NEUTRAL else "lower" if key in LOWER_IS_BETTER else "higher"
              for key, _, _ in METRICS]
    lines = harness.table_lines([(*head, "better")]
                                + [(*row, b) for row, b in zip(rows, better, strict=True)])
    print(f"disk: {args.mib} MiB sequential (bs=1M) and {args.rand_seconds:g} s of 4 KiB random reads, "
          f"{args.image_mib} MiB sparse raw image, medians")
    print("ratio = hyperdisco / QEMU: for throughput and IOPS HIGHER is better (ratio > 1.00x: hyperdisco "
          "faster); for the time/RSS rows lower is better")
    print("\n".join(lines))


def print_failures(results: dict[str, list[RunResult]]) -> None:
    for r in (r for k in KINDS for r in results[k] if not r.ok):
        print(f"\nFAILED {r.kind} run {r.index}: {r.failure}")
        harness.print_tails(r)


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Disk benchmark: hyperdisco blkback vs QEMU TCG virtio-blk")
    p.add_argument("--runs", type=int, default=3, help="runs per hypervisor (default 3)")
    p.add_argument("--mib", type=int, default=256, help="MiB written and read sequentially (default 256)")
    p.add_argument("--image-mib", type=int, default=512, help="size of the sparse raw image (default 512)")
    p.add_argument("--rand-seconds", type=float, default=10.0, help="random-read phase length (default 10)")
    p.add_argument("--memory", type=int, default=256, metavar="MiB", help="guest memory (default 256)")
    p.add_argument("--only", choices=KINDS, help="run only this hypervisor")
    p.add_argument("--qemu-cache", default="writeback", choices=("writeback", "none", "writethrough",
                                                                 "directsync", "unsafe"),
                   help="QEMU -drive cache= mode (default writeback: host page cache, like hyperdisco's "
                        "pread/pwrite)")
    p.add_argument("--no-drop-caches", action="store_true",
                   help="do not drop the host page cache before each run")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="kill a run after this many seconds (default 300)")
    p.add_argument("--workdir", type=Path, help="directory for the image/initrd/tool (default: a temp dir)")
    p.add_argument("--out", type=Path, help="JSON results file (default bench/results/disk-<timestamp>.json)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if not 1 <= args.mib <= args.image_mib:
        p.error("--mib must be between 1 and --image-mib")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = harness.default_images(say)
    kinds = [args.only] if args.only else list(KINDS)
    qemu = shutil.which("qemu-system-x86_64")
    if "qemu" in kinds and qemu is None:
        say("qemu-system-x86_64 missing (apt-get install qemu-system-x86); skipping the QEMU peer")
        kinds.remove("qemu")
    if not kinds:
        return 1

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="hd-diskbench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        say(f"building disktool and the bench initramfs in {workdir}")
        tool = build_tool(workdir)
        initrd = workdir / "initrd-diskbench.cpio"
        modules_dir = images.bzimage.parent.parent / "lib" / "modules" / images.kernel_release
        modules = build_initrd(images.initrd, modules_dir, tool, initrd)
        image = workdir / "disk.raw"
        argvs = {
            "hyperdisco": hyperdisco_argv(images.kernel, initrd, image, args),
            "qemu": qemu_argv(qemu or "qemu-system-x86_64", images.bzimage, initrd, image, args),
        }
        stamp = harness.timestamp()
        out_path = harness.results_path(args.out, "disk", stamp)
        info = host_info(qemu, workdir)
        results: dict[str, list[RunResult]] = {k: [] for k in KINDS}
        warned = False
        for kind, i, label in harness.schedule(args.runs, kinds):
            say(f"{label} ...")
            r = run_once(kind, i, argvs[kind], image, args)
            results[kind].append(r)
            if not args.no_drop_caches and not r.caches_dropped and not warned:
                say("could not write /proc/sys/vm/drop_caches (not root?); host caches stay warm")
                warned = True
            met = r.metrics
            if r.ok:
                say(f"{label} ok: write {met['write_mibps']:.1f} MiB/s, "
                    f"read {met['read_mibps']:.1f} MiB/s, randread {met['randread_iops']:.0f} IOPS, "
                    f"wall {met.get('wall_s', 0):.1f} s")
            else:
                say(f"{label} FAILED: {r.failure}")
        image.unlink(missing_ok=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    med = {k: medians(results[k]) for k in KINDS}
    ratios = harness.ratios(med)
    print_table(results, med, ratios, args)
    print_failures(results)

    doc = {
        "benchmark": "disk",
        "started": stamp,
        "config": {"runs": args.runs, "mib": args.mib, "image_mib": args.image_mib,
                   "rand_seconds": args.rand_seconds, "memory_mib": args.memory, "timeout_s": args.timeout,
                   "qemu_cache": args.qemu_cache, "drop_host_caches": not args.no_drop_caches,
                   "kinds": kinds, "kernel_release": images.kernel_release, "kernel_elf": str(images.kernel),
                   "bzimage": str(images.bzimage), "base_initrd": str(images.initrd),
                   "appended_modules": modules, "argv": {k: argvs[k] for k in kinds}},
        "host": info,
        "metric_units": {key: unit for key, _, unit in METRICS} | {"write_dd_only_mibps": "MiB/s"},
        "higher_is_better": {key: key not in LOWER_IS_BETTER for key, _, _ in METRICS if key not in NEUTRAL},
        "runs": {k: [dataclasses.asdict(r) for r in results[k]] for k in kinds},
        "medians": {k: med[k] for k in kinds},
        "ratios_hyperdisco_over_qemu": ratios,
    }
    harness.write_json(out_path, doc, say)
    return 0 if all(r.ok for k in kinds for r in results[k]) else 1


if __name__ == "__main__":
    sys.exit(main())
