"""Domain 0's view of a domain's vCPUs: xl's vcpu-set, vcpu-list and vcpu-pin.

- **vcpu-set**: as libxl_set_vcpuonline for a PV/PVH guest, domain 0 writes
  `/local/domain/N/cpu/I/availability` ("online" / "offline") for every possible vCPU; the guest's
  drivers/xen/cpu_hotplug.c watches `cpu` and takes the CPU down (device_offline) or makes it present again
  (its user space then onlines it: `echo 1 > /sys/devices/system/cpu/cpuI/online`, as a udev rule does).
- **vcpu-list / vcpu-pin**: each vCPU is one host thread of the domain's process (core/scheduler.py), so
  its host CPU is the thread's (`/proc/PID/task/TID/stat`, field 39) and its hard affinity the thread's
  (sched_getaffinity / sched_setaffinity on the thread id, which domain 0 may do as the jail's owner).
  There is no soft affinity: it reads "all".
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..backends.xenstore.client import XenstoreClient
    from .handle import DomainHandle


def max_vcpus(dom: DomainHandle) -> int:
    return max(dom.config.vcpus, dom.config.maxvcpus)


def write_availability(xs: XenstoreClient, domid: int, online: int, possible: int) -> None:
    """cpu/I/availability for I < possible: online below `online`, offline from there."""
    for i in range(possible):
        xs.write(f"/local/domain/{domid}/cpu/{i}/availability", "online" if i < online else "offline")


def available(xs: XenstoreClient, domid: int, possible: int) -> int:
    """How many vCPUs vcpu-set made available (the leading cpu/I/availability that read "online"; at
    least 1): what a save records, so that the restored domain has the same."""
    n = 0
    while n < possible and xs.read(f"/local/domain/{domid}/cpu/{n}/availability") == "online":
        n += 1
    return max(1, n)


def host_cpus() -> int:
    return os.cpu_count() or 1


def parse_cpus(text: str, nr: int | None = None) -> set[int]:
    """xl's CPU list: "all", or comma-separated CPUs and ranges ("0-1,3"); a leading ^ excludes."""
    nr = host_cpus() if nr is None else nr
    text = text.strip()
    if text == "all":
        return set(range(nr))
    out: set[int] = set()
    for part in text.split(","):
        neg = part.startswith("^")
        lo, _, hi = part.lstrip("^").partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ConfigError(f"hyperdisco: {text[:40]!r} is not a CPU list (e.g. all, 0, 0-1, 0,2)")
        a, b = int(lo), int(hi or lo)
        if a > b or b >= nr:
            raise ConfigError(f"hyperdisco: CPU range {part[:20]!r}: this host has CPUs 0-{nr - 1}")
        cpus = set(range(a, b + 1))
        out = out - cpus if neg else out | cpus
    if not out:
        raise ConfigError("hyperdisco: empty CPU list")
    return out


def format_cpus(cpus: set[int] | list[int], nr: int | None = None) -> str:
    """As xl's print_bitmap: "all" when every CPU is in it, else ranges ("0-2,5"); "none" when empty."""
    nr = host_cpus() if nr is None else nr
    s = sorted(set(cpus))
    if set(range(nr)) <= set(s):
        return "all"
    if not s:
        return "none"
    parts, i = [], 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(parts)


def _thread_cpu(pid: int, tid: int) -> int | None:
    """The host CPU the thread last ran on (proc(5): field 39 of /proc/PID/task/TID/stat)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    try:
        return int(fields[39 - 3])
    except (IndexError, ValueError):
        return None


def _thread_affinity(tid: int) -> list[int]:
    try:
        return sorted(os.sched_getaffinity(tid))
    except OSError:
        return []


def _tid(dom: DomainHandle, row: dict[str, Any]) -> int:
    """A vCPU row's thread id, if it is a thread of this domain's process (never any other task)."""
    tid = row.get("tid")
    if not isinstance(tid, int) or tid <= 0 or dom.pid is None:
        return 0
    return tid if os.path.exists(f"/proc/{dom.pid}/task/{tid}") else 0


def rows(dom: DomainHandle) -> list[dict[str, Any]]:
    """One row per possible vCPU, as xl vcpu-list prints them."""
    out = []
    stats = dom.vcpu_rows()
    for i in range(max_vcpus(dom)):
        row = stats[i] if i < len(stats) and isinstance(stats[i], dict) else {}
        tid = _tid(dom, row)
        online = bool(row.get("up", i < dom.config.vcpus)) and not dom.finished
        cpu = _thread_cpu(dom.pid, tid) if tid and dom.pid is not None else None
        out.append({"name": dom.name, "domid": dom.domid, "vcpu": i, "cpu": cpu, "online": online,
                    "running": bool(row.get("running")), "blocked": bool(row.get("blocked")),
                    "time": float(row.get("cpu_s", 0.0)), "affinity": _thread_affinity(tid) if tid else [],
                    "affinity_text": format_cpus(_thread_affinity(tid)) if tid else "all", "soft": "all"})
    return out


def pin(dom: DomainHandle, vcpu: int | str, cpus: str) -> None:
    """Hard affinity of one vCPU ("all": every vCPU) to the CPU list `cpus`."""
    wanted = parse_cpus(cpus)
    stats = dom.vcpu_rows()
    n = max_vcpus(dom)
    if vcpu == "all":
        which = list(range(n))
    elif isinstance(vcpu, int) and 0 <= vcpu < n:
        which = [vcpu]
    else:
        raise ConfigError(f"hyperdisco: vcpu-pin: domain {dom.name} has vCPUs 0-{n - 1}")
    for i in which:
        row = stats[i] if i < len(stats) and isinstance(stats[i], dict) else {}
        tid = _tid(dom, row)
        if not tid:
            raise ConfigError(f"hyperdisco: vcpu-pin: vCPU {i} of {dom.name} is not running")
        try:
            os.sched_setaffinity(tid, wanted)
        except OSError as exc:
            raise ConfigError(f"hyperdisco: vcpu-pin: {exc.strerror}") from None
