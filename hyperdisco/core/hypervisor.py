"""The hypervisor: every domain on this host, the shared scheduler, xenstored, and the log (`dmesg`).

Both the daemon and the one-shot `run` build one of these. Domain IDs start at 1 (domain 0 is this
process: the toolstack and the backends). When a domain shuts down, the reaper applies the action its
configuration names for that reason (destroy, restart, preserve).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ..backends.blkback import BlockDevices
from ..backends.console import ConsoleBuffer
from ..backends.xenstore import Xenstored
from ..engine.base import get_engine
from ..errors import ConfigError, HyperdiscoError
from ..xen import abi
from .clock import Clock
from .domain import Domain, DomainConfig
from .scheduler import Scheduler

MAX_DOMAINS = 1024


class Hypervisor:
    def __init__(self, engine: str = "tcg", workers: int | None = None,
                 log_sink: Callable[[str], None] | None = None) -> None:
        self.engine = get_engine(engine)
        self.clock = Clock(self.engine.guest_tsc)
        self.scheduler = Scheduler(workers)
        self.started = time.monotonic()
        self.domains: dict[int, Domain] = {}
        self.consoles: dict[int, ConsoleBuffer] = {}
        self.dmesg: collections.deque[str] = collections.deque(maxlen=5000)
        self.log_sink = log_sink
        self._lock = threading.RLock()
        self._next_domid = 1
        self._changed = threading.Condition(self._lock)
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
    def find(self, dom: str | int) -> Domain:
        with self._lock:
            if isinstance(dom, int) or str(dom).isdigit():
                d = self.domains.get(int(dom))
                if d is not None:
                    return d
            for d in self.domains.values():
                if d.name == dom:
                    return d
        raise ConfigError(f"hyperdisco: no domain {dom!r}")

    def domain(self, domid: int) -> Domain | None:
        return self.domains.get(domid)

    # -- lifecycle --------------------------------------------------------------------------------------
    def create(self, config: DomainConfig, console: ConsoleBuffer | None = None) -> Domain:
        disks = self.blk.open_images(config.disks)  # a missing, corrupt or busy image: one line, no domain
        try:
            with self._lock:
                if any(d.name == config.name for d in self.domains.values()):
                    raise ConfigError(f"hyperdisco: a domain called {config.name!r} already exists")
                if len(self.domains) >= MAX_DOMAINS:
                    raise ConfigError("hyperdisco: too many domains")
                domid = self._next_domid
                self._next_domid += 1
                buf = console or ConsoleBuffer()
                dom = Domain(domid, config, self.engine, self.clock, buf.write, self.log, hypervisor=self)
                self.domains[domid] = dom
                self.consoles[domid] = buf
        except BaseException:
            for _spec, image in disks:
                image.close()
            raise
        dom.on_shutdown = self._domain_stopped
        self._introduce(dom)
        try:
            for spec, image in disks:
                self.blk.attach(dom, spec, image)
        except BaseException:
            self.destroy(dom)
            raise
        self.log(f"created domain {domid} ({config.name}), {config.memory_mib} MiB, {config.vcpus} vCPU")
        self.scheduler.add(dom)
        return dom

    def _introduce(self, dom: Domain) -> None:
        """The nodes xl writes for a new domain (libxl's permissions: the domain reads its tree, owns
        data/ and control/shutdown), then introduce it to xenstored."""
        xs = self.xenstored
        n = dom.domid
        base = f"/local/domain/{n}"
        ro, rw = ["n0", f"r{n}"], [f"n{n}"]
        conn = self.xs
        conn.mkdir(base)
        conn.set_perms(base, ro)  # children made below inherit these
        for key, value in (("name", dom.name), ("domid", str(n)),
                           ("memory/target", str(dom.config.memory_mib * 1024)),
                           ("console/port", str(dom.console.port)),
                           ("console/ring-ref", str(dom.params[abi.HVM_PARAM_CONSOLE_PFN])),
                           ("console/type", "xenconsoled")):
            conn.write(f"{base}/{key}", value)
        # as libxl__domain_make: these the guest may write
        for sub in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                    "control/feature-suspend", "control/sysrq", "data", "drivers", "feature", "attr",
                    "error"):
            conn.write(f"{base}/{sub}", "")
            conn.set_perms(f"{base}/{sub}", rw)
        conn.mkdir(f"{base}/device")
        xs.introduce_domain(n, dom.memory, dom.store_ring_gpa, dom.store_notify)

    def _domain_stopped(self, dom: Domain) -> None:
        with self._lock:
            self._changed.notify_all()

    def _reap(self) -> None:
        while True:
            with self._lock:
                self._changed.wait(1.0)
                finished = [d for d in self.domains.values() if d.finished and not d.reaped]
            for dom in finished:
                dom.reaped = True
                self._apply_action(dom)

    def _apply_action(self, dom: Domain) -> None:
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

    def successor(self, dom: Domain) -> Domain | None:
        """After `dom` is gone: the incarnation its on_* restart action created, or None."""
        with self._lock:
            while dom.restart_pending:
                self._changed.wait(1.0)
            return dom.successor

    def _remove(self, dom: Domain) -> None:
        self.scheduler.remove(dom)
        self.blk.close_domain(dom.domid)  # its backends stop and its images are closed
        with self._lock:
            self.domains.pop(dom.domid, None)
            self.consoles.pop(dom.domid, None)
        self.xenstored.release_domain(dom.domid)
        self.xs.rm(f"/local/domain/{dom.domid}")
        dom.close()
        with self._lock:
            self._changed.notify_all()

    def destroy(self, dom: Domain) -> None:
        dom.reaped = True
        if not dom.finished:
            dom.shutdown("destroyed")
        self.log(f"domain {dom.domid} ({dom.name}) destroyed")
        self._remove(dom)

    def pause(self, dom: Domain) -> None:
        dom.paused = True
        for ctx in dom.vcpus:
            ctx.ev.kick()

    def unpause(self, dom: Domain) -> None:
        dom.paused = False
        dom.wake()

    def request_shutdown(self, dom: Domain, reason: str) -> None:
        """Ask the guest to shut down (xl shutdown/reboot): control/shutdown in xenstore."""
        self.xs.write(f"/local/domain/{dom.domid}/control/shutdown", reason)

    def wait_gone(self, dom: Domain, timeout: float | None = None) -> bool:
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
        self.scheduler.shutdown()
        self.blk.close()
