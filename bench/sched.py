"""Scheduling benchmarks, the measurements of Xen'03 §4.4 for domain 0's BVT arbiter (docs/scheduler.md).

    .venv/bin/python bench/sched.py [--only share,wakeup,speedup,overhead,isolation] [--seconds 60]
                                    [--rounds 4] [--iso-forks 500] [--iso-cpus 0] [--iso-each]
                                    [--out bench/results/sched-<timestamp>.json]

share     two CPU-bound domains with weights 1:2 on one core (`daemon --sched-cpus 0`, their vCPU threads
          pinned to CPU 0) for --seconds: the core time BVT granted each and the CPU time each process
          used; target within 4% of 1:2.
wakeup    an idle domain's `exec` round trip (console in, shell, console out) while two CPU-bound domains
          run on the same core, with and without warp (warp 200 ms, limit 100 ms, unwarp 50 ms),
          alternating in rounds, at C = 5 ms (the default) and C = 30 ms.
speedup   SMP (issue 9): the same parallel CPU-bound job (two shell loops of --par-loop iterations each,
          run side by side in the guest) in a domain with vcpus=1 and one with vcpus=2, alternating in
          --rounds; the exec wall time of each, the speed-up (target >= 1.7x on a 2-core host), the vcpus=2
          domain process's CPU time per wall second, and how busy the rest of the host was meanwhile
          (/proc/stat: busy CPU time not ours), since on a shared host that decides the result; each run
          first waits (at most --max-wait s) for the host to be below a quarter of a core busy for 2 s.
isolation Xen'03's isolation test: a victim domain's fork+exec workload (the boot bench's true200 phase:
          --iso-forks x /bin/true, timed by the guest's own clock, /proc/uptime) alone, beside four CPU-bound
          domains (the equal-share control) and beside four antisocial domains (a fork storm, a disk hog
          writing its own raw image with fsync, a memory hog re-allocating and touching 48 MiB, a CPU
          spinner), the groups taking turns (the others paused) in each of --rounds rounds; the victim's
          median beside the antisocial ones over beside the control (Xen'03: within 4%) and over alone, its
          steal in the guest's /proc/stat, and how busy the rest of the host was (`--iso-cpus`: the
          arbiter's cores, default all); --iso-each adds each antisocial domain on its own against one
          CPU-bound neighbour.
overhead  the arbiter's cost: its decision time per call, the grant round trip a vCPU waits when a core is
          free (want -> grant, through both processes' channel threads), and a CPU-bound loop in one guest
          under `--sched bvt` against `--sched host` (the gate's round trips every 10 C and at each wake).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

SPIN = "setsid sh -c \"while :; do :; done\" >/dev/null 2>&1 </dev/null &"
LOOP = "i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo done"
PAR = "for w in 1 2; do (i=0; while [ $i -lt {n} ]; do i=$((i+1)); done) & done; wait; echo done"


def say(msg: str) -> None:
    harness.say(msg, "sched")


class Daemon:
    """A daemon of its own on a socket in a temporary directory, driven through the control API."""

    def __init__(self, workdir: Path, *daemon_args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.sock = workdir / "hd.sock"
        self.log = open(workdir / "daemon.log", "w")
        argv = [sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(self.sock), "-v", *daemon_args]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=harness.REPO)
        deadline = time.monotonic() + 60
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start: {(workdir / 'daemon.log').read_text()[-500:]}")
            time.sleep(0.1)

    def call(self, op: str, **args: Any) -> Any:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            reply = json.loads(s.makefile("rb").readline())
        if not reply.get("ok"):
            raise RuntimeError(f"{op}: {reply.get('error')}")
        return reply.get("result")

    def create(self, name: str, memory: int = 96, **extra: Any) -> None:
        self.call("create", config={"name": name, "memory": memory, **extra})
        self.exec(name, "true", 300)

    def exec(self, name: str, command: str, timeout: float = 120) -> tuple[str, float]:
        t0 = time.monotonic()
        r = self.call("exec", dom=name, command=command, timeout=timeout)
        return base64.b64decode(r.get("output", "")).decode(errors="replace"), time.monotonic() - t0

    def usage(self) -> dict[str, tuple[float, float]]:
        """Per domain: (core time granted by BVT, CPU time its process used)."""
        bvt = {r["name"]: r["granted_s"] for r in self.call("sched_bvt")["domains"]}
        cpu = {r["name"]: r["time"] for r in self.call("list")}
        return {n: (bvt[n], cpu[n]) for n in bvt}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def proportional_share(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    d = Daemon(work / "share", "--sched-cpus", "0")
    try:
        d.create("light", weight=100)
        d.create("heavy", weight=200)
        for n in ("light", "heavy"):
            d.exec(n, SPIN)
        time.sleep(3)
        a = d.usage()
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(10.0, args.seconds - (time.monotonic() - t0)))
            b = d.usage()
            samples.append({n: [round(b[n][0] - a[n][0], 3), round(b[n][1] - a[n][1], 2)] for n in b})
        (gl, ul), (gh, uh) = samples[-1]["light"], samples[-1]["heavy"]
        out = {"seconds": args.seconds, "granted_s": {"light": gl, "heavy": gh},
               "cpu_s": {"light": ul, "heavy": uh}, "granted_ratio": gh / gl, "cpu_ratio": uh / ul,
               "granted_error_pct": 100 * abs(gh / gl / 2 - 1), "cpu_error_pct": 100 * abs(uh / ul / 2 - 1),
               "samples_every_10s": samples, "arbiter": {k: v for k, v in d.call("sched_bvt").items()
                                                         if k != "domains"}}
        arb = out["arbiter"]
        say(f"share: {arb['revokes']} revokes, the core back {arb['revoke_us_mean']} µs after each on "
            f"average (kick, end of the engine's slice, done through both processes); "
            f"{arb['forfeits']} forfeited")
        say(f"share: weights 1:2 on one core over {args.seconds:.0f} s: granted {gl:.2f} s : {gh:.2f} s = "
            f"1:{gh / gl:.3f} ({out['granted_error_pct']:.1f}% off 1:2); CPU {ul:.1f} s : {uh:.1f} s = "
            f"1:{uh / ul:.3f} ({out['cpu_error_pct']:.1f}% off)")
        return out
    finally:
        d.close()


def wakeup_latency(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    d = Daemon(work / "wakeup", "--sched-cpus", "0")
    out: dict[str, Any] = {}
    try:
        for n in ("hog1", "hog2", "io"):
            d.create(n)
        for n in ("hog1", "hog2"):
            d.exec(n, SPIN)
        time.sleep(2)
        for c_ms in (5, 30):
            d.call("sched_bvt", ctx_allow_us=c_ms * 1000)
            plain: list[float] = []
            warped: list[float] = []
            for _ in range(args.rounds):
                for warp, into in ((0, plain), (200_000, warped)):
                    d.call("sched_bvt", dom="io", warp_us=warp, warpl_us=100_000, warpu_us=50_000)
                    for _i in range(5):
                        into.append(d.exec("io", "echo x")[1])
                        time.sleep(0.1)
            res = {}
            for label, xs in (("unwarped", plain), ("warped", warped)):
                xs.sort()
                res[label] = {"median_ms": round(1e3 * statistics.median(xs), 1),
                              "p90_ms": round(1e3 * xs[int(0.9 * (len(xs) - 1))], 1), "n": len(xs)}
            out[f"C_{c_ms}ms"] = res
            say(f"wakeup: exec round trip beside two CPU-bound domains, C = {c_ms} ms: median "
                f"{res['unwarped']['median_ms']} ms unwarped, {res['warped']['median_ms']} ms warped "
                f"(p90 {res['unwarped']['p90_ms']} / {res['warped']['p90_ms']})")
        return out
    finally:
        d.close()


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (proc(5): /proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_busy_s() -> float:
    """Busy CPU time of the whole host (proc(5): /proc/stat's cpu line, all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _wait_quiet(max_wait: float, below: float = 0.25) -> float:
    """Wait (at most `max_wait` s) until the host's busy CPU time stays below `below` cores for 2 s, while
    our own domains idle; the last 2-second reading, in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        h0 = _host_busy_s()
        time.sleep(2.0)
        load = (_host_busy_s() - h0) / 2.0
        if load < below or time.monotonic() > deadline:
            return load


def smp_speedup(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    d = Daemon(work / "speedup")
    runs: dict[str, list[dict[str, float]]] = {"vcpus1": [], "vcpus2": []}
    try:
        d.create("one", memory=128, vcpus=1)
        d.create("two", memory=128, vcpus=2)
        nproc = {n: d.exec(n, "nproc")[0].split()[-1] for n in ("one", "two")}
        pids = {r["name"]: r["pid"] for r in d.call("list", long=True) if r["name"] in ("one", "two")}
        for n in ("one", "two"):
            d.exec(n, PAR.format(n=20_000), 300)  # translation warm-up
        for _ in range(args.rounds):  # alternating: the host's other load falls on both alike
            for name, key in (("one", "vcpus1"), ("two", "vcpus2")):
                before = _wait_quiet(args.max_wait) if args.max_wait > 0 else None
                c0, h0 = _proc_cpu_s(pids[name]), _host_busy_s()
                text, took = d.exec(name, PAR.format(n=args.par_loop), timeout=900)
                c1, h1 = _proc_cpu_s(pids[name]), _host_busy_s()
                if "done" in text:
                    runs[key].append({"wall_s": round(took, 3), "cpu_s": round(c1 - c0, 3),
                                      "cpu_per_wall": round((c1 - c0) / took, 3),
                                      "others_cores": round(((h1 - h0) - (c1 - c0)) / took, 3),
                                      "host_cores_before": None if before is None else round(before, 3)})
    finally:
        d.close()
    out: dict[str, Any] = {"nproc_in_guest": nproc, "par_loop": args.par_loop, "runs": runs}
    if runs["vcpus1"] and runs["vcpus2"]:
        t1 = statistics.median(r["wall_s"] for r in runs["vcpus1"])
        t2 = statistics.median(r["wall_s"] for r in runs["vcpus2"])
        others = statistics.median(r["others_cores"] for r in runs["vcpus1"] + runs["vcpus2"])
        c1 = statistics.median(r["cpu_s"] for r in runs["vcpus1"])
        c2 = statistics.median(r["cpu_s"] for r in runs["vcpus2"])
        out.update(median_s={"vcpus1": t1, "vcpus2": t2}, speedup=round(t1 / t2, 3),
                   median_cpu_s={"vcpus1": c1, "vcpus2": c2},
                   cpu_per_wall_vcpus2=statistics.median(r["cpu_per_wall"] for r in runs["vcpus2"]),
                   others_cores_median=others, quiet=others < 0.25)
        say(f"speedup: two parallel loops of {args.par_loop} iterations, median of {args.rounds}: "
            f"{t1:.2f} s with vcpus=1, {t2:.2f} s with vcpus=2 = {t1 / t2:.2f}x (target >= 1.7x); the "
            f"vcpus=2 process used {out['cpu_per_wall_vcpus2']:.2f} cores; the rest of the host used "
            f"{others:.2f} cores meanwhile ({'quiet' if others < 0.25 else 'NOT quiet'}); CPU time of the "
            f"job {c1:.2f} s (vcpus=1) vs {c2:.2f} s (vcpus=2)")
    return out


def arbiter_overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    loops: dict[str, list[float]] = {"bvt": [], "host": []}
    daemons = {sched: Daemon(work / f"overhead-{sched}", "--sched", sched) for sched in ("bvt", "host")}
    try:
        for d in daemons.values():
            d.create("solo")
            d.exec("solo", LOOP.format(n=20_000))  # translation warm-up
        for _ in range(args.rounds):  # alternating: the host's other load falls on both alike
            for sched, d in daemons.items():
                text, took = d.exec("solo", LOOP.format(n=args.loop), timeout=600)  # exec's wall time
                if "done" in text:
                    loops[sched].append(took)
        d = daemons["bvt"]
        for _ in range(40):  # wakes with a core free: each pays one want -> grant round trip
            d.exec("solo", "echo x")
        r = d.call("sched_bvt")
        row = {x["name"]: x for x in r["domains"]}["solo"]
        out["decide_us_mean"] = r["decide_us_mean"]
        out["decisions"] = r["decisions"]
        out["grants"] = row["grants"]
        out["wait_us_per_grant"] = round(1e6 * (row["wait_s"] or 0) / max(1, row["grants"] or 1), 1)
    finally:
        for d in daemons.values():
            d.close()
    out["loop_s"] = {k: [round(x, 3) for x in v] for k, v in loops.items()}
    if loops["bvt"] and loops["host"]:
        out["loop_ratio_bvt_over_host"] = statistics.median(loops["bvt"]) / statistics.median(loops["host"])
    say(f"overhead: decide {out.get('decide_us_mean')} µs per decision; a grant with a core free waits "
        f"{out.get('wait_us_per_grant')} µs (want -> grant, mean over {out.get('grants')} grants); "
        f"a CPU loop (exec wall time, median of {args.rounds}) takes "
        f"{out.get('loop_ratio_bvt_over_host', float('nan')):.3f}x its time under --sched host")
    return out


ANTISOCIAL = {  # name: (xl.cfg additions, the storm it starts in the background)
    "forker": ({}, "setsid sh -c 'while :; do /bin/true & /bin/true & wait; done' "
                   ">/dev/null 2>&1 </dev/null &"),
    "disk": ({"disks": [{"format": "raw", "vdev": "xvdb", "access": "rw", "target": "{img}"}]},
             "setsid sh -c 'while :; do dd if=/dev/zero of=/dev/xvdb bs=1M count=16 conv=fsync; done' "
             ">/dev/null 2>&1 </dev/null &"),
    "memhog": ({}, "setsid sh -c 'while :; do dd if=/dev/zero of=/dev/null bs=48M count=4; done' "
                   ">/dev/null 2>&1 </dev/null &"),
    "spinner": ({}, SPIN),
}
FORKS = ("a=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done; "
         "b=$(cut -d' ' -f1 /proc/uptime); echo \"forks $a $b\"")


def _victim_run(d: Daemon, n: int) -> float | None:
    """One fork+exec run in the victim: its length by the guest's clock (s)."""
    text, _ = d.exec("victim", FORKS.format(n=n), timeout=900)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "forks":
            return float(parts[2]) - float(parts[1])
    return None


def _guest_steal(d: Daemon, name: str) -> tuple[int, int]:
    """(steal, all) ticks of the guest's /proc/stat cpu line."""
    text, _ = d.exec(name, "head -1 /proc/stat")
    line = next(ln for ln in text.splitlines() if ln.startswith("cpu "))
    v = [int(x) for x in line.split()[1:]]
    return v[7], sum(v)


def isolation(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The victim alone, beside four well-behaved CPU-bound domains (the equal-share control: what Xen'03
    compared against, four domains with equal allocations) and beside the four antisocial ones; the
    groups take turns (the others paused) in each of --rounds rounds, so that the host's other load falls
    on all three alike."""
    extra = ("--sched-cpus", args.iso_cpus) if args.iso_cpus else ()
    d = Daemon(work / "isolation", *extra)
    groups = {"solo": [], "control": [f"calm{i}" for i in range(1, 5)], "antisocial": list(ANTISOCIAL)}
    if args.iso_each:  # each antisocial domain on its own against one CPU-bound neighbour
        groups.update({"one_calm": ["calm1"], **{f"only_{n}": [n] for n in ANTISOCIAL if n != "spinner"}})
    runs: dict[str, list[float]] = {g: [] for g in groups}
    steal = {g: [0, 0] for g in groups}  # the victim's steal and all ticks, summed over its runs
    others = {g: [0.0, 0.0] for g in groups}  # host CPU not the victim's, wall time
    try:
        d.create("victim")
        _victim_run(d, max(10, args.iso_forks // 10))  # translation warm-up
        pid = next(r["pid"] for r in d.call("list", long=True) if r["name"] == "victim")
        for name in groups["control"]:
            d.create(name)
            d.exec(name, SPIN)
        for name, (cfg, storm) in ANTISOCIAL.items():
            conf = dict(cfg)
            if "disks" in conf:
                img = work / "isolation" / "disk-hog.img"
                with open(img, "wb") as f:
                    f.truncate(64 << 20)
                conf["disks"] = [{**x, "target": str(img)} for x in conf["disks"]]
            d.create(name, **conf)
            d.exec(name, storm)
        for name in groups["control"] + groups["antisocial"]:
            d.call("pause", dom=name)
        for _ in range(args.rounds):
            for g, members in groups.items():
                for name in members:
                    d.call("unpause", dom=name)
                time.sleep(2 if members else 0)
                steal0, ticks0 = _guest_steal(d, "victim")
                host0, own0, w0 = _host_busy_s(), _proc_cpu_s(pid), time.monotonic()
                t = _victim_run(d, args.iso_forks)
                wall = time.monotonic() - w0
                host1, own1 = _host_busy_s(), _proc_cpu_s(pid)
                steal1, ticks1 = _guest_steal(d, "victim")
                for name in members:
                    d.call("pause", dom=name)
                if t is not None:
                    runs[g].append(round(t, 3))
                steal[g][0] += steal1 - steal0
                steal[g][1] += ticks1 - ticks0
                others[g][0] += (host1 - host0) - (own1 - own0)
                others[g][1] += wall
                say(f"isolation: {g}: fork+exec x{args.iso_forks} {t if t is None else round(t, 2)} s "
                    "(guest clock)")
    finally:
        d.close()
    out: dict[str, Any] = {"forks": args.iso_forks, "cpus": args.iso_cpus or "all", "runs_s": runs,
                           "victim_steal_share": {g: round(v[0] / max(1, v[1]), 4) for g, v in steal.items()},
                           "others_cores": {g: round(v[0] / max(1e-9, v[1]), 3) for g, v in others.items()}}
    med = {g: statistics.median(v) for g, v in runs.items() if v}
    out["median_s"] = med
    for g in groups:
        say(f"isolation: {g}: median {med.get(g, float('nan')):.2f} s; the victim's steal "
            f"{100 * out['victim_steal_share'][g]:.1f}% of its ticks; the rest of the host used "
            f"{out['others_cores'][g]:.2f} cores")
    if all(g in med for g in ("solo", "control", "antisocial")):
        out["antisocial_over_control"] = round(med["antisocial"] / med["control"], 3)
        out["antisocial_over_solo"] = round(med["antisocial"] / med["solo"], 3)
        out["control_over_solo"] = round(med["control"] / med["solo"], 3)
        say(f"isolation: the victim's fork+exec x{args.iso_forks} beside a fork storm, a disk hog, a memory "
            f"hog and a CPU spinner takes {out['antisocial_over_control']:.3f}x its time beside four "
            f"CPU-bound domains (Xen'03: within 4%), {out['antisocial_over_solo']:.3f}x its time alone")
    return out


SECTIONS = {"share": proportional_share, "wakeup": wakeup_latency, "speedup": smp_speedup,
            "overhead": arbiter_overhead,
            "isolation": isolation}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the share measurement")
    ap.add_argument("--rounds", type=int, default=4,
                    help="alternating rounds (wakeup), loop runs (overhead)")
    ap.add_argument("--loop", type=int, default=300_000, help="iterations of the overhead's shell loop")
    ap.add_argument("--par-loop", type=int, default=300_000,
                    help="iterations of each of the speed-up's two parallel shell loops")
    ap.add_argument("--max-wait", type=float, default=120.0,
                    help="speedup: before each run, wait at most this long for a quiet host (0: never)")
    ap.add_argument("--iso-forks", type=int, default=500, help="isolation: /bin/true runs per victim run")
    ap.add_argument("--iso-each", action="store_true",
                    help="isolation: also each antisocial domain alone against one CPU-bound neighbour")
    ap.add_argument("--iso-cpus", default="", help="isolation: the arbiter's cores (default: all)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s): {', '.join(bad)} (known: {', '.join(SECTIONS)})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the daemons (finally)
    harness.default_images(say)
    stamp = harness.timestamp()
    doc: dict[str, Any] = {"benchmark": "sched", "time": stamp, "commit": harness.hyperdisco_commit(),
                           "cpu": harness.cpu_model(), "nproc": os.cpu_count(),
                           "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="hd-sched-") as tmp:
        for s in wanted:
            doc[s] = SECTIONS[s](args, Path(tmp))
    doc["loadavg_after"] = os.getloadavg()
    harness.write_json(harness.results_path(args.out, "sched", stamp), doc, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
