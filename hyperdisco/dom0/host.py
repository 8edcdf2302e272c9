"""Domain 0: every domain on this host (each in its own jailed process), xenstored, the consoles, the
block and network devices' toolstack side (with the networks' switches and uplinks), and the log
(`dmesg`).

Both the daemon and the one-shot `run` build one of these. Domain IDs start at 1 (domain 0 is this
process). When a domain shuts down, the reaper applies the action its configuration names for that
reason (destroy, restart, preserve). Creating a domain is atomic: any failure undoes all of it.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backends.blkback import BlockDevices
from ..backends.console import ConsoleBuffer
from ..backends.net.manager import NetworkDevices, VifConfig, guest_cmdline
from ..backends.xenstore import Xenstored, persist
from ..core.clock import Clock
from ..core.domain import DomainConfig
from ..core.ratelimit import RateLimiter
from ..engine.base import get_engine
from ..errors import ConfigError, HyperdiscoError
from ..platform import layout
from ..vmm.jail import jail_root
from . import cgroups, memctl, vcpus
from .admission import Admission
from .arbiter import Arbiter
from .broker import EventChannelBroker
from .channels import ChannelTable
from .grants import GrantBroker
from .handle import DomainHandle
from .sealed_saves import SealedSaves
from .spawner import Spawner

MAX_DOMAINS = 1024
# the domain state changes Host.add_listener reports (the control API's `events`)
EVENTS = ("created", "paused", "unpaused", "shutdown", "crashed", "destroyed", "restarted")
DEFAULT_RUN_DIR = "/run/hyperdisco"


class Host:
    def __init__(self, engine: str = "tcg", log_sink: Callable[[str], None] | None = None,
                 run_dir: str = DEFAULT_RUN_DIR, overcommit: float | None = None,
                 state_dir: str | None = None,
                 config_of: Callable[[Any], DomainConfig] | None = None, template: bool = False,
                 reconfigure: Callable[[Any], DomainConfig] | None = None,
                 sched: str = "host", sched_cpus: list[int] | None = None) -> None:
        """With `state_dir`, domains outlive this process: each domain process listens in
        state_dir/domains for a new domain 0, xenstored's state is kept in state_dir/xenstore.json, and
        the domains found there are adopted now (`config_of` turns a domain's record back into its
        configuration). `sched` "bvt": domain 0's BVT arbiter decides which vCPUs hold the cores
        (`sched_cpus`: those host CPUs, pinned; None: as many as there are, unpinned); "host": the host
        kernel shares them between the domain processes. With `template`, domain processes are forked
        from a template process that has everything imported (vmm/zygote.py) instead of starting a
        fresh interpreter each."""
        self.engine_name = engine
        eng = get_engine(engine)  # builds/loads the engine once here, so domain processes only load it
        self.clock = Clock(eng.guest_tsc)
        self.tsc_khz = self.clock.tsc_khz()
        self.started = time.monotonic()
        self.run_dir = Path(run_dir)
        self.domains: dict[int, DomainHandle] = {}
        self.consoles: dict[int, ConsoleBuffer] = {}
        self.dmesg: collections.deque[str] = collections.deque(maxlen=5000)
        self.log_sink = log_sink
        self.admission = Admission(overcommit)
        self._log_limit = RateLimiter()
        self._lock = threading.RLock()
        self._next_domid = 1
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._events_lock = threading.Lock()  # every listener sees the events in one order
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
        self.broker = EventChannelBroker(self)  # inter-domain event channels between domain processes
        self.grants = GrantBroker(self)  # grant mappings between domain processes
        self.sealed_saves = SealedSaves()  # the checked copies restores map (dom0/sealed_saves.py)
        self.net = NetworkDevices(self)  # its switches (one per named network) start with the first vif
        self.pv_channels = ChannelTable(self.xs)  # xl.cfg channels and the guest agent (dom0/channels.py)
        self.arbiter = Arbiter(self.log, sched_cpus) if sched == "bvt" else None
        self.spawner: Spawner | None = None
        if template:
            try:
                cg = self.cgroups
                self.spawner = Spawner(self.log, on_spare=cg.prepare if cg is not None else None,
                                       on_spare_gone=(lambda pid: cg.remove(pid, wait=1.0)) if cg else None)
            except OSError as exc:
                self.log(f"no template domain process ({exc}); domain processes start afresh")
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._config_of = config_of
        # a domain booted by a bootloader (pygrub) reads its boot disk again when it restarts, so that a
        # kernel upgraded inside the guest boots at its next boot: its record -> a fresh configuration
        self._reconfigure = reconfigure
        if self.state_dir is not None:
            (self.state_dir / "domains").mkdir(parents=True, exist_ok=True, mode=0o700)
            self._adopt_all()
            threading.Thread(target=self._keep_state, name="hd-xs-state", daemon=True).start()
        self._reaper = threading.Thread(target=self._reap, name="hd-reaper", daemon=True)
        self._reaper.start()

    # -- outliving domain 0 -----------------------------------------------------------------------------
    def _adopt_all(self) -> None:
        """Take over the domains a previous domain 0 left running (it died or was killed)."""
        assert self.state_dir is not None
        state = self.state_dir / "xenstore.json"
        try:
            snap = persist.load(state)
        except HyperdiscoError as exc:
            self.log(f"xenstore state not restored: {exc}")
            snap = None
        sockets = sorted((self.state_dir / "domains").glob("*.sock"))
        # the store first: an adopted process's backends read it as soon as they are served
        restored = bool(sockets and snap)
        watches = persist.restore(self.xenstored, snap) if snap and restored else {}
        adopted: list[DomainHandle] = []
        for path in sockets:
            try:
                adopted.append(DomainHandle.adopt(self, path, self._adopted_config))
            except HyperdiscoError as exc:
                self.log(f"not adopted: {exc}")
                path.unlink(missing_ok=True)
        alive = {d.domid for d in adopted}
        for node in self.xs.directory("/local/domain") if restored else []:
            if node.isdigit() and int(node) not in alive and node != "0":
                for stale in (f"/local/domain/{node}", f"/local/domain/0/backend/vbd/{node}",
                              f"/local/domain/0/backend/vif/{node}"):
                    try:
                        self.xs.rm(stale)
                    except Exception:
                        pass
        for dom in adopted:
            with self._lock:
                self.domains[dom.domid] = dom
                self.consoles[dom.domid] = dom.console_buffer
                self._next_domid = max(self._next_domid, dom.domid + 1)
            dom.on_shutdown = self._domain_stopped
            if self.arbiter is not None:  # its gate opened when the old domain 0 died: close it again
                self.arbiter.add(dom, dom.config.bvt)
                dom.send({"t": "sched-gate", "on": True})
            assert dom.pages is not None and dom.console is not None
            if restored:
                ring = layout.special_gpa(layout.STORE_PAGE)
                notify = functools.partial(dom.notify, "store")
                self.xenstored.introduce_domain(dom.domid, dom.pages, ring, notify, watches.get(dom.domid))
            else:
                self._introduce(dom)
            self.blk.adopt(dom, dom.adopted_vbds)
            record = dom.config.record
            self.net.adopt(dom, record.get("net") if isinstance(record, dict) else None)
            self.broker.adopt(dom.domid, dom.adopted_links)
            self.xenstored.kick(dom.domid)  # what the guest wrote while nobody served it
            dom.console.kick()
            self.log(f"adopted domain {dom.domid} ({dom.name}), pid {dom.pid}")

    def _adopted_config(self, record: Any) -> DomainConfig:
        if self._config_of is None:
            raise HyperdiscoError("hyperdisco: this domain 0 cannot adopt domains")
        return self._config_of(record)

    def _keep_state(self) -> None:
        """Write xenstored's state whenever it changed (at most every 200 ms), for a successor."""
        assert self.state_dir is not None
        path = self.state_dir / "xenstore.json"
        last = None
        while True:
            time.sleep(0.2)
            try:
                now = persist.version(self.xenstored)
                if now != last:
                    persist.save(path, persist.snapshot(self.xenstored))
                    last = now
            except Exception as exc:  # a full disk must not end domain 0
                self.limit_log(f"xenstore state not saved: {exc}")

    def limit_log(self, msg: str) -> None:
        self._log_limit.log(self.log, "state", msg)

    # -- log --------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.started:10.3f}] {msg}"
        self.dmesg.append(line)
        if self.log_sink is not None:
            self.log_sink(line)

    # -- state changes ----------------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call fn({domain, domid, event, outcome, time}) at each domain state change (EVENTS): created,
        paused, unpaused, shutdown or crashed (the guest stopped; outcome says why), destroyed (it left
        the domain table: destroyed, or its on_* action removed it), restarted (after the new
        incarnation's created). fn is called on the thread that made the change: it must not block."""
        with self._events_lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        with self._events_lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def _event(self, dom: DomainHandle, event: str, outcome: str | None = None) -> None:
        ev = {"domain": dom.name, "domid": dom.domid, "event": event, "outcome": outcome, "time": time.time()}
        with self._events_lock:
            for fn in self._listeners:
                try:
                    fn(ev)
                except Exception as exc:  # a listener's bug must not stop a domain's lifecycle
                    self.limit_log(f"event listener failed: {type(exc).__name__}: {exc}")

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
    def create(self, config: DomainConfig, console: ConsoleBuffer | None = None,
               vifs: Sequence[VifConfig] = (), restore: str | int | None = None,
               incoming: int | None = None, checked: Callable[[], None] | None = None) -> DomainHandle:
        """Start a domain; everything is undone (process, xenstore nodes, disks, vifs) if any step fails.

        Its vifs get their devids and MACs first (NetworkDevices.prepare); the kernel command line gets
        the first vif's ip= (or ip=dhcp when it has its own passt uplink); a dict `config.record` gets
        the vifs as chosen under "net" (what a successor domain 0 re-plugs). They are attached after
        the domain process has built the domain and the disks are attached (the guest may be running)."""
        vifs = self.net.prepare(config.name, vifs)
        if vifs:
            record = config.record
            if isinstance(record, dict):
                record = {**record, "net": [v.to_record() for v in vifs]}
            config = replace(config, cmdline=guest_cmdline(config.cmdline, vifs), record=record)
        # a missing, corrupt or busy image: one line, no domain; an incoming migration's are attached at
        # its stop-and-copy, once the source let go of them (toolstack/migrate_ops.py)
        disks = self.blk.open_images(config.disks) if incoming is None else []
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
            adopt = self.state_dir / "domains" / f"{domid}.sock" if self.state_dir is not None else None
            if self.arbiter is not None:
                self.arbiter.add(dom, config.bvt)
            dom.start(self.engine_name, self.clock.params(), self.jail_root, cg, adopt, config.record,
                      self.spawner, sched=self.arbiter is not None, restore=restore, incoming=incoming)
            self._introduce(dom)
            for spec, image in disks:
                self.blk.attach(dom, spec, image)
            disks = []
            for vif in vifs:
                self.net.attach(dom, vif)
            self.pv_channels.attach(dom, config.channels)
            if restore is not None:  # built paused (vmm/snapshot.py): its frontends resume to these devices
                if checked is not None:  # the save file's check, run meanwhile (toolstack/save_check.py)
                    checked()
                dom.unpause()
            with self._lock:
                dom.creating = False
                self._changed.notify_all()
        except BaseException:
            for _spec, image in disks:
                image.close()
            if dom is not None:
                dom.reaped = True
                self._remove(dom)
            raise
        if self.spawner is not None:
            self.spawner.request_spare()  # the next domain's process, forked while nothing builds
        self.log(f"created domain {domid} ({config.name}), {config.memory_mib} MiB, {config.vcpus} vCPU, "
                 f"pid {dom.pid}, {dom.jail}")
        self._event(dom, "created")
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
                           *memctl.initial_nodes(dom.config),  # static-max, target
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
        vcpus.write_availability(conn, n, dom.config.vcpus, vcpus.max_vcpus(dom))
        self.xenstored.introduce_domain(n, dom.pages, layout.special_gpa(layout.STORE_PAGE),
                                        lambda: dom.notify("store"))

    def _domain_stopped(self, dom: DomainHandle) -> None:
        with self._lock:
            self._changed.notify_all()

    def _reap(self) -> None:
        while True:
            with self._lock:
                self._changed.wait(1.0)
                # a domain still being created is its creator's to undo: a guest that stops at once
                # (a triple fault, an immediate reboot) is reaped only once create has finished
                finished = [d for d in self.domains.values()
                            if d.finished and not d.reaped and not d.creating]
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
        self._event(dom, "crashed" if outcome == "crash" else "shutdown", outcome)
        if action == "preserve":
            return  # stays listed, stopped, until destroyed
        console = self.consoles.get(dom.domid)
        dom.restart_pending = action == "restart"
        vifs = self.net.configs(dom.domid)  # as attached (hot-plugged ones too, as libxl keeps them)
        self._remove(dom)
        if action == "restart":
            try:
                config = replace(dom.config)
                record = dom.config.record
                if self._reconfigure is not None and isinstance(record, dict) and record.get("bootloader"):
                    config = self._reconfigure(record)
                new = self.create(config, console=console, vifs=vifs)
                new.restarts = dom.restarts + 1
                dom.successor = new
                self._event(new, "restarted", outcome)
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
        self.net.close_domain(dom.domid)  # its ports off the switches, its vif nodes
        self.pv_channels.remove(dom.domid)
        self.broker.domain_gone(dom.domid)
        self.grants.domain_gone(dom.domid)
        if self.arbiter is not None:
            self.arbiter.remove(dom.domid)
        with self._lock:
            gone = self.domains.get(dom.domid) is dom
            if gone:
                self.domains.pop(dom.domid, None)
                self.consoles.pop(dom.domid, None)
        if gone and not dom.creating:  # a create that failed was never announced
            self._event(dom, "destroyed", dom.outcome)
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
        self._event(dom, "paused")

    def unpause(self, dom: DomainHandle) -> None:
        dom.unpause()
        self._event(dom, "unpaused")

    # -- vifs at run time (xl network-attach / network-detach) -----------------------------------------
    def attach_vif(self, dom: DomainHandle, vif: VifConfig) -> int:
        devid = self.net.attach(dom, vif)
        self._save_net_record(dom)
        return devid

    def detach_vif(self, dom: DomainHandle, which: int | str, timeout: float) -> bool:
        clean = self.net.detach(dom, which, timeout)
        self._save_net_record(dom)
        return clean

    def _save_net_record(self, dom: DomainHandle) -> None:
        """Keep the vifs in domain 0's record of the domain (and on_* restarts) as they are now."""
        record = dom.config.record
        if not isinstance(record, dict):
            return
        dom.config.record = {**record, "net": [v.to_record() for v in self.net.configs(dom.domid)]}
        if dom.adopt_path is not None:
            try:  # the file DomainHandle.start wrote: {"record": ...}
                persist.save(dom.adopt_path.with_suffix(".json"), {"record": dom.config.record})
            except OSError as exc:
                self.log(f"domain {dom.domid}: its record not saved: {exc}")

    def set_vcpus(self, dom: DomainHandle, online: int) -> None:
        """xl vcpu-set: `online` vCPUs from now on, through the guest's cpu/I/availability (dom0/vcpus.py)."""
        n = vcpus.max_vcpus(dom)
        if not 1 <= online <= n:
            raise ConfigError(f"hyperdisco: vcpu-set: domain {dom.name} can have 1 to {n} vCPUs (maxvcpus)")
        vcpus.write_availability(self.xs, dom.domid, online, n)

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
        """An orderly stop of domain 0 stops its domains too (only a domain 0 that dies leaves them)."""
        for dom in list(self.domains.values()):
            self.destroy(dom)
        self.blk.close()
        self.net.close()  # uplinks, then the switches
        if self.spawner is not None:
            self.spawner.close()
        if self.state_dir is not None:
            (self.state_dir / "xenstore.json").unlink(missing_ok=True)
