"""Memory accounting of domain processes in cgroups, where the host lets domain 0 make them.

Each domain process goes into a cgroup of its own, `hyperdisco/d<pid>` under domain 0's own cgroup, so
its memory is accounted (memory.current / memory.usage_in_bytes). A hard limit (its RAM plus the
engine's overhead, dom0/admission.py, plus slack; a domain that exceeds it is OOM-killed alone) is set
only with HYPERDISCO_CGROUP_LIMIT=1: the host's page cache of the domain's disk images is charged to
the same cgroup, and a limit that tight cut sequential disk reads from 784 to 134 MiB/s (bench/disk.py,
one run each; admission control already keeps the sum of domains within the host). cgroup v2 is
used when its memory controller is available, else v1's memory hierarchy; without either (or without
permission) domains run unaccounted and `info` says so. HYPERDISCO_CGROUPS=0 turns it off.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..core.domain import DomainConfig
from .admission import cost_mib

SLACK_MIB = 64


class Cgroups:
    def __init__(self, root: Path, version: int) -> None:
        self.root = root
        self.version = version
        self._lock = threading.Lock()
        self._prepared: set[int] = set()  # spare domain processes already in their cgroups

    def _limit_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    def place(self, pid: int, config: DomainConfig) -> None:
        """The domain process `pid` in its cgroup, with its limit, before it builds its domain; a spare
        that `prepare` has put there already only gets the limit."""
        with self._lock:
            moved = pid in self._prepared
            self._prepared.discard(pid)
        path = self.root / f"d{pid}"
        try:
            path.mkdir(exist_ok=True)
            if os.environ.get("HYPERDISCO_CGROUP_LIMIT") == "1":
                above = max(0, (config.maxmem_mib or 0) - config.memory_mib)  # what mem-set may give back
                limit = (cost_mib(config) + above + SLACK_MIB) << 20
                (path / self._limit_file()).write_text(str(limit))
            if not moved:
                (path / "cgroup.procs").write_text(str(pid))
        except OSError:
            pass  # accounting is best effort: the domain still runs

    def prepare(self, pid: int) -> None:
        """A spare domain process (dom0/spawner.py) in its cgroup ahead of its domain: the move is the slow
        part of placing a process (7-25 ms on a cgroup v1 host)."""
        path = self.root / f"d{pid}"
        try:
            path.mkdir(exist_ok=True)
            (path / "cgroup.procs").write_text(str(pid))
        except OSError:
            return
        with self._lock:
            self._prepared.add(pid)

    def remove(self, pid: int, wait: float = 0.0) -> None:
        """Its cgroup, once its process has left it (`wait`: up to this long for that)."""
        with self._lock:
            self._prepared.discard(pid)
        deadline = time.monotonic() + wait
        while True:
            try:
                (self.root / f"d{pid}").rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.05)


def _own(hierarchy: str) -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            num, controllers, path = line.split(":", 2)
            if controllers == hierarchy or hierarchy in controllers.split(","):
                return path
    except (OSError, ValueError):
        pass
    return None


def detect() -> Cgroups | None:
    """A writable place for domain cgroups, or None (also with HYPERDISCO_CGROUPS=0)."""
    if os.environ.get("HYPERDISCO_CGROUPS", "1") == "0":
        return None
    candidates: list[tuple[Path, int]] = []
    v2 = _own("")
    for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (mount / "cgroup.controllers").exists() and v2 is not None:
            candidates.append((mount / v2.lstrip("/"), 2))
    v1 = _own("memory")
    if v1 is not None and Path("/sys/fs/cgroup/memory").is_dir():
        candidates.append((Path("/sys/fs/cgroup/memory") / v1.lstrip("/"), 1))
    for base, version in candidates:
        if version == 2:
            try:
                if "memory" not in (base / "cgroup.controllers").read_text().split():
                    continue
            except OSError:
                continue
        root = base / "hyperdisco"
        try:
            root.mkdir(exist_ok=True)
            if version == 2:
                (base / "cgroup.subtree_control").write_text("+memory")
                (root / "cgroup.subtree_control").write_text("+memory")
            if os.access(root, os.W_OK):
                return Cgroups(root, version)
        except OSError:
            continue
    return None
