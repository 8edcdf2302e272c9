"""Domain 0: every domain on this host (each in its own jailed process), xenstored, the consoles, the
block devices' toolstack side, and the log (`dmesg`).

Both the daemon and the one-shot `run` build one of these. Domain IDs start at 1 (domain 0 is this
process). When a domain shuts down, the reaper applies the action its configuration names for that
reason (destroy, restart, preserve). Creating a domain is atomic: any failure undoes all of it.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ..backends.blkback import BlockDevices
from ..backends.console import ConsoleBuffer
from ..backends.xenstore import Xenstored
from ..core.clock import Clock
from ..core.domain import DomainConfig
from ..engine.base import get_engine
from ..errors import ConfigError, HyperdiscoError
from ..platform import layout
from ..vmm.jail import jail_root
from . import cgroups
from .admission import Admission
from .handle import DomainHandle

MAX_DOMAINS = 1024
DEFAULT_RUN_DIR = "/run/hyperdisco"


class Host:
    def __init__(self, engine: str = "tcg", log_sink: Callable[[str], None] | None = None,
                 run_dir: str = DEFAULT_RUN_DIR, overcommit: float | None = None) -> None:
        self.engine_name = engine
        eng = get_engine(engine)  # builds/loads the engine once here, so domain processes only load it
        self.clock = Clock(eng.guest_tsc)
        self.tsc_khz = self.clock.tsc_khz()
        self.started = time.monotonic()
        self.domains: dict[int, DomainHandle] = {}
        self.consoles: dict[int, ConsoleBuffer] = {}
        self.dmesg: collections.deque[str] = collections.deque(maxlen=5000)
        self.log_sink = log_sink
        self.admission = Admission(overcommit)
        self._lock = threading.RLock()
        self._next_domid = 1
        self._changed = threading.Condition(self._lock)
        try:
            os.makedirs(run_dir, exist_ok=True)
            self.jail_root = jail_root(run_dir)
        except OSError:
            self.jail_root = None
        self.cgroups = cgroups.detect()
        self.xenstored = Xenstored(self.log)
        self.xs = self.xenstored.local_connection()  # domain 0's own connection to the store
        for path, value in (("/local/domain/0/name", "Domain-0"), ("/local/domain/0/domid", "0")):
            self.xs.write(path, value)
        self.blk = BlockDevices(self)
        self._reaper = threading.Thread(target=self._reap, name="hd-reaper", daemon=True)
        self._reaper.start()

    # -- log --------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.started:10.3f}] {msg}"
        self.dmesg.append(line)
        if self.log_sink is not None:
            self.log_sink(line)

    # -- lookup -----------------------------------------------------------------------------------------
    def find(self, dom: str | int) -> DomainHandle:
        with self._lock:
            if isinstance(dom, int) and not isinstance(dom, bool):
                d = self.domains.get(dom)
                if d is not None:
                    return d
            elif isinstance(dom, str):
                if dom.isascii() and dom.isdigit() and len(dom) <= 10:
                    d = self.domains.get(int(dom))
                    if d is not None:
                        return d
                for d in self.domains.values():
                    if d.name == dom:
                        return d
        raise ConfigError(f"hyperdisco: no domain {dom!r}"[:200])

    def domain(self, domid: int) -> DomainHandle | None:
        return self.domains.get(domid)

    # -- lifecycle --------------------------------------------------------------------------------------
    def create(self, config: DomainConfig, console: ConsoleBuffer | None = None) -> DomainHandle:
        """Start a domain; everything is undone (process, xenstore nodes, disks) if any step fails."""
        disks = self.blk.open_images(config.disks)  # a missing, corrupt or busy image: one line, no domain
        dom: DomainHandle | None = None
        try:
            with self._lock:
                if any(d.name == config.name for d in self.domains.values()):
                    raise ConfigError(f"hyperdisco: a domain called {config.name!r} already exists")
                if len(self.domains) >= MAX_DOMAINS:
                    raise ConfigError("hyperdisco: too many domains")
                self.admission.admit(config, [d.config for d in self.domains.values()])
                domid = self._next_domid
                self._next_domid += 1
                buf = console or ConsoleBuffer()
                dom = DomainHandle(self, domid, config, buf)
                self.domains[domid] = dom
                self.consoles[domid] = buf
            dom.on_shutdown = self._domain_stopped
            cg = self.cgroups.place if self.cgroups is not None else None
            dom.start(self.engine_name, self.clock.params(), self.jail_root, cg)
            self._introduce(dom)
            for spec, image in disks:
                self.blk.attach(dom, spec, image)
            disks = []
        except BaseException:
            for _spec, image in disks:
                image.close()
            if dom is not None:
                dom.reaped = True
                self._remove(dom)
            raise
        self.log(f"created domain {domid} ({config.name}), {config.memory_mib} MiB, {config.vcpus} vCPU, "
                 f"pid {dom.pid}, {dom.jail}")
        return dom

    def _introduce(self, dom: DomainHandle) -> None:
        """The nodes xl writes for a new domain (libxl's permissions: the domain reads its tree, owns
        data/ and control/shutdown), then introduce it to xenstored."""
        assert dom.pages is not None
        n = dom.domid
        base = f"/local/domain/{n}"
        ro, rw = ["n0", f"r{n}"], [f"n{n}"]
        conn = self.xs
        conn.mkdir(base)
        conn.set_perms(base, ro)  # children made below inherit these
        for key, value in (("name", dom.name), ("domid", str(n)),
                           ("memory/target", str(dom.config.memory_mib * 1024)),
                           ("console/port", str(dom.console_port)),
                           ("console/ring-ref", str(layout.special_gpa(layout.CONSOLE_PAGE) >> 12)),
                           ("console/type", "xenconsoled")):
            conn.write(f"{base}/{key}", value)
        # as libxl__domain_make: these the guest may write
        for sub in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                    "control/feature-suspend", "control/sysrq", "data", "drivers", "feature", "attr",
                    "error"):
            conn.write(f"{base}/{sub}", "")
            conn.set_perms(f"{base}/{sub}", rw)
        conn.mkdir(f"{base}/device")
        self.xenstored.introduce_domain(n, dom.pages, layout.special_gpa(layout.STORE_PAGE),
                                        lambda: dom.notify("store"))

    def _domain_stopped(self, dom: DomainHandle) -> None:
        with self._lock:
            self._changed.notify_all()

    def _reap(self) -> None:
        while True:
            with self._lock:
                self._changed.wait(1.0)
                finished = [d for d in self.domains.values() if d.finished and not d.reaped]
            for dom in finished:
                dom.reaped = True
                try:
                    self._apply_action(dom)
                except Exception as exc:  # the reaper must outlive any one domain's trouble
                    self.log(f"domain {dom.domid}: cleaning up failed: {type(exc).__name__}: {exc}")

    def _apply_action(self, dom: DomainHandle) -> None:
        outcome = dom.outcome or "crash"
        action = {"poweroff": dom.config.on_poweroff, "reboot": dom.config.on_reboot,
                  "crash": dom.config.on_crash}.get(outcome, "destroy")
        self.log(f"domain {dom.domid} ({dom.name}) {outcome}"
                 f"{': ' + dom.outcome_detail if dom.outcome_detail else ''}; action {action}")
        if action == "preserve":
            return  # stays listed, stopped, until destroyed
        console = self.consoles.get(dom.domid)
        dom.restart_pending = action == "restart"
        self._remove(dom)
        if action == "restart":
            try:
                new = self.create(replace(dom.config), console=console)
                new.restarts = dom.restarts + 1
                dom.successor = new
            except HyperdiscoError as e:  # e.g. its disk image went away: it stays down
                self.log(f"domain {dom.name} not restarted: {e}")
            finally:
                with self._lock:
                    dom.restart_pending = False
                    self._changed.notify_all()

    def successor(self, dom: DomainHandle) -> DomainHandle | None:
        """After `dom` is gone: the incarnation its on_* restart action created, or None."""
        with self._lock:
            while dom.restart_pending:
                self._changed.wait(1.0)
            return dom.successor

    def _remove(self, dom: DomainHandle) -> None:
        if not dom.finished:
            dom.shutdown("destroyed")
        self.blk.close_domain(dom.domid)  # the toolstack's side of its disks
        with self._lock:
            if self.domains.get(dom.domid) is dom:
                self.domains.pop(dom.domid, None)
                self.consoles.pop(dom.domid, None)
        if self.xenstored.is_introduced(dom.domid):
            self.xenstored.release_domain(dom.domid)
        try:
            self.xs.rm(f"/local/domain/{dom.domid}")
        except Exception:
            pass
        dom.close()
        if self.cgroups is not None:
            self.cgroups.remove(dom.pid)
        with self._lock:
            self._changed.notify_all()

    def destroy(self, dom: DomainHandle) -> None:
        dom.reaped = True
        if not dom.finished:
            dom.shutdown("destroyed")
        self.log(f"domain {dom.domid} ({dom.name}) destroyed")
        self._remove(dom)

    def pause(self, dom: DomainHandle) -> None:
        dom.pause()

    def unpause(self, dom: DomainHandle) -> None:
        dom.unpause()

    def request_shutdown(self, dom: DomainHandle, reason: str) -> None:
        """Ask the guest to shut down (xl shutdown/reboot): control/shutdown in xenstore."""
        self.xs.write(f"/local/domain/{dom.domid}/control/shutdown", reason)

    def wait_gone(self, dom: DomainHandle, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while dom.domid in self.domains and self.domains[dom.domid] is dom and not (
                    dom.finished and dom.reaped and dom.config.on_poweroff == "preserve"):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left if left is not None else 1.0)
        return True

    def close(self) -> None:
        for dom in list(self.domains.values()):
            self.destroy(dom)
        self.blk.close()
