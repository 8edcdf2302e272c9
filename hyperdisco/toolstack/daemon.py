"""`hyperdisco daemon`: domain 0. It starts and supervises one jailed process per domain (dom0/), runs
xenstored and the consoles, and serves the control protocol (toolstack/protocol.py, docs/control-api.md)
on a Unix socket.

It never waits on a client or a domain: every request is validated (requests.py) and answered in one
line on a connection that stays open; console and watch streams go through bounded per-client queues
(a client that stops reading is dropped).
"""

from __future__ import annotations

import base64
import grp
import os
import queue
import select
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..backends.net.manager import MAX_VIFS, VifConfig
from ..backends.xenstore.unix_socket import XenstoredSocket
from ..backends.xenstore.unix_socket import socket_path as xenstored_socket_path
from ..backends.xenstore.wire import XsError
from ..core import page_sharing
from ..core.domain import DomainConfig
from ..dom0 import memctl
from ..dom0 import vcpus as dom0_vcpus
from ..dom0.handle import DomainHandle
from ..dom0.host import Host
from ..errors import HyperdiscoError
from ..loader.elf import KernelImage
from ..platform import layout
from . import agent_ops, migrate_ops, reseed, sched_ops, snapshot_ops
from .build import MAX_VCPUS, domain_config
from .protocol import encode, socket_path
from .requests import MAX_REQUEST_BYTES, RequestError, XsRequestError, check_name, field, parse_request
from .sessions import ExecSession, prompt_asked
from .xenstore_ops import XenstoreOps
from .xlcfg import DISK_FORMATS, SUPPORTED_ACTIONS, DiskSpec, vif_from_params

MAX_EVENT_CHANNELS = (1 << 17) - 1  # xl.cfg(5) max_event_channels: what the FIFO ABI names
RECORD_KEYS = ("name", "memory", "maxmem", "vcpus", "maxvcpus", "kernel", "ramdisk", "cmdline",
               "on_poweroff", "on_reboot", "on_crash", "disks", "net",  # net: the vifs as attached (host.py)
               "bootloader", "bootloader_args", "max_event_channels", "channels", *sched_ops.CONFIG_KEYS)
CLIENT_QUEUE_BYTES = 1 << 20  # console/watch output waiting for a slow client; beyond this it is dropped
LISTEN_BACKLOG = 128


def domain_state(dom: DomainHandle) -> str:
    """xl's six state letters: running, blocked, paused, shutdown, crashed, dying."""
    vcpus = dom.vcpu_rows()
    running = any(v.get("running") for v in vcpus)
    blocked = bool(vcpus) and all(v.get("blocked") for v in vcpus)
    shut = dom.finished and dom.outcome != "crash"
    crashed = dom.finished and dom.outcome == "crash"
    flags = (("r", running and not dom.finished), ("b", blocked and not running and not dom.finished),
             ("p", dom.paused), ("s", shut), ("c", crashed), ("d", False))
    return "".join(c if f else "-" for c, f in flags)


def _disk_spec(d: Any) -> DiskSpec:
    """A DiskSpec sent over the socket (dataclasses.asdict of the client's); every field type-checked."""
    if not isinstance(d, dict):
        raise RequestError("hyperdisco: bad disk specification")
    for key in d:
        if key not in ("target", "format", "vdev", "access", "extra"):
            raise RequestError(f"hyperdisco: bad disk specification: unknown key {str(key)[:40]!r}")
    target, fmt, vdev = d.get("target"), d.get("format", "raw"), d.get("vdev", "")
    access = d.get("access", "rw")
    extra = d.get("extra", {})
    if not (isinstance(target, str) and isinstance(fmt, str) and isinstance(vdev, str)
            and isinstance(access, str)) or "\0" in target + fmt + vdev + access:
        raise RequestError("hyperdisco: bad disk specification: target, format, vdev, access are strings")
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) and "\0" not in k + v
                                              for k, v in extra.items()):
        raise RequestError("hyperdisco: bad disk specification: extra must map strings to strings")
    if fmt not in DISK_FORMATS or access not in ("ro", "rw") or not target:
        raise RequestError("hyperdisco: bad disk specification: format, access or target")
    return DiskSpec(target=target, format=fmt, vdev=vdev, access=access, extra=dict(extra))


def _vif_config(v: Any, where: str) -> VifConfig:
    """A vif sent over the socket: its xl key=value parameters as an object of strings, parsed as xl.cfg's."""
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise RequestError(f"hyperdisco: {where}: a vif must be an object of key=value strings")
    if len(v) > 32 or any(len(k) + len(x) > 4096 for k, x in v.items()):
        raise RequestError(f"hyperdisco: {where}: vif specification too large")
    return vif_from_params(dict(v), where).net_config()


def _rss_mib() -> int:
    """Domain 0's memory: this process's resident set."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


# the requests that turn the connection into a stream (the schema's x-stream), served by _NAME_stream;
# every other request is answered by op_NAME
STREAM_OPS = ("console", "watch", "events")


class ClientStream:
    """Output to one streaming client (console, watch, events) through a bounded queue and a writer thread
    of its own: the producer never blocks; a client that falls CLIENT_QUEUE_BYTES behind is disconnected."""

    def __init__(self, conn: socket.socket, start: bool = True) -> None:
        self.conn = conn
        self.q: queue.Queue[bytes | None] = queue.Queue()
        self.queued = 0
        self.closed = threading.Event()
        self._hang_up = False  # finish(): the writer hangs up once the queue is written
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._write, name="hd-client", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Begin writing what was queued (after the stream's first answer went out)."""
        self._thread.start()

    def put(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        with self._lock:
            if self.queued + len(data) > CLIENT_QUEUE_BYTES:
                self.close()
                return
            self.queued += len(data)
        self.q.put(data)

    def _write(self) -> None:
        while True:
            data = self.q.get()
            if data is None:
                if self._hang_up:
                    self._shutdown()
                break
            with self._lock:
                self.queued -= len(data)
            try:
                self.conn.sendall(data)
            except OSError:
                self.close()
                break

    def close(self) -> None:
        """Hang up now: what is still queued is dropped."""
        if not self.closed.is_set():
            self.closed.set()
            self.q.put(None)
        self._shutdown()

    def finish(self, timeout: float = 5.0) -> None:
        """Hang up once what is queued is written (the stream's source has ended); a client that does not
        read it within `timeout` seconds is cut off."""
        if not self.closed.is_set():
            self._hang_up = True
            self.closed.set()
            self.q.put(None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _stays_stopped(dom: DomainHandle) -> bool:
    """A stopped domain its on_* action keeps (preserve): listed, but it will not run again."""
    action = {"poweroff": dom.config.on_poweroff, "reboot": dom.config.on_reboot,
              "crash": dom.config.on_crash}.get(dom.outcome or "crash", "destroy")
    return dom.finished and dom.reaped and action == "preserve"


class ConsoleFollower:
    """Which incarnation of a domain a console client types into: the domain, then each one its restart
    action creates (Host.successor). When the domain is gone without one, or stopped and preserved, the
    stream is finished (its queued output written, then hung up). Woken by the host's state changes
    (Host.add_listener), with a poll as a backstop; never blocks the host."""

    POLL_S = 1.0

    def __init__(self, host: Host, dom: DomainHandle, out: ClientStream) -> None:
        self.host = host
        self.dom = dom
        self.out = out
        self.ended = False
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        host.add_listener(self._on_event)
        self._thread = threading.Thread(target=self._run, name="hd-console-follow", daemon=True)
        self._thread.start()

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") in ("shutdown", "crashed", "destroyed"):
            self._wake.set()

    def target(self) -> DomainHandle | None:
        """The incarnation to type into, waiting while the current one has stopped and its successor is
        being made; None once the domain has ended (or the client is gone)."""
        with self._changed:
            while self.dom.finished and not self.ended and not self._stopped.is_set():
                self._changed.wait(0.2)
            return None if self.ended or self._stopped.is_set() else self.dom

    def stop(self) -> None:
        """The client went away: stop following."""
        self._stopped.set()
        self._wake.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set() and not self.out.closed.is_set():
                d = self.dom
                if self.host.domains.get(d.domid) is d:
                    if _stays_stopped(d):
                        self._end()
                        return
                    self._wake.wait(self.POLL_S)
                    self._wake.clear()
                    continue
                nxt = self.host.successor(d)  # waits while its restart is under way
                if nxt is None:
                    self._end()
                    return
                with self._changed:
                    self.dom = nxt
                    self._changed.notify_all()
        finally:
            self.host.remove_listener(self._on_event)

    def _end(self) -> None:
        with self._changed:
            self.ended = True
            self._changed.notify_all()
        self.out.finish()


class Daemon:
    migrate_key: bytes | None = None  # --migrate-key: the secret TCP migrations prove (migrate_ops.py)

    def __init__(self, sock: str | None = None, engine: str = "tcg", verbose: bool = False,
                 share_pages: bool = False, overcommit: float | None = None,
                 xenstored_socket: str | None = None, group: str | None = None, sched: str = "bvt",
                 sched_cpus: list[int] | None = None) -> None:
        self.path = socket_path(sock)
        self.xenstored_socket = xenstored_socket  # None: $XENSTORED_PATH or the default; "none": no socket
        # `--group NAME`: the control and xenstored sockets are 0660 and this group's (as libvirt's
        # unix_sock_group, docker's -G); None: 0600, the daemon user's only
        self.group_gid: int | None = None if group is None else group_id(group)
        self._claim_socket()  # before anything else: a second daemon or another user's socket is one line
        if share_pages:
            page_sharing.enable()
        self.host = Host(engine, log_sink=(lambda m: print(m, flush=True)) if verbose else None,
                         run_dir=str(self.path.parent), overcommit=overcommit,
                         state_dir=str(self.path.with_name(self.path.name + ".state")),
                         config_of=self._adopted_config, template=True, reconfigure=self._config,
                         sched=sched, sched_cpus=sched_cpus)
        self.exec_locks: dict[int, threading.Lock] = {}
        self.xenstore = XenstoreOps(self.host.xenstored.local_connection)

    # -- operations -------------------------------------------------------------------------------------
    def op_create(self, config: dict[str, Any]) -> dict[str, Any]:
        vifs = config.get("vifs") or []
        if not isinstance(vifs, list) or len(vifs) > MAX_VIFS:
            raise RequestError(f"hyperdisco: create: vifs must be a list of at most {MAX_VIFS} vifs")
        if config.get("restore") is not None:  # a clone of a save file (toolstack/clones.py)
            return self._reseeded(snapshot_ops.restore(
                self.host, field(config, "restore", str, None), self._config,
                name=check_name(config.get("name"), "create"), overrides=config,
                given_vifs=[_vif_config(v, "create") for v in vifs] or None))
        dom = self.host.create(self._config(config), vifs=[_vif_config(v, "create") for v in vifs])
        return {"domid": dom.domid, "name": dom.name}

    def _config(self, config: dict[str, Any]) -> DomainConfig:
        """A create request's config, checked field by field, as a DomainConfig whose record is what
        _config needs to build it again (a new daemon adopting the domain calls _adopted_config)."""
        name = check_name(config.get("name"), "create")
        memory = field(config, "memory", int, 256, layout.MIN_RAM >> 20, layout.MAX_RAM >> 20)
        maxmem = field(config, "maxmem", int, None, layout.MIN_RAM >> 20, layout.MAX_RAM >> 20)
        if maxmem is not None and maxmem < memory:
            raise RequestError(f"hyperdisco: create: maxmem {maxmem} MiB is less than memory ({memory} MiB)")
        vcpus = field(config, "vcpus", int, 1, 1, MAX_VCPUS)
        max_evtchn = field(config, "max_event_channels", int, None, 1, MAX_EVENT_CHANNELS)
        maxvcpus = field(config, "maxvcpus", int, 0, 0, MAX_VCPUS)
        kernel = field(config, "kernel", str, None)
        ramdisk = field(config, "ramdisk", str, None)
        cmdline = field(config, "cmdline", str, None)
        disks = config.get("disks") or []
        if not isinstance(disks, list) or len(disks) > 16:
            raise RequestError("hyperdisco: create: disks must be a list of at most 16 disks")
        disk_specs = [_disk_spec(d) for d in disks]
        bootloader = field(config, "bootloader", str, None)
        boot_args = config.get("bootloader_args") or []
        if not isinstance(boot_args, list) or len(boot_args) > 64 or not all(
                isinstance(a, str) and "\0" not in a and len(a) <= 4096 for a in boot_args):
            raise RequestError("hyperdisco: create: bootloader_args must be a list of at most 64 strings")
        # with a bootloader (pygrub) the kernel comes from the boot disk; kernel/ramdisk name files in it
        cfg = domain_config(name, kernel, ramdisk, cmdline, memory, vcpus, bootloader=bootloader,
                            bootloader_args=boot_args, disks=disk_specs, maxvcpus=maxvcpus)
        cfg.maxmem_mib = maxmem if maxmem is not None and maxmem > memory else None
        cfg.max_event_channels = max_evtchn
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            if key in config:
                action = field(config, key, str, "destroy")
                if action not in SUPPORTED_ACTIONS:
                    raise RequestError(f"hyperdisco: create: {key} must be one of "
                                       f"{', '.join(SUPPORTED_ACTIONS)}")
                setattr(cfg, key, action)
        cfg.disks = disk_specs
        cfg.channels = agent_ops.channel_names(config.get("channels"))
        cfg.bvt = sched_ops.params_of_config(config)
        cfg.record = {k: config[k] for k in RECORD_KEYS if k in config}
        return cfg

    def _adopted_config(self, record: Any) -> DomainConfig:
        """The configuration of a domain a previous daemon created (for on_* actions and list)."""
        if not isinstance(record, dict):
            raise HyperdiscoError("hyperdisco: an adopted domain has no configuration record")
        try:
            return self._config(record)
        except HyperdiscoError as exc:  # e.g. its kernel is gone: keep the domain, it just cannot restart
            print(f"hyperdisco: {record.get('name')!r}: its configuration no longer loads ({exc}); "
                  "it will not be restarted", file=sys.stderr)
            cfg = DomainConfig(name=check_name(record.get("name"), "adopt"),
                               kernel=KernelImage([], 0, {}), initrd=None, cmdline="",
                               memory_mib=field(record, "memory", int, 256), on_reboot="destroy",
                               on_crash="destroy")
            cfg.record = record
            return cfg

    # -- virtual block devices (xl block-attach, block-detach, block-list) ----------------------------
    def op_block_attach(self, dom: str | int, disk: dict[str, Any]) -> int:
        return self.host.blk.attach(self._dom(dom), _disk_spec(disk))

    def op_block_detach(self, dom: str | int, vdev: str, timeout: float = 10.0) -> bool:
        return self.host.blk.detach(self._dom(dom), vdev, timeout)

    def op_block_list(self, dom: str | int) -> list[dict[str, Any]]:
        return self.host.blk.rows(self._dom(dom))

    # -- virtual network interfaces (xl network-attach, network-detach, network-list) -----------------
    def op_network_attach(self, dom: str | int, vif: dict[str, Any]) -> int:
        return self.host.attach_vif(self._dom(dom), _vif_config(vif, "network-attach"))

    def op_network_detach(self, dom: str | int, dev: int | str, timeout: float = 10.0) -> bool:
        return self.host.detach_vif(self._dom(dom), dev, timeout)

    def op_network_list(self, dom: str | int) -> list[dict[str, Any]]:
        return self.host.net.rows(self._dom(dom))

    def _row(self, d: DomainHandle) -> dict[str, Any]:
        online = [v.get("up") for v in d.vcpu_rows() if isinstance(v, dict) and "up" in v]
        return {"name": d.name, "domid": d.domid, "mem": memctl.current_mib(d),
                "vcpus": sum(map(bool, online)) if online else d.config.vcpus,
                "state": domain_state(d), "time": round(d.cpu_seconds(), 1),
                "outcome": d.outcome, "restarts": d.restarts}

    def _domains(self) -> list[DomainHandle]:
        doms = sorted(self.host.domains.values(), key=lambda d: d.domid)
        for d in doms:
            d.query()
        return doms

    def op_list(self, long: bool = False) -> list[dict[str, Any]]:
        rows = [{"name": "Domain-0", "domid": 0, "mem": _rss_mib(), "vcpus": os.cpu_count() or 1,
                 "state": "r-----", "time": round(time.process_time(), 1)}]
        for d in self._domains():
            row = self._row(d)
            if long:
                row.update(cmdline=d.config.cmdline, on_crash=d.config.on_crash, traps=d.traps(), pid=d.pid,
                           jail=d.jail, vifs=self.host.net.stats(d.domid),
                           ips=agent_ops.addresses(self.host.pv_channels.agent(d.domid)))
            rows.append(row)
        return rows

    def op_top(self) -> dict[str, Any]:
        doms = []
        for d in self._domains():
            t = d.traps()
            events = t.get("evtchn.raised", 0)
            doms.append({**self._row(d), "cpu_s": d.cpu_seconds(), "traps": sum(t.values()) - events,
                         "events": events, "mem_kib": memctl.current_mib(d) * 1024,
                         "vifs": self.host.net.stats(d.domid), "granted_s": self._granted_s(d)})
        return {"time": time.monotonic(), "host_cpu_s": time.process_time(), "dom0_mem_kib": _rss_mib() << 10,
                "domains": doms}

    def _granted_s(self, d: DomainHandle) -> float | None:
        """Core time the BVT arbiter granted the domain so far (its share, over an interval)."""
        ns = self.host.arbiter.granted_ns(d.domid) if self.host.arbiter is not None else None
        return None if ns is None else ns / 1e9

    def op_sched_bvt(self, **args: Any) -> dict[str, Any]:
        return sched_ops.sched_bvt(self.host, **args)

    def op_info(self) -> dict[str, Any]:
        with open("/proc/meminfo") as f:
            mem = {ln.split(":")[0]: int(ln.split()[1]) for ln in f}
        host = self.host
        return {"host": os.uname().nodename, "release": os.uname().release, "machine": os.uname().machine,
                "nr_cpus": os.cpu_count(), "total_memory": mem["MemTotal"] // 1024,
                "free_memory": mem["MemAvailable"] // 1024, "engine": host.engine_name,
                "xen_version": "4.17-hyperdisco", "domains": len(host.domains),
                "tsc_khz": host.tsc_khz, "uptime": time.monotonic() - host.started,
                "shared_cow_mib": sum(int(d.stats.get("shared_bytes", 0)) for d in self._domains()) >> 20,
                "page_sharing": page_sharing.stats(), "overcommit": host.admission.overcommit,
                "admission_limit_mib": host.admission.limit_mib,
                "jail_root": host.jail_root, "cgroups": str(host.cgroups.root) if host.cgroups else None}

    def _dom(self, dom: str | int) -> DomainHandle:
        return self.host.find(dom)

    def op_domid(self, dom: str | int) -> int:
        return self._dom(dom).domid

    def op_domname(self, dom: str | int) -> str:
        return self._dom(dom).name

    def op_pause(self, dom: str | int) -> None:
        self.host.pause(self._dom(dom))

    def op_unpause(self, dom: str | int) -> None:
        self.host.unpause(self._dom(dom))

    def op_mem_set(self, dom: str | int, memory: int) -> None:
        memctl.set_target(self.host, self._dom(dom), memory)

    def op_mem_max(self, dom: str | int, memory: int) -> None:
        memctl.set_max(self.host, self._dom(dom), memory)

    def op_destroy(self, dom: str | int) -> None:
        self.host.destroy(self._dom(dom))

    # -- vCPUs (xl vcpu-set, vcpu-list, vcpu-pin) --------------------------------------------------------
    def op_vcpu_set(self, dom: str | int, vcpus: int) -> None:
        self.host.set_vcpus(self._dom(dom), vcpus)

    def op_vcpu_list(self, dom: str | int | None = None) -> list[dict[str, Any]]:
        doms = [self._dom(dom)] if dom is not None else self._domains()
        if dom is not None:
            doms[0].query()
        return [row for d in doms for row in dom0_vcpus.rows(d)]

    def op_vcpu_pin(self, dom: str | int, vcpu: int | str, cpus: str) -> None:
        d = self._dom(dom)
        d.query()
        dom0_vcpus.pin(d, vcpu, cpus)

    def op_shutdown(self, dom: str | int, reason: str = "poweroff") -> None:
        if reason not in ("poweroff", "reboot", "halt", "suspend"):
            raise RequestError("hyperdisco: shutdown: reason must be poweroff, reboot, halt or suspend")
        d = self._dom(dom)
        if not agent_ops.shutdown(self.host.pv_channels.agent(d.domid), reason):
            self.host.request_shutdown(d, reason)

    def op_save(self, dom: str | int, file: str, timeout: float = 120.0,
                keep: bool = False) -> dict[str, Any]:
        return snapshot_ops.save(self.host, self._dom(dom), file, timeout, keep)

    def op_migrate(self, dom: str | int, dest: str, timeout: float = 120.0,
                   rate: float | None = None) -> dict[str, Any]:
        return migrate_ops.migrate(self.host, self._dom(dom), dest, timeout, rate, self.migrate_key)

    def op_migrate_receive(self, header: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        return migrate_ops.receive(self.host, header, conn, self._config)

    def op_restore(self, file: str, name: str | None = None, reseed: bool = True) -> dict[str, Any]:
        if not isinstance(file, str) or "\0" in file:
            raise RequestError("hyperdisco: restore: file must be a path")
        restored = snapshot_ops.restore(self.host, file, self._config, name=name)
        return self._reseeded(restored) if reseed is not False else {**restored, "reseeded": False,
                                                                     "reseed": "NOT reseeded: --no-reseed"}

    def _reseeded(self, restored: dict[str, Any]) -> dict[str, Any]:
        """A restored domain's kernel reseeds its CRNG with host randomness before restore answers
        (toolstack/reseed.py): else clones of one save file go on with one random stream."""
        d = self.host.domains.get(restored["domid"])
        if d is None or d.finished or not d.guest_up:
            return {**restored, "reseeded": False, "reseed": "NOT reseeded: its shell was not up"}
        started = time.monotonic()
        r = reseed.reseed(lambda cmd, timeout: self.op_exec(d.domid, cmd, timeout, interrupt=False),
                          agent=self.host.pv_channels.agent(d.domid) is not None)
        return {**restored, **r, "reseed_seconds": round(time.monotonic() - started, 3)}

    def op_wait(self, dom: str | int, timeout: float = 60.0) -> bool:
        return self.host.wait_gone(self._dom(dom), timeout)

    def op_dmesg(self, clear: bool = False) -> list[str]:
        lines = list(self.host.dmesg)
        if clear:
            self.host.dmesg.clear()
        return lines

    def op_xenstore(self, **req: Any) -> Any:
        return self.xenstore.one(req)

    def op_xenstore_tx(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.xenstore.batch(ops)

    def op_exec(self, dom: str | int, command: str, timeout: float = 120.0,
                conn: socket.socket | None = None, interrupt: bool = True) -> dict[str, Any]:
        """`interrupt`: Ctrl-C on a timeout (not for restore's reseed: the console may be a program the
        saved guest ran in the foreground, which is the user's)."""
        d = self._dom(dom)
        lock = self.exec_locks.setdefault(d.domid, threading.Lock())
        queued = time.monotonic() + timeout
        while not lock.acquire(timeout=0.2):  # a client that goes away while it waits gives up its turn
            if conn is not None and _client_gone(conn):
                raise HyperdiscoError(f"hyperdisco: exec in {d.name}: the client went away")
            if time.monotonic() > queued:
                raise HyperdiscoError(f"hyperdisco: exec in {d.name}: another exec is still running")
        try:
            agent = self.host.pv_channels.agent(d.domid)
            if agent is not None and agent_ops.agent_for_exec(agent, d, timeout, conn, _client_gone):
                return agent_ops.exec_via_agent(agent, d.name, command, timeout)
            console = self.host.consoles[d.domid]
            fresh = not d.guest_up
            session = ExecSession(command, d.input, poweroff=False, booting=fresh)
            console.attach(session.feed, replay=fresh)
            if not fresh:
                session.start(cursor_asked=prompt_asked(console.history()))
            deadline = time.monotonic() + timeout
            try:
                while not session.done.wait(0.2):
                    if d.finished:
                        raise HyperdiscoError(f"hyperdisco: exec in {d.name}: domain stopped ({d.outcome})")
                    if time.monotonic() > deadline:
                        if interrupt:  # interrupt what still runs, so the next exec finds a prompt
                            d.input(b"\x03")
                        raise HyperdiscoError(f"hyperdisco: exec in {d.name}: no answer in {timeout:.0f}s")
                    if conn is not None and _client_gone(conn):
                        d.input(b"\x03")
                        raise HyperdiscoError(f"hyperdisco: exec in {d.name}: the client went away")
            finally:
                console.detach(session.feed)
        finally:
            lock.release()
        return {"status": session.exit_status, "output": base64.b64encode(session.output).decode()}

    def op_file_read(self, dom: str | int, path: str, timeout: float = 300.0) -> dict[str, Any]:
        d = self._dom(dom)
        return agent_ops.file_read(self.host.pv_channels.agent(d.domid), d.name, path, timeout)

    def op_file_write(self, dom: str | int, path: str, data: str, append: bool = False,
                      timeout: float = 300.0) -> None:
        d = self._dom(dom)
        agent_ops.file_write(self.host.pv_channels.agent(d.domid), d.name, path, data, append, timeout)

    # -- serving ----------------------------------------------------------------------------------------
    def handle(self, conn: socket.socket, only: tuple[str, ...] | None = None) -> None:
        """Serve one control connection; `only`: the operations allowed on it (the migration listener's)."""
        f = conn.makefile("rb")
        while True:
            line = f.readline(MAX_REQUEST_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES and not line.endswith(b"\n"):
                conn.sendall(encode({"ok": False, "error": f"hyperdisco: request larger than "
                                                          f"{MAX_REQUEST_BYTES} bytes"}))
                return  # the rest of the line cannot be resynchronised: close
            try:
                op, args = parse_request(line)
                if only is not None and op not in only:
                    raise RequestError(f"hyperdisco: {op} is not served here")
                if op == "migrate_receive":  # the connection becomes the stream, in the domain's process
                    reply = {"ok": True, "result": self.op_migrate_receive(args["header"], conn)}
                    conn.sendall(encode(reply))
                    os.close(conn.detach())  # no shutdown: the domain process reads on
                    return
                if op == "console":
                    self._console_stream(conn, f, args["dom"])
                    return
                if op == "watch":
                    self._watch_stream(conn, f, args["path"])
                    return
                if op == "events":
                    self._events_stream(conn, f)
                    return
                if op == "exec":
                    args["conn"] = conn
                reply = {"ok": True, "result": getattr(self, f"op_{op}")(**args)}
            except HyperdiscoError as exc:
                reply = _error_reply(exc)
            except Exception as exc:  # a bug must cost one request, not the connection or the daemon
                self.host.log(f"control: {type(exc).__name__}: {exc}"[:400])
                reply = {"ok": False, "error": f"hyperdisco: internal error ({type(exc).__name__})"}
            conn.sendall(encode(reply))

    def _console_stream(self, conn: socket.socket, f: Any, dom: str | int) -> None:
        """The domain's console, following it: through a restart (on_reboot/on_crash "restart", the same
        console buffer under a new ID) keystrokes go to the new incarnation (those typed in between wait
        for it); when the domain is gone for good, or stopped and preserved, the guest's last output is
        written and the stream ends. Why it ended is the `events` stream's to say."""
        d = self._dom(dom)
        console = self.host.consoles[d.domid]
        conn.sendall(encode({"ok": True, "result": {"domid": d.domid}}))
        out = ClientStream(conn)
        console.attach(out.put, replay=True)
        follow = ConsoleFollower(self.host, d, out)
        try:
            while not out.closed.is_set():
                data = f.read1(4096)
                if not data:
                    break
                target = follow.target()
                if target is None or not target.input(data):
                    break  # the domain ended, or the guest left too much input unread
        except (OSError, ValueError):
            pass
        finally:
            follow.stop()
            console.detach(out.put)
            if follow.ended:
                out.finish()
            out.close()

    def _watch_stream(self, conn: socket.socket, f: Any, path: str | list[str]) -> None:
        """Watches on one or more paths (the token of each is its path, as xenstore-watch sets them): an
        answer, then one {"path", "watch"} line per event."""
        paths = [path] if isinstance(path, str) else path
        out = ClientStream(conn, start=False)  # xenstored fires a new watch at once: after our answer

        def on_watch(p: str, token: str) -> None:
            out.put(encode({"path": p, "watch": token}))

        c = self.host.xenstored.local_connection(on_watch)
        try:
            for p in paths:
                try:
                    c.watch(p, p)
                except XsError as exc:
                    err = XsRequestError(exc.name, f"hyperdisco: xenstore watch {p[:200]}: {exc.name}")
                    conn.sendall(encode(_error_reply(err)))
                    return
            conn.sendall(encode({"ok": True, "result": None}))
            out.start()
            while not out.closed.is_set():  # until the client hangs up
                r, _w, _x = select.select([conn], [], [], 1.0)
                if r and not f.read1(4096):
                    break
        except OSError:
            pass
        finally:
            c.close()
            out.close()

    def _events_stream(self, conn: socket.socket, f: Any) -> None:
        """Domain state changes (Host.add_listener): an answer, then one {domain, domid, event, outcome,
        time} line per change, through a bounded queue (a client that falls behind is dropped; the host
        never waits for it)."""
        out = ClientStream(conn, start=False)  # what happens before our answer is sent after it

        def on_event(event: dict[str, Any]) -> None:
            out.put(encode(event))

        self.host.add_listener(on_event)
        try:
            conn.sendall(encode({"ok": True, "result": None}))
            out.start()
            while not out.closed.is_set():  # until the client hangs up or is dropped
                r, _w, _x = select.select([conn], [], [], 1.0)
                if r and not f.read1(4096):
                    break
        except (OSError, ValueError):
            pass
        finally:
            self.host.remove_listener(on_event)
            out.close()

    def _claim_socket(self) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HyperdiscoError(f"hyperdisco: cannot create {path.parent}: {exc.strerror}") from None
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise HyperdiscoError(f"hyperdisco: a daemon is already serving {path}")
            except PermissionError:
                raise HyperdiscoError(f"hyperdisco: {path} belongs to a daemon you may not reach "
                                      "(permission denied); choose another --socket") from None
            except OSError:
                try:
                    path.unlink()
                except OSError as exc:
                    raise HyperdiscoError(f"hyperdisco: cannot remove the stale socket {path}: "
                                          f"{exc.strerror}") from None
            finally:
                probe.close()

    def listen(self) -> socketserver.ThreadingUnixStreamServer:
        """The control socket, bound with its mode and group set (grant_socket), not yet served."""
        path = self.path
        daemon = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    daemon.handle(self.request)
                except OSError:
                    pass

        class Server(socketserver.ThreadingUnixStreamServer):
            request_queue_size = LISTEN_BACKLOG
            daemon_threads = True

        old = os.umask(0o177)
        try:
            server = Server(str(path), Handler)
        except OSError as exc:
            raise HyperdiscoError(f"hyperdisco: cannot serve {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        try:
            self.grant_socket(path)
        except HyperdiscoError:
            server.server_close()
            Path(path).unlink(missing_ok=True)
            raise
        self.host.log(f"hyperdisco daemon serving {path}" + (
            f" (group {self.group_gid}, 0660)" if self.group_gid is not None else ""))
        return server

    def grant_socket(self, path: str | Path) -> None:
        """A socket this daemon serves (the control socket; the xenstored socket too) made reachable as
        `--group` says: 0660 and the group's, else 0600. Call it right after bind (which made it 0600 under
        the daemon's umask), before listening matters; the directory must let the group through."""
        path = Path(path)
        try:
            if self.group_gid is None:
                os.chmod(path, 0o600)
                return
            os.chown(path, -1, self.group_gid)
            os.chmod(path, 0o660)
        except OSError as exc:
            raise HyperdiscoError(f"hyperdisco: cannot give {path} to group {self.group_gid}: "
                                  f"{exc.strerror}") from None
        parent = path.parent.stat()
        if not parent.st_mode & 0o011 and not (parent.st_gid == self.group_gid and parent.st_mode & 0o010):
            print(f"hyperdisco: warning: {path.parent} does not let group {self.group_gid} through "
                  "(no search permission); its members cannot reach the socket", file=sys.stderr)

    def listen_migration(self, where: str) -> socketserver.ThreadingTCPServer:
        """`--migrate-listen [HOST:]PORT`: a TCP listener that serves migrate_receive and nothing else
        (whoever reaches it can make this daemon run a domain, so a peer proves it holds the key of
        --migrate-key first: migrate_ops.server_handshake)."""
        if self.migrate_key is None:
            raise HyperdiscoError("hyperdisco: --migrate-listen needs --migrate-key FILE (a secret both "
                                  "daemons share)")
        key: bytes = self.migrate_key
        host, _, port = where.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise HyperdiscoError(f"hyperdisco: --migrate-listen {where[:100]!r}: expected [HOST:]PORT")
        daemon = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    if migrate_ops.server_handshake(self.request, key):
                        daemon.handle(self.request, only=("migrate_receive",))
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            server = Server((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        except OSError as exc:
            raise HyperdiscoError(f"hyperdisco: cannot listen on {where[:100]}: {exc.strerror}") from None
        threading.Thread(target=server.serve_forever, name="hd-migrate-listen", daemon=True).start()
        self.host.log(f"migrations received on {where}")
        return server

    def serve_forever(self, migrate_listen: str | None = None, migrate_key: str | None = None) -> None:
        if migrate_key is not None:
            self.migrate_key = migrate_ops.read_key(migrate_key)
        tcp = self.listen_migration(migrate_listen) if migrate_listen else None
        server = self.listen()
        path = self.path
        import signal

        def on_term(_sig: int, _frame: Any) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, on_term)
        xs_door: XenstoredSocket | None = None
        try:
            xs_door = self._serve_xenstored(self.group_gid)
            server.serve_forever()
        finally:
            if xs_door is not None:
                xs_door.close()
            server.server_close()
            if tcp is not None:
                tcp.shutdown()
                tcp.server_close()
            Path(path).unlink(missing_ok=True)
            self.host.close()

    def _serve_xenstored(self, gid: int | None = None) -> XenstoredSocket | None:
        """xenstored's wire protocol on its Unix socket, for domain 0's tools (xenstore-utils, pyxs).
        A path given explicitly must be served; the default one ($XENSTORED_PATH or
        /run/xenstored/socket) is skipped with a log line when it cannot be (another xenstored holds
        it, or no permission), as the control socket is the daemon's essential door."""
        if self.xenstored_socket == "none":
            return None
        path = xenstored_socket_path(self.xenstored_socket)
        door = XenstoredSocket(self.host.xenstored, path, gid=gid, log=self.host.log)
        try:
            door.start()
        except HyperdiscoError as exc:
            if self.xenstored_socket is not None:
                raise
            self.host.log(f"{exc} (xenstored's socket not served; --xenstored-socket picks another)")
            return None
        self.host.log(f"xenstored serving {path}")
        return door


def group_id(group: str) -> int:
    """`--group`'s argument: a group name, or a numeric ID."""
    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise HyperdiscoError(f"hyperdisco: --group: no group named {group[:64]!r}") from None


def _client_gone(conn: socket.socket) -> bool:
    """The client hung up (its end is readable and at EOF); never blocks."""
    try:
        r, _w, _x = select.select([conn], [], [], 0)
        return bool(r) and conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):
        return True


def _error_reply(exc: HyperdiscoError) -> dict[str, Any]:
    """A refused request's answer: its one line, and Xen's error name for a xenstore refusal."""
    reply: dict[str, Any] = {"ok": False, "error": _one_line(str(exc))}
    if isinstance(exc, XsRequestError):
        reply["errno"] = exc.errno
    return reply


def _one_line(text: str) -> str:
    return " ".join(text.split())[:1000]
