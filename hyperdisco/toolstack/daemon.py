"""`hyperdisco daemon`: the hypervisor process. It hosts every domain, xenstored and the console
backends, and serves the control protocol (toolstack/protocol.py) on a Unix socket."""

from __future__ import annotations

import base64
import json
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from ..core import page_sharing
from ..core.domain import Domain
from ..core.hypervisor import Hypervisor
from ..errors import HyperdiscoError
from .build import domain_config
from .console import ExecSession
from .protocol import encode, socket_path
from .xlcfg import DiskSpec


def domain_state(dom: Domain, hv: Hypervisor) -> str:
    """xl's six state letters: running, blocked, paused, shutdown, crashed, dying."""
    running = any(ctx in hv.scheduler.running() for ctx in dom.vcpus)
    blocked = all(ctx.halted or ctx.blocked for ctx in dom.vcpus)
    shut = dom.finished and dom.outcome != "crash"
    crashed = dom.finished and dom.outcome == "crash"
    flags = (("r", running), ("b", blocked and not running and not dom.finished), ("p", dom.paused),
             ("s", shut), ("c", crashed), ("d", False))
    return "".join(c if f else "-" for c, f in flags)


def _disk_spec(d: dict[str, Any]) -> DiskSpec:
    """A DiskSpec sent over the socket (dataclasses.asdict of the client's); unknown keys refused."""
    if not isinstance(d, dict) or not isinstance(d.get("target"), str) or not isinstance(d.get("vdev"), str):
        raise HyperdiscoError("hyperdisco: bad disk specification")
    known = {"target", "format", "vdev", "access", "extra"}
    return DiskSpec(**{k: v for k, v in d.items() if k in known})


def _rss_mib() -> int:
    """Domain 0's memory: this process's resident set."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


class Daemon:
    def __init__(self, sock: str | None = None, engine: str = "tcg", workers: int | None = None,
                 verbose: bool = False, share_pages: bool = False) -> None:
        self.path = socket_path(sock)
        if share_pages:
            page_sharing.enable()
        self.hv = Hypervisor(engine, workers, log_sink=(lambda m: print(m, flush=True)) if verbose else None)
        self.exec_locks: dict[int, threading.Lock] = {}

    # -- operations -------------------------------------------------------------------------------------
    def op_create(self, config: dict[str, Any]) -> dict[str, Any]:
        get = config.get
        cfg = domain_config(config["name"], get("kernel"), get("ramdisk"), get("cmdline"),
                            int(get("memory", 256)), int(get("vcpus", 1)))
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            if key in config:
                setattr(cfg, key, config[key])
        cfg.disks = [_disk_spec(d) for d in get("disks") or []]
        dom = self.hv.create(cfg)
        return {"domid": dom.domid, "name": dom.name}

    # -- virtual block devices (xl block-attach, block-detach, block-list) ----------------------------
    def op_block_attach(self, dom: str, disk: dict[str, Any]) -> int:
        return self.hv.blk.attach(self._dom(dom), _disk_spec(disk))

    def op_block_detach(self, dom: str, vdev: str, timeout: float = 10.0) -> bool:
        return self.hv.blk.detach(self._dom(dom), vdev, timeout)

    def op_block_list(self, dom: str) -> list[dict[str, Any]]:
        return self.hv.blk.rows(self._dom(dom))

    def _row(self, d: Domain) -> dict[str, Any]:
        return {"name": d.name, "domid": d.domid, "mem": d.config.memory_mib, "vcpus": len(d.vcpus),
                "state": domain_state(d, self.hv), "time": round(d.cpu_seconds(), 1),
                "outcome": d.outcome, "restarts": d.restarts}

    def op_list(self, long: bool = False) -> list[dict[str, Any]]:
        rows = [{"name": "Domain-0", "domid": 0, "mem": _rss_mib(), "vcpus": os.cpu_count() or 1,
                 "state": "r-----", "time": round(self._dom0_cpu_s(), 1)}]
        for d in sorted(self.hv.domains.values(), key=lambda d: d.domid):
            row = self._row(d)
            if long:
                row.update(cmdline=d.config.cmdline, on_crash=d.config.on_crash, traps=d.traps())
            rows.append(row)
        return rows

    def op_top(self) -> dict[str, Any]:
        doms = []
        for d in sorted(self.hv.domains.values(), key=lambda d: d.domid):
            t = d.traps()
            events = t.get("evtchn.raised", 0)
            doms.append({**self._row(d), "cpu_s": d.cpu_seconds(), "traps": sum(t.values()) - events,
                         "events": events, "mem_kib": d.config.memory_mib * 1024})
        return {"time": time.monotonic(), "host_cpu_s": self._dom0_cpu_s(), "dom0_mem_kib": _rss_mib() << 10,
                "domains": doms}

    def _dom0_cpu_s(self) -> float:
        """Domain 0's own CPU time: this process's, less what its threads spent running guests."""
        guests = sum(d.cpu_seconds() for d in self.hv.domains.values())
        return max(0.0, time.process_time() - guests)

    def op_info(self) -> dict[str, Any]:
        with open("/proc/meminfo") as f:
            mem = {ln.split(":")[0]: int(ln.split()[1]) for ln in f}
        return {"host": os.uname().nodename, "release": os.uname().release, "machine": os.uname().machine,
                "nr_cpus": os.cpu_count(), "total_memory": mem["MemTotal"] // 1024,
                "free_memory": mem["MemAvailable"] // 1024, "engine": self.hv.engine.name,
                "xen_version": "4.17-hyperdisco", "domains": len(self.hv.domains),
                "tsc_khz": self.hv.clock.tsc_khz(), "uptime": time.monotonic() - self.hv.started,
                "shared_cow_mib": sum(d.memory.shared_bytes for d in self.hv.domains.values()) >> 20,
                "page_sharing": page_sharing.stats()}

    def _dom(self, dom: str | int) -> Domain:
        return self.hv.find(dom)

    def op_domid(self, dom: str) -> int:
        return self._dom(dom).domid

    def op_domname(self, dom: str) -> str:
        return self._dom(dom).name

    def op_pause(self, dom: str) -> None:
        self.hv.pause(self._dom(dom))

    def op_unpause(self, dom: str) -> None:
        self.hv.unpause(self._dom(dom))

    def op_destroy(self, dom: str) -> None:
        self.hv.destroy(self._dom(dom))

    def op_shutdown(self, dom: str, reason: str = "poweroff") -> None:
        self.hv.request_shutdown(self._dom(dom), reason)

    def op_wait(self, dom: str, timeout: float = 60.0) -> bool:
        return self.hv.wait_gone(self._dom(dom), timeout)

    def op_dmesg(self, clear: bool = False) -> list[str]:
        lines = list(self.hv.dmesg)
        if clear:
            self.hv.dmesg.clear()
        return lines

    def op_xenstore(self, cmd: str, path: str, value: str | None = None) -> Any:
        xs = self.hv.xs
        if cmd == "read":
            v = xs.read(path)
            if v is None:
                raise HyperdiscoError(f"hyperdisco: xenstore: {path}: no such node")
            return v
        if cmd == "write":
            xs.write(path, value or "")
            return None
        if cmd == "rm":
            xs.rm(path)
            return None
        if cmd == "ls":
            return self._ls(xs, path)
        raise HyperdiscoError(f"hyperdisco: xenstore: unknown command {cmd!r}")

    def _ls(self, xs: Any, path: str, depth: int = 0) -> list[list[Any]]:
        out: list[list[Any]] = []
        for child in xs.directory(path) or []:
            full = path.rstrip("/") + "/" + child
            out.append([depth, child, xs.read(full) or ""])
            out.extend(self._ls(xs, full, depth + 1))
        return out

    def op_exec(self, dom: str, command: str, timeout: float = 120.0) -> dict[str, Any]:
        d = self._dom(dom)
        lock = self.exec_locks.setdefault(d.domid, threading.Lock())
        with lock:
            console = self.hv.consoles[d.domid]
            fresh = d.first_output is None or b"hyperdisco-guest: up" not in console.history()
            session = ExecSession(command, d.console.input, poweroff=False, booting=fresh)
            if fresh:
                console.attach(session.feed, replay=True)
            else:
                console.attach(session.feed)
                session.start()
            deadline = time.monotonic() + timeout
            try:
                while not session.done.wait(0.2):
                    if d.finished:
                        raise HyperdiscoError(f"hyperdisco: exec in {d.name}: domain stopped ({d.outcome})")
                    if time.monotonic() > deadline:
                        raise HyperdiscoError(f"hyperdisco: exec in {d.name}: no answer in {timeout:.0f}s")
            finally:
                console.detach(session.feed)
        return {"status": session.exit_status, "output": base64.b64encode(session.output).decode()}

    # -- serving ----------------------------------------------------------------------------------------
    def handle(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        for line in f:
            try:
                req = json.loads(line)
                op = req.pop("op")
                if op == "console":
                    self._console_stream(conn, f, req["dom"])
                    return
                if op == "watch":
                    self._watch_stream(conn, req["path"])
                    return
                fn = getattr(self, f"op_{op}", None)
                if fn is None:
                    raise HyperdiscoError(f"hyperdisco: unknown operation {op!r}")
                reply = {"ok": True, "result": fn(**req)}
            except HyperdiscoError as exc:
                reply = {"ok": False, "error": str(exc)}
            except (KeyError, TypeError, ValueError) as exc:
                reply = {"ok": False, "error": f"hyperdisco: bad request: {exc}"}
            conn.sendall(encode(reply))

    def _console_stream(self, conn: socket.socket, f: Any, dom: str) -> None:
        d = self._dom(dom)
        console = self.hv.consoles[d.domid]
        conn.sendall(encode({"ok": True, "result": {"domid": d.domid}}))

        def out(data: bytes) -> None:
            try:
                conn.sendall(data)
            except OSError:
                console.detach(out)

        console.attach(out, replay=True)
        try:
            while True:
                data = f.read1(4096) if hasattr(f, "read1") else conn.recv(4096)
                if not data or d.finished:
                    break
                d.console.input(data)
        finally:
            console.detach(out)

    def _watch_stream(self, conn: socket.socket, path: str) -> None:
        events: list[tuple[str, str]] = []
        cond = threading.Condition()

        def on_watch(p: str, token: str) -> None:
            with cond:
                events.append((p, token))
                cond.notify()

        c = self.hv.xenstored.local_connection(on_watch)
        c.watch(path, "hd")
        conn.sendall(encode({"ok": True, "result": None}))
        try:
            while True:
                with cond:
                    cond.wait_for(lambda: bool(events), timeout=1.0)
                    batch, events[:] = list(events), []
                for p, _t in batch:
                    conn.sendall(encode({"path": p}))
                if not batch:
                    conn.sendall(b"")
        except OSError:
            pass
        finally:
            c.close()

    def serve_forever(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise HyperdiscoError(f"hyperdisco: a daemon is already serving {path}")
            except OSError:
                path.unlink()
            finally:
                probe.close()
        daemon = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    daemon.handle(self.request)
                except OSError:
                    pass

        old = os.umask(0o177)
        try:
            server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old)
        server.daemon_threads = True
        os.chmod(path, 0o600)
        self.hv.log(f"hyperdisco daemon serving {path}")
        try:
            server.serve_forever()
        finally:
            server.server_close()
            Path(path).unlink(missing_ok=True)
            self.hv.close()
