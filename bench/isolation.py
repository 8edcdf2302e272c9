#!/usr/bin/env python3
"""Performance isolation (Xen'03 §4.4): does a domain that storms one path of the hypervisor slow down
another domain that minds its own business?

Starts its own daemon on a private socket, creates a *victim* domain and times two workloads inside it
with the guest's own clock (CLOCK_MONOTONIC from /proc/timer_list), through ``hyperdisco exec``:

* ``cpu``:  a busybox sh arithmetic loop of a fixed iteration count (user-mode CPU only)
* ``fork``: N x ``/bin/true`` (fork, exec, exit, wait: system calls, page faults, process set-up)

first alone, then beside neighbour domains that each storm one path, one storm kind at a time:

* ``busy``:      the control: ``while :; do :; done`` (computes, uses no hypervisor path)
* ``hypercall``: ``read x </sys/hypervisor/version/major`` in a loop, one ``xen_version`` hypercall each
* ``xenstore``:  XS_WRITE + XS_READ of ``data/x`` through ``/dev/xen/xenbus``, reply awaited each time
* ``console``:   ``yes | head -c 64K >/dev/hvc0`` in a loop
* ``disk``:      ``dd if=/dev/zero of=/dev/xvdb bs=1M count=16 conv=fsync`` in a loop (a raw image each)

and alone again at the end (the whole list ``--rounds`` times). Beside a storm every run is paired with
one beside the same neighbours paused (ABBA order), because the victim's fork+exec time drifts by more
than the 5% to be resolved. Per scenario it reports the victim's median time per workload, its ratio to
the median of all solo runs (target: within 5%) and the median paired ratio, the neighbours' achieved
storm rate (counted in the guest) and hypercall rate (the daemon's trap counters), the victim's
run-queue wait, and who used the host's CPUs meanwhile. By default the victim's domain process is pinned
to CPU 0 (at nice -20) and the daemon, the neighbours and this harness to the other CPUs (``--pin none``
lets them float). See bench/README.md.

    python bench/isolation.py [--repeat 6] [--rounds 1] [--neighbours 1] [--scenarios solo,busy,...]
                              [--cpu-iterations 100000] [--fork-count 1000] [--pin split|none]
                              [--out bench/results/isolation-<timestamp>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import harness
from density import CLK_TCK, Daemon, host_info, proc_cpu_ticks

STORMS = ("hypercall", "xenstore", "console", "disk")
CONTROL = "busy"  # a neighbour that only computes: what any busy neighbour costs, whatever its path
SCENARIO_KINDS = ("solo", CONTROL, *STORMS, "all")
DEFAULT_SCENARIOS = "solo,busy,hypercall,xenstore,console,disk,solo"
WORKLOADS = ("cpu", "fork")
WORKLOAD_LABELS = {"cpu": "cpu loop", "fork": "fork+exec"}
TARGET = 1.05  # within 5% of solo
STORM_LOG = "/tmp/storm.log"
STORM_PID = "/tmp/storm.pid"

# The guest's CLOCK_MONOTONIC in ns, without forking: /proc/timer_list's "now at N nsecs" line (root only),
# else /proc/uptime (10 ms).  Leaves it in $T.
GUEST_CLOCK = ('hdns() { T=; while read -r l; do case $l in "now at "*) l=${l#now at }; T=${l% nsecs}; '
               'break;; esac; done </proc/timer_list; [ -n "$T" ] || { read u _ </proc/uptime; '
               'T=${u%.*}${u#*.}0000000; }; }')
RESULT_RE = re.compile(r"ISO-RESULT (\d+) (\d+)")
STARTED_RE = re.compile(r"STORM-STARTED (\d+) ([0-9.]+)")
LOGLINE_RE = re.compile(r"^(\d+) ([0-9.]+)$")


def say(msg: str) -> None:
    harness.say(msg, "isolation")


# -- the storms ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Storm:
    kind: str
    unit: str  # what the guest-side rate is in
    per_op: float  # units per loop iteration
    every: int  # iterations between checkpoints in the storm's log
    loop: str  # one iteration (a shell command list, no single quotes)
    prepare: str = ""  # runs once before the loop (in the storm's own shell)
    wait_for: str = ""  # a block device the launcher waits for


def _xs_msg(msg_type: int, payload: bytes) -> str:
    """A xsd_sockmsg (type, req_id 0, tx_id 0, len) + payload as a busybox printf format of octal escapes."""
    raw = msg_type.to_bytes(4, "little") + bytes(8) + len(payload).to_bytes(4, "little") + payload
    return "".join(chr(b) if chr(b).isalnum() or chr(b) in "/_" else f"\\{b:03o}" for b in raw)


XS_WRITE, XS_READ = 11, 2
XS_KEY, XS_VALUE = b"data/x", b"y"  # relative to the domain's home path /local/domain/N
# Replies are fixed-size (16-byte header + "OK\0" / the value); busybox `read -n` counts the NULs it skips.
_XS_WRITE_MSG = _xs_msg(XS_WRITE, XS_KEY + b"\0" + XS_VALUE)
_XS_READ_MSG = _xs_msg(XS_READ, XS_KEY + b"\0")
XS_LOOP = (f'printf "{_XS_WRITE_MSG}" >&3; read -r -n 19 -u 3 r; '
           f'printf "{_XS_READ_MSG}" >&3; read -r -n {16 + len(XS_VALUE)} -u 3 r')
CONSOLE_CHUNK = 65536


def storms(disk_chunk_mib: int) -> dict[str, Storm]:
    return {
        "busy": Storm("busy", "loops/s", 1, 5000, ":"),
        "hypercall": Storm("hypercall", "hypercalls/s", 1, 1000, "read x </sys/hypervisor/version/major"),
        "xenstore": Storm("xenstore", "requests/s", 2, 50, XS_LOOP, prepare="exec 3<>/dev/xen/xenbus"),
        "console": Storm("console", "KiB/s", CONSOLE_CHUNK / 1024, 1,
                         f'yes "hyperdisco isolation console storm 0123456789 abcdefghijklmnopqrstuvwxyz" '
                         f"| head -c {CONSOLE_CHUNK} >/dev/hvc0"),
        "disk": Storm("disk", "MiB/s", disk_chunk_mib, 1,
                      f"dd if=/dev/zero of=/dev/xvdb bs=1M count={disk_chunk_mib} conv=fsync 2>/dev/null",
                      wait_for="/dev/xvdb"),
    }


def storm_start_command(s: Storm) -> str:
    """Starts the storm in its own session (so one kill reaches all its processes), logging "ITER UPTIME"
    every ``s.every`` iterations; prints STORM-STARTED PID UPTIME."""
    body = (f"echo $$ >{STORM_PID}; {s.prepare + '; ' if s.prepare else ''}i=0; while :; do {s.loop}; "
            f"i=$((i+1)); if [ $((i % {s.every})) -eq 0 ]; then read u _ </proc/uptime; "
            f'echo "$i $u" >>{STORM_LOG}; fi; done')
    wait = (f"n=0; while [ ! -b {s.wait_for} ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done; "
            f"[ -b {s.wait_for} ] || {{ echo no {s.wait_for}; exit 1; }}; ") if s.wait_for else ""
    return (f"{wait}rm -f {STORM_LOG} {STORM_PID}; setsid sh -c '{body}' </dev/null >/dev/null 2>&1 & "
            f"n=0; while [ ! -s {STORM_PID} ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done; "
            f"read u _ </proc/uptime; echo STORM-STARTED $(cat {STORM_PID}) $u")


STORM_STOP = (f"p=$(cat {STORM_PID}); kill -TERM -$p 2>/dev/null || kill -TERM $p; sleep 0.5; "
              f"echo STORM-LOG-BEGIN; cat {STORM_LOG}; echo STORM-LOG-END")


def workload_command(kind: str, n: int) -> str:
    loop = {"cpu": f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); done",
            "fork": f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"}[kind]
    return f"{GUEST_CLOCK}; hdns; a=$T; {loop}; hdns; echo ISO-RESULT $a $T"


# -- host-side probes ----------------------------------------------------------------------------------

PF_KTHREAD = 0x00200000


@dataclasses.dataclass
class Proc:
    ppid: int
    comm: str
    ticks: int  # utime + stime
    kthread: bool
    start: int = 0  # start time (clock ticks after boot): tells a reused PID apart


def proc_table() -> dict[int, Proc]:
    """Every process on the host (/proc/PID/stat)."""
    out: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        close = text.rindex(")")
        f = text[close + 2:].split()
        out[int(entry)] = Proc(int(f[1]), text[text.index("(") + 1:close], int(f[11]) + int(f[12]),
                               bool(int(f[6]) & PF_KTHREAD), int(f[19]))
    return out


def cpu_jiffies() -> dict[str, dict[str, int]]:
    """Per CPU ("cpu0", ...): busy (user+nice+system+irq+softirq), irq (irq+softirq), steal (time the
    machine under this VM ran something else) and total jiffies, from /proc/stat."""
    out: dict[str, dict[str, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            f = [int(x) for x in vals[:8]] + [0] * max(0, 8 - len(vals))
            user, nice, system, idle, iowait, irq, softirq, steal = f[:8]
            out[name] = {"busy": user + nice + system + irq + softirq, "irq": irq + softirq, "steal": steal,
                         "total": sum(f[:8])}
    return out


@dataclasses.dataclass
class Snapshot:
    """What the host's CPUs and its processes had used at one moment."""

    t: float
    cpus: dict[str, dict[str, int]]
    procs: dict[int, Proc]  # the whole process table, or only the pids asked for
    own_s: float  # this harness and its reaped children (the CLI verbs), CPU seconds


def snapshot(pids: list[int | None] | None = None) -> Snapshot:
    """``pids``: only these processes (cheap, per run); None: the whole table (per scenario window)."""
    if pids is None:
        procs = proc_table()
    else:
        procs = {}
        for pid in pids:
            n = ticks(pid)
            if pid is not None and n is not None:
                procs[pid] = Proc(0, "", n, False)
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return Snapshot(time.monotonic(), cpu_jiffies(), procs, own)


def _descendants(procs: dict[int, Proc], root: int) -> set[int]:
    out: set[int] = set()
    for pid in procs:
        p, seen = pid, 0
        while p > 1 and seen < 64:
            if p == root:
                out.add(pid)
                break
            parent = procs.get(p)
            if parent is None:
                break
            p, seen = parent.ppid, seen + 1
    out.discard(root)
    return out


def usage(a: Snapshot, b: Snapshot, roles: dict[str, int | None], victim_cpu: int | None) -> dict[str, Any]:
    """CPU use between two snapshots in % of one host CPU: per role (victim, daemon, a neighbour), per host
    CPU (busy and steal), and the *foreign* load: busy host CPU time that no process of this benchmark
    used -- on the victim's own CPU when it is pinned (only the victim should run there), and on the whole
    host, split (with whole process tables) into kernel threads + interrupts, other processes, and time of
    processes that came and went unseen."""
    dt = max(1e-6, b.t - a.t)

    def delta(pid: int) -> int:
        p1 = b.procs.get(pid)
        if p1 is None:
            return 0
        p0 = a.procs.get(pid)
        return p1.ticks - (p0.ticks if p0 is not None and p0.start == p1.start else 0)

    def pct(jiffies: float) -> float:
        return 100.0 * jiffies / CLK_TCK / dt

    role_pct = {role: pct(delta(pid)) for role, pid in roles.items() if pid is not None and pid in b.procs}
    cpus = {c: {"busy_pct": pct(b.cpus[c]["busy"] - a.cpus[c]["busy"]),
                "steal_pct": pct(b.cpus[c]["steal"] - a.cpus[c]["steal"])} for c in b.cpus if c in a.cpus}
    host_busy = sum(b.cpus[c]["busy"] - a.cpus[c]["busy"] for c in cpus)
    out: dict[str, Any] = {"seconds": dt, "role_cpu_pct": role_pct, "cpus": cpus,
                           "steal_pct": sum(v["steal_pct"] for v in cpus.values())}
    if victim_cpu is not None and "victim" in role_pct and f"cpu{victim_cpu}" in cpus:
        out["victim_cpu_foreign_pct"] = cpus[f"cpu{victim_cpu}"]["busy_pct"] - role_pct["victim"]
    own = (b.own_s - a.own_s) * CLK_TCK
    if len(b.procs) > len(roles) + 1:  # whole tables: account for everything
        ours = _descendants(b.procs, os.getpid()) | _descendants(a.procs, os.getpid())
        ours_j = sum(delta(pid) for pid in ours) + own
        kernel_j = sum(delta(pid) for pid, p in b.procs.items() if p.kthread) + sum(
            b.cpus[c]["irq"] - a.cpus[c]["irq"] for c in cpus)
        others = {pid: delta(pid) for pid, p in b.procs.items()
                  if not p.kthread and pid not in ours and pid != os.getpid()}
        others_j = sum(others.values())
        out["host_foreign_pct"] = pct(host_busy - ours_j)
        out["foreign_kernel_pct"] = pct(kernel_j)
        out["foreign_processes_pct"] = pct(others_j)
        out["foreign_unseen_pct"] = pct(host_busy - ours_j - kernel_j - others_j)
        out["foreign_top"] = [f"{b.procs[pid].comm}[{pid}] {pct(j):.0f}%"
                              for pid, j in sorted(others.items(), key=lambda kv: -kv[1])[:3] if j > 0]
    else:
        ours_j = sum(delta(pid) for pid in b.procs) + own
        out["host_foreign_pct"] = pct(host_busy - ours_j)
    return out


def runqueue_wait_ns(pid: int | None) -> dict[int, int]:
    """Per thread of ``pid``: ns it spent runnable but waiting for a CPU (/proc/PID/task/TID/schedstat)."""
    out: dict[int, int] = {}
    if pid is None:
        return out
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out[int(task.name)] = int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return out


def host_tuning() -> dict[str, str | None]:
    """Host settings that change how CPU time is shared or memory behaves under the domains."""
    out: dict[str, str | None] = {}
    for key, path in (("sched_autogroup_enabled", "/proc/sys/kernel/sched_autogroup_enabled"),
                      ("ksm_run", "/sys/kernel/mm/ksm/run"),
                      ("transparent_hugepage", "/sys/kernel/mm/transparent_hugepage/enabled"),
                      ("numa_balancing", "/proc/sys/kernel/numa_balancing")):
        try:
            out[key] = Path(path).read_text().strip()
        except OSError:
            out[key] = None
    return out


def ticks(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return proc_cpu_ticks(pid)
    except (OSError, ValueError, IndexError):
        return None


def pin(pid: int, cpus: set[int], nice: int | None = None) -> list[int]:
    """``taskset -a -p`` (and ``renice``): every thread of ``pid`` onto ``cpus`` (at ``nice``); returns the
    thread IDs done. With the kernel's autogroups (sched_autogroup_enabled) a thread's nice only counts
    inside its session's group, so the group (the domain process has a session of its own) gets ``nice``
    too."""
    if nice is not None:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        except OSError:
            pass  # no autogroups: the threads' nice is what counts
    done = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
            if nice is not None:
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
            done.append(int(task.name))
        except (ProcessLookupError, FileNotFoundError):
            pass
    return done


def nice_of(pid: int | None) -> list[int | str]:
    """The distinct nice values of the threads of ``pid``, and its autogroup ("/autogroup-N nice M")."""
    out: list[int | str] = []
    if pid is None:
        return out
    try:
        out.append(Path(f"/proc/{pid}/autogroup").read_text().strip())
    except OSError:
        pass
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            v = os.getpriority(os.PRIO_PROCESS, int(task.name))
            if v not in out:
                out.append(v)
    except OSError:
        pass
    return out


def affinity(pid: int | None) -> str | None:
    """The Cpus_allowed_list of every thread of ``pid``, collapsed ("0" or "0 / 1" if they differ)."""
    if pid is None:
        return None
    seen: list[str] = []
    try:
        for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    v = line.split(":", 1)[1].strip()
                    if v not in seen:
                        seen.append(v)
    except OSError:
        return None
    return " / ".join(seen)


# -- records -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VictimRun(harness.Run):
    """One timed workload in the victim (``kind`` is the workload); ``beside`` says what the neighbours
    were doing: "none" (solo), "storm" or "paused"."""

    beside: str = "none"


@dataclasses.dataclass
class Neighbour:
    name: str
    kind: str
    domid: int | None = None
    pid: int | None = None
    ok: bool = False
    error: str | None = None
    storm_pid: int | None = None
    guest_offset_s: float | None = None  # guest uptime - harness monotonic, from the start exec
    paused: bool = False
    log: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (iterations, guest uptime)
    unit: str = ""
    # while the victim ran beside the running storm (not during the runs beside it paused):
    storming_s: float = 0.0  # host time
    rate: float | None = None  # storm units/s, counted in the guest (its log's checkpoints in that time)
    rate_source: str | None = None  # "storming runs", or "whole storm" (too few checkpoints in them)
    rate_whole: float | None = None  # from its first to its last checkpoint, pauses included
    traps_delta: dict[str, int] = dataclasses.field(default_factory=dict)  # the daemon's trap counters
    hypercalls_per_s: float | None = None
    cpu_ticks: int = 0
    cpu_pct: float | None = None  # its domain process, % of one host CPU
    paused_cpu_pct: float | None = None  # the same during the victim's runs beside it paused (~0)
    paused_ticks: int = 0
    paused_s: float = 0.0
    affinity: str | None = None
    stop_output_tail: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Scenario:
    """One scenario in one round."""

    name: str
    kind: str  # solo or a storm kind or "all"
    round: int = 1
    neighbours: list[Neighbour] = dataclasses.field(default_factory=list)
    runs: list[VictimRun] = dataclasses.field(default_factory=list)
    quiet_wait_s: float | None = None  # waited for foreign load to go away before the scenario
    quiet_foreign_pct: float | None = None  # the foreign load when it started
    window: dict[str, Any] = dataclasses.field(default_factory=dict)  # usage() over the victim's runs
    victim_traps_delta: dict[str, int] = dataclasses.field(default_factory=dict)
    victim_affinity: str | None = None
    victim_nice: list[int | str] = dataclasses.field(default_factory=list)
    daemon_affinity: str | None = None
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# -- talking to the daemon -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.daemon = Daemon(workdir)
        self.storms = storms(args.disk_chunk_mib)
        self.victim = "victim"
        self.victim_pid: int | None = None
        self.victim_cpus: set[int] = set()
        self.other_cpus: set[int] = set()
        self.created: list[str] = []  # domains that may still exist

    # the control socket directly, for what the verbs do not print (list -l's per-kind trap counters)
    def rows(self) -> dict[str, dict[str, Any]]:
        from hyperdisco.toolstack.protocol import Client

        c = Client(str(self.daemon.socket))
        try:
            return {r["name"]: r for r in c.call("list", long=True) if r["name"] != "Domain-0"}
        finally:
            c.close()

    def exec(self, dom: str, command: str, timeout: float) -> tuple[int, str, str, float]:
        t0 = time.monotonic()
        res = self.daemon.verb("exec", dom, command, "--timeout", str(timeout), timeout=timeout + 30)
        return res.returncode, res.stdout, res.stderr, time.monotonic() - t0

    def create(self, name: str, extra: str = "") -> tuple[int | None, int | None]:
        """Create a domain and wait for its shell; (domid, pid)."""
        cfg = self.workdir / f"{name}.cfg"
        cfg.write_text(f'name = "{name}"\nmemory = {self.args.memory}\n{extra}')
        self.created.append(name)
        res = self.daemon.verb("create", str(cfg), timeout=self.args.timeout)
        if res.returncode != 0:
            raise RuntimeError(f"create {name}: status {res.returncode}: {res.stderr.strip()[-300:]}")
        status, out, err, _ = self.exec(name, "true", self.args.timeout)
        if status != 0:
            raise RuntimeError(f"exec {name} true: status {status}: {(err or out).strip()[-300:]}")
        row = self.rows().get(name, {})
        return row.get("domid"), row.get("pid")

    def destroy(self, name: str) -> None:
        res = self.daemon.verb("destroy", name, timeout=60)
        if res.returncode != 0 and "no domain" not in res.stderr:
            say(f"  destroy {name}: status {res.returncode}: {res.stderr.strip()[-200:]}")
        if name in self.created:
            self.created.remove(name)

    def cleanup(self) -> None:
        for name in list(self.created):
            if self.daemon.alive():
                self.destroy(name)

    # -- set-up -----------------------------------------------------------------------------------------
    def start(self) -> None:
        ncpu = os.cpu_count() or 1
        if self.args.pin == "split":
            if ncpu < 2:
                say("only one CPU: --pin split is impossible, running unpinned")
                self.args.pin = "none"
            else:
                self.victim_cpus = {self.args.victim_cpu}
                self.other_cpus = set(range(ncpu)) - self.victim_cpus
                # this harness, the CLI verbs it runs, the daemon and every domain process the daemon
                # starts inherit this; only the victim's process is moved onto its own CPU afterwards
                os.sched_setaffinity(0, self.other_cpus)
        say(f"starting the daemon on {self.daemon.socket}")
        self.daemon.start()
        say(f"creating the victim ({self.args.memory} MiB)")
        _, self.victim_pid = self.create(self.victim)
        self.repin_victim()
        say(f"victim pid {self.victim_pid}, CPUs {affinity(self.victim_pid)}, nice "
            f"{'/'.join(map(str, nice_of(self.victim_pid)))}; daemon CPUs {affinity(self.daemon.pid)}; "
            f"warming up")
        for kind in WORKLOADS:  # first runs pay for TCG translation and page-cache misses
            self.run_workload(kind, 0)

    def pids(self, sc: Scenario | None = None) -> dict[str, int | None]:
        out = {"victim": self.victim_pid, "daemon": self.daemon.pid}
        for nb in sc.neighbours if sc is not None else []:
            out[nb.name] = nb.pid
        return out

    def pinned_cpu(self) -> int | None:
        return self.args.victim_cpu if self.args.pin == "split" else None

    def wait_quiet(self, sc: Scenario) -> None:
        """Before a scenario: wait (up to --max-wait s) until the load that is not this benchmark's is
        below --quiet-pct of one CPU over 2 s; this host is shared."""
        a = self.args
        t_start = time.monotonic()
        said = False
        while True:
            s0 = snapshot()
            time.sleep(2.0)
            foreign = usage(s0, snapshot(), self.pids(), self.pinned_cpu())["host_foreign_pct"]
            waited = time.monotonic() - t_start
            if foreign < a.quiet_pct or waited >= a.max_wait:
                break
            if not said:
                say(f"  other load on the host: {foreign:.0f}% of a CPU; waiting up to {a.max_wait:.0f} s "
                    f"for it to drop below {a.quiet_pct:.0f}%")
                said = True
        sc.quiet_wait_s, sc.quiet_foreign_pct = waited, foreign
        if said:
            say(f"  {'quiet' if foreign < a.quiet_pct else 'still busy'} after {waited:.0f} s "
                f"({foreign:.0f}% of a CPU)")

    def repin_victim(self) -> None:
        if self.args.pin == "split" and self.victim_pid is not None:
            pin(self.victim_pid, self.victim_cpus, self.args.victim_nice or None)

    # -- the victim ------------------------------------------------------------------------------------
    def run_workload(self, kind: str, index: int, beside: str = "none") -> VictimRun:
        n = self.args.cpu_iterations if kind == "cpu" else self.args.fork_count
        command = workload_command(kind, n)
        run = VictimRun(kind=kind, index=index, argv=["exec", self.victim, command], beside=beside)
        s0, w0 = snapshot([self.victim_pid]), runqueue_wait_ns(self.victim_pid)
        status, out, err, wall = self.exec(self.victim, command, self.args.timeout)
        use = usage(s0, snapshot([self.victim_pid]), {"victim": self.victim_pid}, self.pinned_cpu())
        w1 = runqueue_wait_ns(self.victim_pid)
        if w0 and w1:  # the victim's threads waited this long for a CPU while runnable
            run.metrics["victim_wait_ms"] = sum(w1[t] - w0[t] for t in w1 if t in w0) / 1e6
        run.exit_status = status
        run.metrics["host_wall_s"] = wall
        run.metrics["victim_cpu_pct"] = use["role_cpu_pct"].get("victim", 0.0)
        run.metrics["steal_pct"] = use["steal_pct"]
        if "victim_cpu_foreign_pct" in use:
            run.metrics["victim_cpu_foreign_pct"] = use["victim_cpu_foreign_pct"]
        m = RESULT_RE.search(out)
        if status != 0 or m is None:
            run.failure = f"exec status {status}" + ("" if m else ", no ISO-RESULT line")
            run.stdout_tail = out.splitlines()[-harness.TAIL_LINES:]
            run.stderr_tail = err.splitlines()[-harness.TAIL_LINES:]
            return run
        t0, t1 = int(m.group(1)), int(m.group(2))
        run.marks = {"guest_start_s": t0 / 1e9, "guest_end_s": t1 / 1e9}
        run.metrics["guest_s"] = (t1 - t0) / 1e9
        if "victim_wait_ms" in run.metrics:
            run.metrics["victim_wait_pct"] = run.metrics["victim_wait_ms"] / 10.0 / run.metrics["guest_s"]
        run.ok = True
        return run

    # -- neighbours ------------------------------------------------------------------------------------
    def start_neighbour(self, nb: Neighbour) -> None:
        s = self.storms[nb.kind]
        nb.unit = s.unit
        extra = ""
        if s.kind == "disk":
            img = self.workdir / f"{nb.name}.img"
            with open(img, "wb") as f:
                f.truncate(self.args.disk_image_mib << 20)
            extra = f"disk = [ 'format=raw, vdev=xvdb, access=rw, target={img}' ]\n"
        nb.domid, nb.pid = self.create(nb.name, extra)
        status, out, err, _ = self.exec(nb.name, storm_start_command(s), 60)
        t_ret = time.monotonic()
        m = STARTED_RE.search(out)
        if status != 0 or m is None:
            raise RuntimeError(f"{nb.name}: the {s.kind} storm did not start (status {status}): "
                               f"{(err or out).strip()[-300:]}")
        nb.storm_pid = int(m.group(1))
        nb.guest_offset_s = float(m.group(2)) - t_ret
        nb.affinity = affinity(nb.pid)

    def set_paused(self, nbs: list[Neighbour], paused: bool) -> None:
        for nb in nbs:
            if nb.paused != paused:
                res = self.daemon.verb("pause" if paused else "unpause", nb.name, timeout=60)
                if res.returncode != 0:
                    raise RuntimeError(f"{'pause' if paused else 'unpause'} {nb.name}: status "
                                       f"{res.returncode}: {res.stderr.strip()[-200:]}")
                nb.paused = paused

    def stop_neighbour(self, nb: Neighbour, storming: list[tuple[float, float]]) -> None:
        """Stop its storm and read the storm's log; the rate is taken over the ``storming`` intervals
        (harness monotonic time, mapped onto the guest's uptime)."""
        s = self.storms[nb.kind]
        status, out, err, _ = self.exec(nb.name, STORM_STOP, 60)
        lines = [ln.strip() for ln in out.splitlines()]
        try:
            body = lines[lines.index("STORM-LOG-BEGIN") + 1:lines.index("STORM-LOG-END")]
        except ValueError:
            body = []
            nb.stop_output_tail = (out + err).splitlines()[-harness.TAIL_LINES:]
        for line in body:
            m = LOGLINE_RE.match(line)
            if m:
                nb.log.append((int(m.group(1)), float(m.group(2))))
        if len(nb.log) >= 2:
            (i0, u0), (i1, u1) = nb.log[0], nb.log[-1]
            nb.rate_whole = (i1 - i0) * s.per_op / (u1 - u0) if u1 > u0 else None
            nb.rate, nb.rate_source = nb.rate_whole, "whole storm"
            if nb.guest_offset_s is not None:
                off = nb.guest_offset_s
                ops, dur = 0, 0.0
                for (i0, u0), (i1, u1) in zip(nb.log, nb.log[1:], strict=False):
                    if any(t0 + off <= u0 and u1 <= t1 + off for t0, t1 in storming):
                        ops, dur = ops + i1 - i0, dur + u1 - u0
                if ops and dur > 0:
                    nb.rate, nb.rate_source = ops * s.per_op / dur, "storming runs"
        if nb.rate is None:
            nb.error = f"no storm rate (stop exec status {status}, {len(nb.log)} log lines)"
        else:
            nb.ok = True

    # -- one scenario ----------------------------------------------------------------------------------
    def run_scenario(self, sc: Scenario, tag: str) -> None:
        a = self.args
        kinds = list(STORMS) if sc.kind == "all" else [] if sc.kind == "solo" else [sc.kind]
        sc.neighbours = [Neighbour(f"{tag}-{k}{i}", k) for k in kinds for i in range(1, a.neighbours + 1)]
        if a.max_wait > 0:
            self.wait_quiet(sc)
        try:
            for nb in sc.neighbours:
                say(f"  {nb.name}: creating, starting the {nb.kind} storm")
                self.start_neighbour(nb)
            self.repin_victim()
            if sc.neighbours:
                say(f"  storms running; warming up {a.warmup:.0f} s")
                time.sleep(a.warmup)
            self.measure(sc)
        finally:
            if any(nb.paused for nb in sc.neighbours) and self.daemon.alive():
                try:
                    self.set_paused(sc.neighbours, False)
                except RuntimeError as exc:
                    say(f"  {exc}")
            for nb in sc.neighbours:
                if nb.name in self.created:
                    self.destroy(nb.name)

    def plan(self, sc: Scenario, i: int) -> list[str]:
        """What the neighbours do during repeat ``i``'s runs of a workload: beside a storm every run is
        paired with one beside the paused neighbours, in ABBA order so a linear drift cancels."""
        if not sc.neighbours:
            return ["none"]
        if self.args.unpaired:
            return ["storm"]
        return ["storm", "paused"] if i % 2 else ["paused", "storm"]

    def measure(self, sc: Scenario) -> None:
        a = self.args
        storming: list[tuple[float, float]] = []
        # the window: everything between these two snapshots
        rows0, snap0 = self.rows(), snapshot()
        for i in range(1, a.repeat + 1):
            for kind in WORKLOADS:
                for beside in self.plan(sc, i):
                    if sc.neighbours and not a.unpaired:
                        self.set_paused(sc.neighbours, beside == "paused")
                        time.sleep(a.settle)
                    r0 = self.rows() if sc.neighbours else {}
                    t0 = {nb.name: ticks(nb.pid) for nb in sc.neighbours}
                    run = self.run_workload(kind, i, beside)
                    r1 = self.rows() if sc.neighbours else {}
                    self.account(sc, run, r0, r1, t0, storming)
                    sc.runs.append(run)
                    m = run.metrics
                    what = "" if beside == "none" else f" beside {beside}"
                    if run.ok:
                        say(f"  {kind} #{i}{what}: guest {m['guest_s']:.3f} s (exec {m['host_wall_s']:.2f} s"
                            + (f", foreign on the victim's CPU {m['victim_cpu_foreign_pct']:.0f}%"
                               if "victim_cpu_foreign_pct" in m else "") + ")")
                    else:
                        say(f"  {kind} #{i}{what}: FAILED ({run.failure})")
                        sc.failures.append(f"victim {kind} #{i}{what}: {run.failure}")
        rows1, snap1 = self.rows(), snapshot()
        sc.window = usage(snap0, snap1, self.pids(sc), self.pinned_cpu())
        sc.victim_affinity, sc.daemon_affinity = affinity(self.victim_pid), affinity(self.daemon.pid)
        sc.victim_nice = nice_of(self.victim_pid)
        sc.victim_traps_delta = _traps_delta(rows0.get(self.victim), rows1.get(self.victim))
        self.set_paused(sc.neighbours, False)
        for nb in sc.neighbours:
            if nb.storming_s > 0:
                nb.hypercalls_per_s = nb.traps_delta.get("hypercall", 0) / nb.storming_s
                nb.cpu_pct = 100.0 * nb.cpu_ticks / CLK_TCK / nb.storming_s
            if nb.paused_s > 0:
                nb.paused_cpu_pct = 100.0 * nb.paused_ticks / CLK_TCK / nb.paused_s
            state = str(rows1.get(nb.name, {}).get("state", "gone"))
            if state.strip("-") not in ("r", "b", "p", ""):
                sc.failures.append(f"{nb.name} is not running at the end of the window ({state})")
            self.stop_neighbour(nb, storming)
            if not nb.ok:
                sc.failures.append(f"{nb.name}: {nb.error}")

    def account(self, sc: Scenario, run: VictimRun, r0: dict[str, dict[str, Any]],
                r1: dict[str, dict[str, Any]], t0: dict[str, int | None],
                storming: list[tuple[float, float]]) -> None:
        """Add one run's interval to each neighbour's storming or paused totals (time, CPU, traps)."""
        if not sc.neighbours:
            return
        wall = run.metrics["host_wall_s"]
        end = time.monotonic()
        if run.beside == "storm":
            storming.append((end - wall, end))
        for nb in sc.neighbours:
            n0, n1 = t0.get(nb.name), ticks(nb.pid)
            used = n1 - n0 if n0 is not None and n1 is not None else 0
            if run.beside == "paused":
                nb.paused_s += wall
                nb.paused_ticks += used
                continue
            nb.storming_s += wall
            nb.cpu_ticks += used
            for k, v in _traps_delta(r0.get(nb.name), r1.get(nb.name)).items():
                nb.traps_delta[k] = nb.traps_delta.get(k, 0) + v


def _traps_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, int]:
    if not before or not after:
        return {}
    b, a = before.get("traps") or {}, after.get("traps") or {}
    return {k: int(a[k]) - int(b.get(k, 0)) for k in sorted(a) if int(a[k]) != int(b.get(k, 0))}


# -- summarising ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    """A scenario over all rounds: medians of the pooled runs (beside the storm, or alone), ratios to the
    pooled solo runs, and the median of the paired ratios (each run beside the storm / its partner run
    beside the paused neighbours)."""

    name: str
    kind: str
    rounds: int
    runs: int  # successful victim runs per workload (the fewer of the two) beside the storm or alone
    neighbours: int  # per round
    ok: bool
    medians: dict[str, float]
    ratios: dict[str, float]
    storm_rates: dict[str, float]  # unit -> summed over the neighbours, median over rounds
    hypercalls_per_s: float | None  # the neighbours' together, median over rounds
    window: dict[str, float]  # means over rounds of the window's CPU figures


def _workload_medians(runs: list[VictimRun], beside: tuple[str, ...] = ("none", "storm")) -> dict[str, float]:
    """Per workload, over the runs ``beside`` those neighbour states: ``cpu_guest_s``, ``cpu_host_wall_s``,
    ... (harness.Run metrics are per run), and the spread (max-min)/median of the guest times in %."""
    out: dict[str, float] = {}
    for w in WORKLOADS:
        mine = [r for r in runs if r.kind == w and r.beside in beside]
        for key, val in harness.medians(mine, ["guest_s", "host_wall_s", "victim_cpu_foreign_pct",
                                               "victim_wait_pct", "steal_pct"]).items():
            out[f"{w}_{key}"] = val
        vals = [r.metrics["guest_s"] for r in mine if r.ok]
        if len(vals) >= 2:
            out[f"{w}_guest_spread_pct"] = 100.0 * (max(vals) - min(vals)) / statistics.median(vals)
    return out


def _paired_ratios(sc: Scenario, workload: str) -> list[float]:
    """Each run beside the storm / the run of the same repeat beside the paused neighbours."""
    by_index: dict[int, dict[str, float]] = {}
    for r in sc.runs:
        if r.kind == workload and r.ok and r.beside in ("storm", "paused"):
            by_index.setdefault(r.index, {})[r.beside] = r.metrics["guest_s"]
    return [p["storm"] / p["paused"] for p in by_index.values() if "storm" in p and p.get("paused")]


def _mean(vals: list[float]) -> float | None:
    return statistics.fmean(vals) if vals else None


def summarise(scenarios: list[Scenario]) -> list[Summary]:
    solo_runs = [r for sc in scenarios if sc.kind == "solo" for r in sc.runs]
    base = _workload_medians(solo_runs)
    out: list[Summary] = []
    for name in dict.fromkeys(sc.name for sc in scenarios):
        mine = [sc for sc in scenarios if sc.name == name]
        med = _workload_medians([r for sc in mine for r in sc.runs])
        ratios = {k: med[k] / base[k] for w in WORKLOADS for k in (f"{w}_guest_s", f"{w}_host_wall_s")
                  if k in med and base.get(k)}
        paused = _workload_medians([r for sc in mine for r in sc.runs], ("paused",))
        for w in WORKLOADS:
            if f"{w}_guest_s" in paused:
                med[f"{w}_paused_guest_s"] = paused[f"{w}_guest_s"]
                if base.get(f"{w}_guest_s"):
                    ratios[f"{w}_paused_vs_solo"] = paused[f"{w}_guest_s"] / base[f"{w}_guest_s"]
            pairs = [x for sc in mine for x in _paired_ratios(sc, w)]
            if pairs:
                ratios[f"{w}_paired"] = statistics.median(pairs)
                med[f"{w}_pairs"] = len(pairs)
        per_round: dict[str, list[float]] = {}
        hcs: list[float] = []
        for sc in mine:
            sums: dict[str, float] = {}
            for nb in sc.neighbours:
                if nb.rate is not None:
                    sums[nb.unit] = sums.get(nb.unit, 0.0) + nb.rate
            for unit, v in sums.items():
                per_round.setdefault(unit, []).append(v)
            if sc.neighbours and sc.window:
                hcs.append(sum(nb.hypercalls_per_s or 0.0 for nb in sc.neighbours))
        window: dict[str, float] = {}
        for key in ("host_foreign_pct", "victim_cpu_foreign_pct", "steal_pct", "foreign_kernel_pct",
                    "foreign_processes_pct", "foreign_unseen_pct"):
            m = _mean([float(sc.window[key]) for sc in mine if key in sc.window])
            if m is not None:
                window[key] = m
        for role in ("victim", "daemon"):
            m = _mean([sc.window["role_cpu_pct"][role] for sc in mine
                       if role in sc.window.get("role_cpu_pct", {})])
            if m is not None:
                window[f"{role}_cpu_pct"] = m
        nbr = _mean([sum(nb.cpu_pct or 0.0 for nb in sc.neighbours) for sc in mine
                     if sc.neighbours and sc.window])
        if nbr is not None:
            window["neighbours_cpu_pct"] = nbr
        runs = min(sum(1 for sc in mine for r in sc.runs if r.kind == w and r.ok and r.beside != "paused")
                   for w in WORKLOADS)
        ok = all(sc.ok for sc in mine)
        rates = {u: statistics.median(v) for u, v in per_round.items()}
        out.append(Summary(name, mine[0].kind, len(mine), runs, len(mine[0].neighbours), ok, med, ratios,
                           rates, statistics.median(hcs) if hcs else None, window))
    return out


def brief(sc: Scenario, base: dict[str, float]) -> str:
    """"cpu 2.231 s (1.004x solo so far, 1.001x paired), fork ..." for the progress lines."""
    med = _workload_medians(sc.runs)
    parts = []
    for w in WORKLOADS:
        v, b = med.get(f"{w}_guest_s"), base.get(f"{w}_guest_s")
        pairs = _paired_ratios(sc, w)
        parts.append(f"{w} {_f(v, '.3f')} s ({_ratio(v / b if v is not None and b else None)} solo so far"
                     + (f", {_ratio(statistics.median(pairs))} paired" if pairs else "") + ")")
    return ", ".join(parts)


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _rate(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}"


def _ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.3f}x" + (" *" if r > TARGET or r < 1 / TARGET else "")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


def victim_rows(summaries: list[Summary]) -> list[tuple[str, ...]]:
    """The victim's times: medians, ratios to the solo runs and to the paired runs beside the paused
    neighbours, spread, and the host-timed exec."""
    rows: list[tuple[str, ...]] = [(
        "scenario", "nbrs", "runs", "cpu loop med (s)", "vs solo", "vs paused", "fork+exec med (s)",
        "vs solo", "vs paused", "spread cpu / fork", "paused med cpu / fork (s)", "exec wall cpu / fork (s)")]
    for s in summaries:
        m, r = s.medians, s.ratios
        rows.append((
            s.name + ("" if s.ok else "  FAIL"),
            str(s.neighbours),
            str(s.runs),
            _f(m.get("cpu_guest_s"), ".3f"), _ratio(r.get("cpu_guest_s")), _ratio(r.get("cpu_paired")),
            _f(m.get("fork_guest_s"), ".3f"), _ratio(r.get("fork_guest_s")), _ratio(r.get("fork_paired")),
            f"{_pct(m.get('cpu_guest_spread_pct'))} / {_pct(m.get('fork_guest_spread_pct'))}",
            f"{_f(m.get('cpu_paused_guest_s'), '.3f')} / {_f(m.get('fork_paused_guest_s'), '.3f')}"
            if "cpu_paused_guest_s" in m else "-",
            f"{_f(m.get('cpu_host_wall_s'))} / {_f(m.get('fork_host_wall_s'))}",
        ))
    return rows


def load_rows(summaries: list[Summary], victim_cpu: int | None) -> list[tuple[str, ...]]:
    """What the neighbours achieved and who used the host's CPUs meanwhile."""
    foreign = f"foreign cpu{victim_cpu} / host" if victim_cpu is not None else "foreign (host)"
    rows: list[tuple[str, ...]] = [(
        "scenario", "storm rate (guest-counted)", "nbr hypercalls/s", "nbr CPU", "dom0 CPU",
        "victim runq wait cpu / fork", foreign, "steal")]
    for s in summaries:
        w, m = s.window, s.medians
        rate = ", ".join(_rate(v, u) for u, v in s.storm_rates.items()) or "-"
        if s.neighbours > 1 and s.storm_rates:
            rate += " (sum)"
        rows.append((
            s.name,
            rate,
            f"{s.hypercalls_per_s:,.0f}" if s.hypercalls_per_s is not None else "-",
            _pct(w.get("neighbours_cpu_pct")),
            _pct(w.get("daemon_cpu_pct")),
            f"{_f(m.get('cpu_victim_wait_pct'), '.1f')}% / {_f(m.get('fork_victim_wait_pct'), '.1f')}%",
            (f"{_pct(m.get('cpu_victim_cpu_foreign_pct'))} / " if victim_cpu is not None else "")
            + _pct(w.get("host_foreign_pct")),
            _pct(w.get("steal_pct")),
        ))
    return rows


def print_report(args: argparse.Namespace, other_cpus: set[int], scenarios: list[Scenario],
                 summaries: list[Summary]) -> None:
    a = args
    victim_cpu = a.victim_cpu if a.pin == "split" else None
    print(f"victim: {a.memory} MiB; cpu = {a.cpu_iterations} sh loop iterations, fork = {a.fork_count} x "
          f"/bin/true; {a.repeat} runs of each per scenario and round, {a.rounds} round(s); guest "
          f"CLOCK_MONOTONIC; {a.neighbours} neighbour(s) per storm kind; pinning: "
          + (f"victim on CPU {a.victim_cpu} (nice {a.victim_nice}), daemon + neighbours + harness on "
             f"{','.join(map(str, sorted(other_cpus)))}" if a.pin == "split" else "none"))
    print("\n".join(harness.table_lines(victim_rows(summaries))))
    print(f"guest CLOCK_MONOTONIC. vs solo = median / median of all solo runs; vs paused = median over "
          f"the repeats of (run beside the storm / its partner run beside the same neighbours paused); "
          f"* = outside the {100 * (TARGET - 1):.0f}% target; spread = (max-min)/median of the runs beside "
          f"the storm (or alone).\n")
    print("\n".join(harness.table_lines(load_rows(summaries, victim_cpu))))
    print("nbr CPU: the neighbours' domain processes while the victim ran beside the storm; dom0 CPU, "
          "host foreign, steal: over the scenario (mean over rounds), % of one host CPU. victim runq wait: "
          "median per run of the time the victim's threads were runnable but not running, % of the run. "
          "foreign: busy CPU time no process of this benchmark used (on the victim's CPU: median per cpu "
          "run); steal: time the machine under this VM took from its CPUs.")
    for sc in scenarios:
        tag = f"{sc.name} (round {sc.round})" if a.rounds > 1 else sc.name
        for nb in sc.neighbours:
            print(f"  {tag}: {nb.name}: {_rate(nb.rate, nb.unit)} ({nb.rate_source or '-'}), "
                  f"{_f(nb.hypercalls_per_s, ',.0f')} hypercalls/s, CPU {_pct(nb.cpu_pct)} on {nb.affinity} "
                  f"(paused: {_pct(nb.paused_cpu_pct)})")
        w = sc.window
        if w.get("host_foreign_pct", 0.0) >= a.quiet_pct:
            top = ", ".join(w.get("foreign_top", [])) or "-"
            print(f"  {tag}: foreign load {_pct(w.get('host_foreign_pct'))} of a CPU: kernel threads + irq "
                  f"{_pct(w.get('foreign_kernel_pct'))}, other processes "
                  f"{_pct(w.get('foreign_processes_pct'))} ({top}), "
                  f"unseen {_pct(w.get('foreign_unseen_pct'))}")
        for f in sc.failures:
            print(f"  {tag}: FAILED: {f}")
        for run in sc.runs:
            if not run.ok:
                print(f"  {tag}: {run.kind} #{run.index}: {run.failure}")
                harness.print_tails(run)
    for key, label in (("guest_s", "vs solo"), ("paired", "vs paused")):
        verdict = []
        for w_ in WORKLOADS:
            worst = max(((s.ratios[f"{w_}_{key}"], s.name) for s in summaries
                         if s.kind != "solo" and f"{w_}_{key}" in s.ratios), default=None)
            if worst is not None:
                verdict.append(f"{WORKLOAD_LABELS[w_]} {worst[0]:.3f}x ({worst[1]})")
        if verdict:
            print(f"worst slowdown beside a storm, {label}: " + "; ".join(verdict))


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Performance isolation: a victim domain's CPU and fork+exec "
                                            "times alone and beside neighbours storming one path each")
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                   help=f"comma-separated, run in this order, from {','.join(SCENARIO_KINDS)}; all solo runs "
                        f"together are the baseline (default {DEFAULT_SCENARIOS})")
    p.add_argument("--neighbours", type=int, default=1, help="neighbours per storm kind (default 1)")
    p.add_argument("--repeat", type=int, default=6,
                   help="runs of each workload per scenario and round; beside a storm each is paired with "
                        "one beside the paused neighbours (default 6)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole scenario list this many times, pooling each scenario's runs "
                        "(default 1)")
    p.add_argument("--cpu-iterations", type=int, default=100000,
                   help="sh loop iterations of the cpu workload (default 100000, ~2 s)")
    p.add_argument("--fork-count", type=int, default=1000,
                   help="/bin/true runs of the fork workload (default 1000, ~2.5 s)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of storm before measuring (default 3)")
    p.add_argument("--settle", type=float, default=0.5,
                   help="seconds between pausing/unpausing the neighbours and the next run (default 0.5)")
    p.add_argument("--unpaired", action="store_true",
                   help="never pause the neighbours: every run beside a storm is beside the running storm")
    p.add_argument("--memory", type=int, default=128, metavar="MiB", help="memory per domain (default 128)")
    p.add_argument("--disk-image-mib", type=int, default=64,
                   help="each disk neighbour's raw image (default 64)")
    p.add_argument("--disk-chunk-mib", type=int, default=16,
                   help="MiB per dd (conv=fsync) of the disk storm (default 16)")
    p.add_argument("--pin", choices=("split", "none"), default="split",
                   help="split: victim's domain process on --victim-cpu, daemon/neighbours/harness on the "
                        "other CPUs (default); none: no affinity")
    p.add_argument("--victim-cpu", type=int, default=0,
                   help="the victim's host CPU with --pin split (default 0)")
    p.add_argument("--victim-nice", type=int, default=-20,
                   help="with --pin split, the victim's threads run at this nice value, so that other "
                        "users' processes the host puts on its CPU take little from it; 0: leave it "
                        "(default -20)")
    p.add_argument("--quiet-pct", type=float, default=10.0,
                   help="before each scenario wait until foreign load is below this %% of one CPU "
                        "(default 10)")
    p.add_argument("--max-wait", type=float, default=300.0,
                   help="...but at most this many seconds; 0: never wait (default 300)")
    p.add_argument("--timeout", type=float, default=300.0, help="per create / exec, seconds (default 300)")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/isolation-<timestamp>.json)")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIO_KINDS]
    if bad or not args.scenarios:
        p.error(f"--scenarios: unknown {','.join(bad) or '(none)'}; choose from {','.join(SCENARIO_KINDS)}")
    if "solo" not in args.scenarios:
        p.error("--scenarios needs a solo scenario (the baseline)")
    for name in ("neighbours", "repeat", "rounds", "cpu_iterations", "fork_count", "memory",
                 "disk_chunk_mib"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.disk_image_mib < args.disk_chunk_mib:
        p.error("--disk-image-mib must be at least --disk-chunk-mib")
    if not -20 <= args.victim_nice <= 19:
        p.error("--victim-nice must be between -20 and 19")
    if not 0 <= args.victim_cpu < (os.cpu_count() or 1):
        p.error(f"--victim-cpu must be below {os.cpu_count()}")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def scenario_names(kinds: list[str]) -> list[tuple[str, str]]:
    """(name, kind): a kind's second occurrence is "solo-again" / "KIND#2", and so on."""
    seen: dict[str, int] = {}
    out = []
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
        name = k if seen[k] == 1 else ("solo-again" if k == "solo" and seen[k] == 2 else f"{k}#{seen[k]}")
        out.append((name, k))
    return out


def run_all(bench: Bench, scenarios: list[Scenario]) -> None:
    args = bench.args
    bench.start()
    plan = scenario_names(args.scenarios)
    total = len(plan) * args.rounds
    n = 0
    for rnd in range(1, args.rounds + 1):
        for name, kind in plan:
            n += 1
            sc = Scenario(name, kind, rnd)
            scenarios.append(sc)
            say(f"scenario {n}/{total}: {name}" + (f" (round {rnd})" if args.rounds > 1 else ""))
            try:
                bench.run_scenario(sc, f"s{n}")
            except RuntimeError as exc:
                sc.failures.append(str(exc))
                say(f"  FAILED: {exc}")
            base = _workload_medians([r for s in scenarios if s.kind == "solo" for r in s.runs])
            say(f"  {name}: {brief(sc, base)}")
            if not bench.daemon.alive():
                proc = bench.daemon.proc
                raise RuntimeError(f"the daemon died (status {proc.returncode if proc else '?'})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    images = harness.default_images(say)
    stamp = harness.timestamp()
    out_path = harness.results_path(args.out, "isolation", stamp)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    doc: dict[str, Any] = {
        "benchmark": "isolation", "started": stamp,
        "config": config | {"kernel_release": images.kernel_release, "kernel_elf": str(images.kernel),
                            "initrd": str(images.initrd), "target_ratio": TARGET},
        "host": host_info() | {"tuning": host_tuning()},
    }
    scenarios: list[Scenario] = []
    interrupted = False
    error: str | None = None
    daemon_tail = ""
    with tempfile.TemporaryDirectory(prefix="hd-isolation-") as tmp:
        bench = Bench(args, Path(tmp))
        doc["config"]["storm_commands"] = {k: storm_start_command(s) for k, s in bench.storms.items()}
        doc["config"]["workload_commands"] = {
            w: workload_command(w, args.cpu_iterations if w == "cpu" else args.fork_count) for w in WORKLOADS}
        try:
            run_all(bench, scenarios)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted; cleaning up")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            say(f"error: {error}")
        finally:
            doc["pinning"] = {"mode": args.pin, "victim_cpus": sorted(bench.victim_cpus),
                              "other_cpus": sorted(bench.other_cpus), "victim_pid": bench.victim_pid,
                              "daemon_pid": bench.daemon.pid if bench.daemon.proc else None,
                              "victim_affinity": affinity(bench.victim_pid),
                              "victim_nice": nice_of(bench.victim_pid),
                              "daemon_affinity": affinity(bench.daemon.pid) if bench.daemon.proc else None,
                              "harness_affinity": sorted(os.sched_getaffinity(0))}
            try:
                bench.cleanup()
            except KeyboardInterrupt:
                pass
            finally:
                daemon_tail = bench.daemon.log_tail()
                say("stopping the daemon")
                bench.daemon.stop()
    summaries = summarise(scenarios)
    if scenarios:
        print_report(args, bench.other_cpus, scenarios, summaries)
    if interrupted or error:
        print(f"\n{'interrupted' if interrupted else 'error: ' + str(error)}")
        print(f"last daemon log lines:\n{daemon_tail}")
    doc.update(scenarios=[dataclasses.asdict(s) | {"ok": s.ok} for s in scenarios],
               summary=[dataclasses.asdict(s) for s in summaries],
               tables={"victim": victim_rows(summaries),
                       "load": load_rows(summaries, args.victim_cpu if args.pin == "split" else None)},
               interrupted=interrupted, error=error, daemon_log_tail=daemon_tail.splitlines(),
               loadavg_at_end=os.getloadavg())
    harness.write_json(out_path, doc, say)
    failed = any(not s.ok for s in scenarios)
    return 0 if not (interrupted or error or failed) else 1


if __name__ == "__main__":
    sys.exit(main())
