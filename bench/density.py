#!/usr/bin/env python3
"""Density benchmark: how many idle busybox domains one hyperdisco daemon holds, and what each costs.

Starts one daemon on a temporary socket and grows the set of idle domains in steps (8, 16, 32, ...),
keeping the domains of earlier steps.  Per step it records each new domain's create-to-shell time
(``hyperdisco create`` + ``hyperdisco exec DOM true``, a few in flight at once), then lets the set idle and
measures the daemon's CPU (/proc/PID/stat), its PSS/RSS (/proc/PID/smaps_rollup), the host's MemAvailable
and each domain's own CPU time over a window, and finally checks that the domains still answer ``exec``.
Stepping stops at the first step that fails.  See bench/README.md.

    python bench/density.py [--steps 8,16,32] [--memory 128] [--settle 10]
                            [--out bench/results/density-<timestamp>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import harness
from harness import REPO, TAIL_LINES

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
ROLLUP_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Dirty", "Shared_Clean")


def say(msg: str) -> None:
    harness.say(msg, "density")


# -- host-side probes ----------------------------------------------------------------------------------


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the comm field may contain spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def host_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host from /proc/stat, to spot other load during a window."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a daemon and its domain processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def smaps_rollup(pid: int) -> dict[str, int]:
    """The interesting /proc/PID/smaps_rollup lines, in KiB, summed over the process and its descendants
    (since each domain runs in a process of its own, the daemon alone is not what the domains cost; PSS
    sums correctly across processes: a shared page is split between its sharers)."""
    out: dict[str, int] = {}
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in ROLLUP_KEYS:
                out[key] = out.get(key, 0) + int(rest.split()[0])
    return out


_MAPPING_RE = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def smaps_by_mapping(pid: int, top: int = 10) -> list[dict[str, Any]]:
    """Where the daemon's memory is: /proc/PID/smaps summed per kind of mapping (KiB), largest PSS first.

    Anonymous mappings are grouped by their size rounded to MiB (so e.g. one buffer per vCPU shows up as
    one row with a count), memfds and files by name with digits folded."""
    groups: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = _MAPPING_RE.match(line)
        if m and "-" in line.split(" ", 1)[0]:
            start, end = (int(x, 16) for x in line.split(" ", 1)[0].split("-"))
            name = m.group(1).strip()
            if not name:
                key = f"[anon {((end - start) + (1 << 19)) >> 20} MiB]"
            else:
                key = re.sub(r"\d+", "N", name)
            cur = groups.setdefault(key, {"mapping": key, "count": 0, "size_kib": 0, "rss_kib": 0,
                                          "pss_kib": 0})
            cur["count"] += 1
            cur["size_kib"] += (end - start) >> 10
            continue
        if cur is None:
            continue
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            cur[f"{key.lower()}_kib"] += int(rest.split()[0])
    return sorted(groups.values(), key=lambda g: -g["pss_kib"])[:top]


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def host_info() -> dict[str, Any]:
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1])
    except OSError:
        pass
    return {"cpu_model": harness.cpu_model(), "nproc": os.cpu_count(), "mem_total_kib": mem_total,
            "host_kernel": platform.release(), "python": platform.python_version(),
            "unicorn": harness.unicorn_version(),
            "hyperdisco_commit": harness.hyperdisco_commit(), "loadavg_at_start": os.getloadavg()}


# -- the daemon and the verbs --------------------------------------------------------------------------


class Daemon:
    """One ``hyperdisco daemon`` on a temporary socket, in its own session so Ctrl-C reaches only us."""

    def __init__(self, workdir: Path, share_pages: bool = False) -> None:
        self.workdir = workdir
        self.share_pages = share_pages
        self.socket = workdir / "control.sock"
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.log_path, "wb")
        try:
            argv = [sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(self.socket), "-v"]
            if self.share_pages:
                argv.append("--share-pages")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=REPO, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if self.socket.exists() and self.verb("list", timeout=30).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the daemon did not answer on {self.socket} within {timeout:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def verb(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hyperdisco", *args]
        env = {**os.environ, "HYPERDISCO_SOCKET": str(self.socket)}
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=REPO,
                                  env=env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            return subprocess.CompletedProcess(argv, -1, out, f"timed out after {timeout:.0f} s (killed)")

    def top(self) -> dict[str, Any]:
        """The daemon's per-domain CPU seconds, unrounded (``list`` rounds Time(s) to 0.1 s)."""
        from hyperdisco.toolstack.protocol import Client

        c = Client(str(self.socket))
        try:
            res: dict[str, Any] = c.call("top")
            return res
        finally:
            c.close()

    def list_times(self) -> dict[str, float]:
        """Fallback: Time(s) per domain from the ``list`` verb's table."""
        res = self.verb("list", timeout=60)
        out: dict[str, float] = {}
        for line in res.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 6 and parts[0] != "Domain-0":
                try:
                    out[parts[0]] = float(parts[-1])
                except ValueError:
                    pass
        return out

    def log_tail(self, n: int = TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# -- one step ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Boot:
    name: str
    ok: bool = False
    create_s: float | None = None  # the `create` verb alone
    shell_s: float | None = None  # create -> `exec true` answered: create-to-shell
    error: str | None = None


@dataclasses.dataclass
class Step:
    target: int
    domains: int = 0  # domains up at the end of the step
    boots: list[Boot] = dataclasses.field(default_factory=list)
    batch_wall_s: float | None = None
    failures: list[str] = dataclasses.field(default_factory=list)
    window: dict[str, Any] = dataclasses.field(default_factory=dict)
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    mappings: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    verify: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def boot_one(daemon: Daemon, workdir: Path, name: str, memory: int, timeout: float) -> Boot:
    b = Boot(name)
    cfg = workdir / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nmemory = {memory}\n')
    t0 = time.monotonic()
    res = daemon.verb("create", str(cfg), timeout=timeout)
    b.create_s = time.monotonic() - t0
    if res.returncode != 0:
        b.error = f"create: status {res.returncode}: {res.stderr.strip().splitlines()[-1:] or ''}"
        return b
    res = daemon.verb("exec", name, "true", "--timeout", str(timeout), timeout=timeout + 30)
    b.shell_s = time.monotonic() - t0
    if res.returncode != 0:
        b.error = f"exec true: status {res.returncode}: {res.stderr.strip()[-300:]}"
        return b
    b.ok = True
    return b


def grow(daemon: Daemon, workdir: Path, step: Step, start: int, args: argparse.Namespace) -> list[str]:
    """Create domains ``start+1 .. step.target``, ``args.parallel`` in flight; returns those that came up."""
    names = [f"idle{i:03d}" for i in range(start + 1, step.target + 1)]
    made: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def task(name: str) -> Boot | None:
        if stop.is_set():
            return None
        avail = mem_available_kib() * 1024
        if avail < args.min_available_gib * GIB:
            stop.set()
            with lock:
                step.failures.append(f"MemAvailable {avail / GIB:.2f} GiB < {args.min_available_gib} GiB "
                                     f"before creating {name}")
            return None
        b = boot_one(daemon, workdir, name, args.memory, args.timeout)
        with lock:
            step.boots.append(b)
            if b.ok:
                made.append(name)
            n_done = len(step.boots)
            if b.ok:
                say(f"  {name} up: create {b.create_s:.2f} s, create-to-shell {b.shell_s:.2f} s "
                    f"({n_done}/{len(names)})")
            else:
                say(f"  {name} FAILED: {b.error}")
                step.failures.append(f"{name}: {b.error}")
                stop.set()
        if not daemon.alive():
            stop.set()
        return b

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(task, names))
    step.batch_wall_s = time.monotonic() - t0
    if not daemon.alive():
        step.failures.append(f"the daemon died (status {daemon.proc.returncode if daemon.proc else '?'})")
    return made


def domain_cpu(daemon: Daemon) -> tuple[dict[str, float], str]:
    try:
        return {d["name"]: float(d["cpu_s"]) for d in daemon.top()["domains"]}, "top"
    except Exception as exc:  # the control protocol is internal: fall back to the `list` verb
        say(f"  top via the control socket failed ({exc}); using `list` Time(s)")
        return daemon.list_times(), "list"


def measure_window(daemon: Daemon, seconds: float, n_domains: int) -> dict[str, Any]:
    """Daemon CPU and per-domain vCPU time over ``seconds`` of idling."""
    ncpu = os.cpu_count() or 1
    dom0, src0 = domain_cpu(daemon)
    host0, ticks0, t0 = host_cpu_jiffies(), proc_cpu_ticks(daemon.pid), time.monotonic()
    time.sleep(seconds)
    host1, ticks1, t1 = host_cpu_jiffies(), proc_cpu_ticks(daemon.pid), time.monotonic()
    dom1, src1 = domain_cpu(daemon)
    dt = t1 - t0
    cpu_s = (ticks1 - ticks0) / CLK_TCK
    per_dom = {name: dom1[name] - dom0[name] for name in dom1 if name in dom0}
    vals = sorted(per_dom.values())
    out: dict[str, Any] = {
        "seconds": dt,
        "daemon_cpu_s": cpu_s,
        "daemon_cpu_pct_one_core": 100.0 * cpu_s / dt,
        "daemon_cpu_pct_machine": 100.0 * cpu_s / dt / ncpu,
        # the whole host's busy share: well above the daemon's means something else ran during the window
        "host_busy_pct_machine": 100.0 * (host1[0] - host0[0]) / max(1, host1[1] - host0[1]),
        "domain_cpu_source": src1 if src0 == src1 else f"{src0}/{src1}",
        "domain_cpu_delta_s": per_dom,
        "loadavg": os.getloadavg(),
    }
    if n_domains:
        out["daemon_cpu_pct_one_core_per_domain"] = out["daemon_cpu_pct_one_core"] / n_domains
    if vals:
        out["domain_idle_pct_mean"] = 100.0 * statistics.fmean(vals) / dt
        out["domain_idle_pct_median"] = 100.0 * statistics.median(vals) / dt
        out["domain_idle_pct_max"] = 100.0 * vals[-1] / dt
        out["domains_cpu_s_sum"] = sum(vals)
        # what the daemon burned that no vCPU accounts for (Python threads, ticker, console, sockets)
        out["daemon_cpu_outside_vcpus_pct_one_core"] = 100.0 * (cpu_s - sum(vals)) / dt
    return out


def measure_memory(daemon: Daemon, n: int, baseline: dict[str, Any]) -> dict[str, Any]:
    roll = smaps_rollup(daemon.pid)
    avail = mem_available_kib()
    out: dict[str, Any] = {"rollup_kib": roll, "mem_available_kib": avail,
                           "mem_available_drop_kib": baseline["mem_available_kib"] - avail}
    if n:
        base = baseline["rollup_kib"]
        out["pss_per_domain_kib"] = roll["Pss"] / n
        out["pss_per_domain_net_kib"] = (roll["Pss"] - base["Pss"]) / n
        out["rss_per_domain_net_kib"] = (roll["Rss"] - base["Rss"]) / n
        for key in ("Pss_Anon", "Pss_Shmem", "Pss_File"):
            if key in roll and key in base:
                out[f"{key.lower()}_per_domain_net_kib"] = (roll[key] - base[key]) / n
        out["mem_available_drop_per_domain_kib"] = out["mem_available_drop_kib"] / n
    return out


def verify(daemon: Daemon, names: list[str], timeout: float) -> dict[str, Any]:
    sample = list(names) if len(names) <= 16 else names[::4]  # a copy: the caller's list keeps growing
    failed: dict[str, str] = {}
    lat: list[float] = []
    for name in sample:
        t0 = time.monotonic()
        res = daemon.verb("exec", name, "echo ok", "--timeout", str(timeout), timeout=timeout + 30)
        lat.append(time.monotonic() - t0)
        if res.returncode != 0 or res.stdout.strip() != "ok":
            failed[name] = f"status {res.returncode}: {(res.stderr or res.stdout).strip()[-200:]}"
    return {"checked": sample, "failed": failed, "exec_s_median": statistics.median(lat) if lat else None,
            "exec_s_max": max(lat) if lat else None}


def run_step(daemon: Daemon, workdir: Path, step: Step, names: list[str], baseline: dict[str, Any],
             args: argparse.Namespace) -> None:
    """Grow to ``step.target`` domains (``names``: those up so far, extended here), idle, measure, verify."""
    say(f"step {step.target}: creating {step.target - len(names)} domains ({args.parallel} in flight), "
        f"{len(names)} already up")
    names.extend(grow(daemon, workdir, step, args.created, args))
    args.created += len(step.boots)
    step.domains = len(names)
    if not daemon.alive():
        return
    say(f"step {step.target}: {step.domains} domains up in {step.batch_wall_s:.1f} s; "
        f"settling {args.settle:.0f} s, then measuring {args.window:.0f} s")
    time.sleep(args.settle)
    step.window = measure_window(daemon, args.window, step.domains)
    step.memory = measure_memory(daemon, step.domains, baseline)
    step.mappings = smaps_by_mapping(daemon.pid)
    say(f"step {step.target}: daemon CPU {step.window['daemon_cpu_pct_one_core']:.1f}% of a core "
        f"(host {step.window['host_busy_pct_machine']:.0f}% busy), "
        f"PSS {step.memory['rollup_kib']['Pss'] / 1024:.0f} MiB "
        f"({step.memory.get('pss_per_domain_net_kib', 0) / 1024:.1f} MiB/domain net); verifying exec")
    step.verify = verify(daemon, names, args.timeout)
    for name, err in step.verify["failed"].items():
        step.failures.append(f"{name} did not answer exec at the end of the step: {err}")
    avail = step.memory["mem_available_kib"] * 1024
    if avail < args.min_available_gib * GIB:
        step.failures.append(f"MemAvailable {avail / GIB:.2f} GiB < {args.min_available_gib} GiB")
    if not daemon.alive():
        step.failures.append("the daemon died")


# -- reporting -----------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def step_row(s: Step) -> tuple[str, ...]:
    shells = [b.shell_s for b in s.boots if b.ok and b.shell_s is not None]
    w, m = s.window, s.memory
    per_dom = m.get("pss_per_domain_net_kib")
    checked = len(s.verify.get("checked", []))
    failed = len(s.verify.get("failed", {}))
    answered = f"{checked - failed}/{checked}" if s.verify else "-"
    return (f"{s.domains}" + ("" if s.domains == s.target else f" (of {s.target})"),
            f"{_f(statistics.median(shells) if shells else None)} / {_f(max(shells) if shells else None)}",
            _f(s.batch_wall_s, ".0f"),
            _f(m["pss_per_domain_kib"] / 1024 if "pss_per_domain_kib" in m else None, ".1f"),
            _f(per_dom / 1024 if per_dom is not None else None, ".1f"),
            _f(m["rollup_kib"]["Pss"] / 1024 if m else None, ".0f"),
            _f(m["mem_available_drop_kib"] / 1024 / s.domains if m and s.domains else None, ".1f"),
            _f(w.get("daemon_cpu_pct_one_core"), ".1f"),
            _f(w.get("domain_idle_pct_mean"), ".2f"),
            _f(w.get("host_busy_pct_machine"), ".0f"),
            answered + ("" if s.ok else "  FAIL"))


def print_table(steps: list[Step], baseline: dict[str, Any]) -> None:
    head = ("domains", "create-to-shell med/max (s)", "batch (s)", "PSS/dom (MiB)", "net PSS/dom",
            "PSS total", "MemAvail drop/dom", "daemon CPU idle (% core)", "idle CPU/dom (%)",
            "host busy (%)", "all answered")
    lines = harness.table_lines([head] + [step_row(s) for s in steps])
    b = baseline
    print(f"baseline (daemon, 0 domains): PSS {b['rollup_kib']['Pss'] / 1024:.0f} MiB, "
          f"RSS {b['rollup_kib']['Rss'] / 1024:.0f} MiB, "
          f"idle CPU {_f(b['window'].get('daemon_cpu_pct_one_core'), '.1f')}% of a core; "
          f"MemAvailable {b['mem_available_kib'] / 1024 / 1024:.1f} GiB")
    print("\n".join(lines))
    last = next((s for s in reversed(steps) if s.memory and s.domains), None)
    if last is not None:
        m = last.memory
        parts = [f"{k.split('_')[1]} {m[f'{k.lower()}_per_domain_net_kib'] / 1024:.1f}"
                 for k in ("Pss_Anon", "Pss_Shmem", "Pss_File") if f"{k.lower()}_per_domain_net_kib" in m]
        print(f"\nat {last.domains} domains, net PSS per domain by kind (MiB): {', '.join(parts)}; "
              f"daemon CPU outside vCPUs "
              f"{_f(last.window.get('daemon_cpu_outside_vcpus_pct_one_core'), '.1f')}% of a core, "
              f"max idle domain {_f(last.window.get('domain_idle_pct_max'), '.2f')}%")
        print("largest mappings (PSS MiB, count):  " + ";  ".join(
            f"{g['mapping']} {g['pss_kib'] / 1024:.0f} (x{g['count']})" for g in last.mappings[:6]))


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Idle-domain density: memory, boot latency, idle CPU per domain")
    p.add_argument("--steps", default="8,16,32", help="domain counts to reach, ascending (default 8,16,32)")
    p.add_argument("--memory", type=int, default=128, metavar="MiB", help="memory per domain (default 128)")
    p.add_argument("--settle", type=float, default=10.0, help="idle seconds before measuring (default 10)")
    p.add_argument("--window", type=float, default=10.0, help="measurement window in seconds (default 10)")
    p.add_argument("--parallel", type=int, default=3, help="creates in flight at once (default 3)")
    p.add_argument("--timeout", type=float, default=300.0, help="per create / exec, seconds (default 300)")
    p.add_argument("--min-available-gib", type=float, default=2.0,
                   help="stop when host MemAvailable falls below this (default 2)")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/density-<timestamp>.json)")
    p.add_argument("--share-pages", action="store_true",
                   help="run the daemon with --share-pages (host same-page merging; give it --settle 30)")
    args = p.parse_args(argv)
    try:
        args.steps = [int(x) for x in args.steps.split(",") if x.strip()]
    except ValueError:
        p.error("--steps: comma-separated integers, e.g. 8,16,32")
    steps = args.steps
    if not steps or steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        p.error("--steps must be positive and ascending")
    if args.parallel < 1:
        p.error("--parallel must be at least 1")
    args.created = 0  # domains created so far (named idle001, idle002, ...), whether or not they came up
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    images = harness.default_images(say)
    stamp = harness.timestamp()
    out_path = harness.results_path(args.out, "density", stamp)
    doc: dict[str, Any] = {
        "benchmark": "density", "started": stamp,
        "config": {"steps": args.steps, "memory_mib": args.memory, "settle_s": args.settle,
                   "window_s": args.window, "parallel": args.parallel, "timeout_s": args.timeout,
                   "min_available_gib": args.min_available_gib, "share_pages": args.share_pages,
                   "kernel_release": images.kernel_release,
                   "kernel_elf": str(images.kernel), "initrd": str(images.initrd)},
        "host": host_info(),
    }
    steps: list[Step] = []
    baseline: dict[str, Any] = {}
    names: list[str] = []
    interrupted = False
    error: str | None = None
    with tempfile.TemporaryDirectory(prefix="hd-density-") as tmp:
        workdir = Path(tmp)
        daemon = Daemon(workdir, share_pages=args.share_pages)
        try:
            say(f"starting the daemon on {daemon.socket}")
            daemon.start()
            time.sleep(1.0)
            baseline = {"rollup_kib": smaps_rollup(daemon.pid), "mem_available_kib": mem_available_kib()}
            say(f"baseline: daemon PSS {baseline['rollup_kib']['Pss'] / 1024:.0f} MiB; "
                f"measuring its idle CPU for {args.window:.0f} s")
            baseline["window"] = measure_window(daemon, args.window, 0)
            for target in args.steps:
                step = Step(target)
                steps.append(step)
                run_step(daemon, workdir, step, names, baseline, args)
                if step.ok:
                    say(f"step {target}: ok")
                else:
                    say(f"step {target}: FAILED: {'; '.join(step.failures)}")
                    break
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if daemon.proc is not None and daemon.proc.poll() is not None:
                error += f" (the daemon exited with status {daemon.proc.returncode})"
            say(f"error: {error}")
            if steps:
                steps[-1].failures.append(f"harness error: {error}")
        finally:
            daemon_tail = daemon.log_tail()
            say("stopping the daemon")
            daemon.stop()

    passed = [s for s in steps if s.ok]
    limit = passed[-1].domains if passed else 0
    failed = next((s for s in steps if not s.ok), None)
    if steps and baseline.get("window"):
        print_table(steps, baseline)
    if failed is not None:
        print(f"\nlimit: {limit} domains (step {failed.target} failed: {'; '.join(failed.failures)[:500]})")
        print(f"last daemon log lines:\n{daemon_tail}")
    elif interrupted or error:
        print(f"\n{'interrupted' if interrupted else 'error: ' + str(error)}; {limit} domains reached")
        print(f"last daemon log lines:\n{daemon_tail}")
    else:
        print(f"\nall steps passed: {limit} idle domains in one daemon")
    doc.update(baseline=baseline, steps=[dataclasses.asdict(s) | {"ok": s.ok} for s in steps],
               limit_domains=limit, interrupted=interrupted, error=error,
               failed_step=failed.target if failed else None, daemon_log_tail=daemon_tail.splitlines())
    harness.write_json(out_path, doc, say)
    return 0 if failed is None and not interrupted and error is None else 1


if __name__ == "__main__":
    sys.exit(main())
