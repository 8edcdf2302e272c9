"""Domain 0's handle on one domain: the domain process it started, the channel to it, and the backends
that live in domain 0 for it (xenconsoled's end of the console ring, xenstored's end of the store ring,
the relayed xenstore connections of its block backends).

Domain 0 maps only the domain's special pages (a memfd it made and handed to the process), never its RAM.
Nothing here waits on the domain process: messages to it are sent without blocking (a process that stops
reading its channel is killed), and its messages are handled on one reader thread per domain.
"""

from __future__ import annotations

import base64
import collections
import mmap
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.console import ConsoleBackend, ConsoleBuffer
from ..backends.xenstore import persist
from ..core.domain import DomainConfig
from ..core.memory import PAGE, ForeignPages
from ..core.ratelimit import RateLimiter
from ..errors import HyperdiscoError
from ..loader.shared_image import shared_kernel_image
from ..platform import layout
from ..vmm.channel import Channel, ChannelClosed, PendingReplies
from .relay import XenstoreRelay
from .spawner import Spawner

if TYPE_CHECKING:
    from .host import Host

# what the default guest's init prints once its shell is up (hyperdisco/images/guest/rc)
GUEST_READY = b"hyperdisco-guest: up"
BUILD_TIMEOUT_S = 120.0
QUERY_TIMEOUT_S = 2.0
MAX_QUEUED = 4096  # messages waiting for a domain process to read them
BLK_TIMEOUT_S = 30.0
MAX_LOG_LINE = 512


class DomainHandle:
    def __init__(self, host: Host, domid: int, config: DomainConfig, console: ConsoleBuffer) -> None:
        self.host = host
        self.domid = domid
        self.config = config
        self.name = config.name
        self.console_buffer = console
        self.created = time.monotonic()
        self.first_output: float | None = None
        self.saved = threading.Event()  # save -c: the process wrote the checkpoint (saved_detail says how)
        self.saved_detail = ""
        self.migration: queue.Queue[dict[str, Any]] = queue.Queue()  # live migration's "migrate" messages
        self.guest_up = False  # GUEST_READY seen on its console (kept even when the history scrolls)
        self._tail = b""
        self.outcome: str | None = None
        self.outcome_detail = ""
        self.finished = False
        self.paused = False
        self.done = threading.Event()
        self.reaped = False
        self.creating = True  # until Host.create is done with it: the reaper leaves it alone
        self.restarts = 0
        self.restart_pending = False
        self.successor: DomainHandle | None = None
        self.on_shutdown: Callable[[DomainHandle], None] | None = None
        self.stats: dict[str, Any] = {}
        self.jail = ""
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ch: Channel | None = None
        self.pages: ForeignPages | None = None
        self.adopt_path: Path | None = None
        self.spawner: Spawner | None = None  # the template process this domain's process was forked from
        self.adopted_vbds: dict[str, Any] = {}
        self.adopted_links: object = None  # its brokered event channels, as its process reported them
        self.console: ConsoleBackend | None = None
        self.relay: XenstoreRelay | None = None
        self.console_port = 0
        self._pending = PendingReplies()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._outq: collections.deque[tuple[dict[str, Any], list[int]]] = collections.deque()
        self._out_cond = threading.Condition()
        self._out_closed = False
        self._notify_pending: set[str] = set()
        self._log_limit = RateLimiter(burst=100, rate=20.0)

    # -- start ------------------------------------------------------------------------------------------
    def start(self, engine: str, clock_params: dict[str, float], jail_root: str | None,
              cgroup: Callable[[int, DomainConfig], None] | None = None,
              adopt_path: Path | None = None, record: Any = None, spawner: Spawner | None = None,
              sched: bool = False, restore: str | int | None = None, incoming: int | None = None) -> None:
        """Start the domain process and build the domain in it; a one-line HyperdiscoError if it could not
        be built (the process is gone again then). With `adopt_path`, the process listens there for a
        new domain 0 should this one die, and `record` (this domain's configuration, for that successor)
        is kept beside it, in domain 0's own file: never in the domain process, which may be hostile."""
        cfg = self.config
        special = os.memfd_create(f"hyperdisco-d{self.domid}-special", os.MFD_CLOEXEC)
        parent, child = Channel.pair()
        initrd_fd = restore_fd = None
        listener: socket.socket | None = None
        try:
            os.ftruncate(special, layout.SPECIAL_PAGES * PAGE)
            img = shared_kernel_image(cfg.kernel)
            fds = [special, img.fd]
            if cfg.initrd is not None:
                initrd_fd = _memfd_with(f"hyperdisco-d{self.domid}-initrd", cfg.initrd)
                fds.append(initrd_fd)
            adopt_index = None
            if adopt_path is not None:
                persist.save(adopt_path.with_suffix(".json"), {"record": record})
                listener = _listen(adopt_path)
                self.adopt_path = adopt_path
                adopt_index = len(fds)
                fds.append(listener.fileno())
            restore_index = None
            if restore is not None:  # a saved domain (toolstack/snapshot_ops.py): its file, opened here
                restore_fd = (os.dup(restore) if isinstance(restore, int)  # its sealed copy (sealed_saves.py)
                              else os.open(restore, os.O_RDONLY | os.O_CLOEXEC))
                restore_index = len(fds)
                fds.append(restore_fd)
            incoming_index = None
            if incoming is not None:  # a live migration's stream (toolstack/migrate_ops.py)
                incoming_index = len(fds)
                fds.append(incoming)
            if spawner is not None and spawner.alive:  # forked from the template: no interpreter start
                self.pid = spawner.spawn(child.fileno())
                self.spawner = spawner
            else:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "hyperdisco.vmm", str(child.fileno())],
                    pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True,
                    close_fds=True)
                self.pid = self.proc.pid
            child.sock.close()  # the process has its own copy (no shutdown: that would end it for both)
            if cgroup is not None:
                cgroup(self.pid, cfg)
            self.ch = parent
            self._send_build(parent, {
                "t": "build", "domid": self.domid, "name": cfg.name, "engine": engine, "clock": clock_params,
                "memory_mib": cfg.memory_mib, "maxmem_mib": cfg.maxmem_mib, "vcpus": cfg.vcpus,
                "max_event_channels": cfg.max_event_channels, "maxvcpus": cfg.maxvcpus,
                "cmdline": cfg.cmdline,
                "kernel": {"pvh_entry": cfg.kernel.pvh_entry, "gpa": img.gpa, "size": img.size,
                           "segments": [[s.paddr, s.memsz] for s in cfg.kernel.segments]},
                "initrd_size": len(cfg.initrd) if cfg.initrd is not None else None,
                "jail_root": jail_root, "adopt_fd": adopt_index, "sched": sched,
                "restore_fd": restore_index, "incoming_fd": incoming_index}, fds)
            try:
                reply = self._await_built()
            except ChannelClosed:
                raise HyperdiscoError(f"hyperdisco: domain {self.name}: its process died while building it"
                                      f"{self._exit_text()}") from None
            self.jail = str(reply.get("jail", ""))
            self.console_port = int(reply["console_port"])
            self.pages = ForeignPages(special, [(layout.special_gpa(i), i * PAGE)
                                                for i in (layout.CONSOLE_PAGE, layout.STORE_PAGE)])
        except BaseException:
            self.kill()
            parent.close()
            raise
        finally:
            os.close(special)
            if initrd_fd is not None:
                os.close(initrd_fd)
            if restore_fd is not None:
                os.close(restore_fd)
            if listener is not None:
                listener.close()  # the process has it
        self._serve()

    @classmethod
    def adopt(cls, host: Host, path: Path, config_of: Callable[[Any], DomainConfig]) -> DomainHandle:
        """Take over a domain whose domain 0 died: connect to its process's adoption socket, get its
        state and its special pages, and serve it from here on (HyperdiscoError if it cannot be)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5.0)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise HyperdiscoError(f"hyperdisco: {path}: no domain process answers ({exc.strerror})") from None
        ch = Channel(sock)
        fds: list[int] = []
        try:
            ch.send({"t": "adopt"})
            msg, fds = ch.recv()
            if (msg.get("t") != "hello" or len(fds) != 1 or not path.stem.isdigit()
                    or msg.get("domid") != int(path.stem)):
                raise HyperdiscoError(f"hyperdisco: {path}: not the domain process of domain {path.stem}")
            sock.settimeout(None)
            # its configuration from domain 0's own record, not from what the process says
            saved = persist.load(path.with_suffix(".json"))
            config = config_of(saved.get("record") if saved else None)
            dom = cls(host, int(msg["domid"]), config, ConsoleBuffer())
            dom.ch, dom.pid, dom.adopt_path = ch, int(msg.get("pid", 0)), path
            dom.jail = str(msg.get("jail", ""))
            dom.console_port = int(msg["console_port"])
            dom.paused = bool(msg.get("paused"))
            vbds = msg.get("vbds")
            dom.adopted_vbds = vbds if isinstance(vbds, dict) else {}
            dom.adopted_links = msg.get("links")
            dom.stats = msg["stats"] if isinstance(msg.get("stats"), dict) else {}
            dom.guest_up = True  # it booted under the domain 0 before us
            dom.creating = False
            dom.pages = ForeignPages(fds[0], [(layout.special_gpa(i), i * PAGE)
                                              for i in (layout.CONSOLE_PAGE, layout.STORE_PAGE)])
        except ChannelClosed:
            ch.close()
            raise HyperdiscoError(f"hyperdisco: {path}: the domain process hung up") from None
        except (KeyError, TypeError, ValueError):
            ch.close()
            raise HyperdiscoError(f"hyperdisco: {path}: a bad answer from a domain process") from None
        finally:
            for fd in fds:
                os.close(fd)
        dom._serve()
        return dom

    def _serve(self) -> None:
        """Domain 0's backends for this domain, and the threads that carry its channel."""
        assert self.pages is not None
        self.console = ConsoleBackend(self.pages, layout.special_gpa(layout.CONSOLE_PAGE), self._console_out,
                                      lambda: self.notify("console"))
        self.relay = XenstoreRelay(self.domid, self.host.xenstored, self.send)
        self._reader = threading.Thread(target=self._read, name=f"hd-d{self.domid}", daemon=True)
        self._reader.start()
        self._writer = threading.Thread(target=self._write, name=f"hd-d{self.domid}-out", daemon=True)
        self._writer.start()

    def _send_build(self, ch: Channel, msg: dict[str, Any], fds: list[int]) -> None:
        try:
            ch.send(msg, fds)
        except ValueError as exc:  # a configuration too large for one message
            raise HyperdiscoError(f"hyperdisco: domain {self.name}: {exc}") from None
        except ChannelClosed:
            if self.proc is not None:
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    pass
            raise HyperdiscoError(f"hyperdisco: domain {self.name}: its process did not start"
                                  f"{self._exit_text()}") from None

    def _await_built(self) -> dict[str, Any]:
        assert self.ch is not None
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HyperdiscoError(f"hyperdisco: domain {self.name}: its process did not start in "
                                      f"{BUILD_TIMEOUT_S:.0f}s")
            ready, _w, _x = select.select([self.ch.sock], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                msg, fds = self.ch.recv()
            except ChannelClosed:
                raise HyperdiscoError(f"hyperdisco: domain {self.name}: its process died while building it"
                                      f"{self._exit_text()}") from None
            for fd in fds:
                os.close(fd)
            if msg.get("t") == "built":
                return msg
            if msg.get("t") == "error":
                raise HyperdiscoError(_one_line(str(msg.get("msg", "domain build failed"))))
            if msg.get("t") == "log":
                self.host.log(f"(d{self.domid}) {_one_line(str(msg.get('msg', '')))[:MAX_LOG_LINE]}")

    # -- to the domain process --------------------------------------------------------------------------
    def send(self, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        """Never blocks: the message joins this domain's queue, which its writer thread drains (the
        socket holds only a few datagrams). A process that lets MAX_QUEUED messages pile up has stopped
        reading its channel: it is killed (crash). The descriptors are duplicated for the queue."""
        if self.ch is None or self.finished:
            return
        with self._out_cond:
            if len(self._outq) >= MAX_QUEUED:
                overflow = True
            else:
                overflow = False
                self._outq.append((msg, [os.dup(fd) for fd in fds]))
                self._out_cond.notify()
        if overflow:
            self.host.log(f"domain {self.domid} ({self.name}): its process stopped reading; killing it")
            self.kill()

    def notify(self, what: str) -> None:
        """Signal the guest's console or store port; a signal already waiting to be sent covers this one."""
        self.send_coalesced(what, {"t": "notify", "what": what})

    def send_coalesced(self, key: str, msg: dict[str, Any]) -> None:
        """Send `msg` unless one with the same key still waits in the queue (event-channel signals: one
        pending covers many, so a peer that signals in a loop cannot fill this domain's queue)."""
        with self._out_cond:
            if key in self._notify_pending:
                return
            self._notify_pending.add(key)
            msg = {**msg, "_key": key}
        self.send(msg)

    def _write(self) -> None:
        ch = self.ch
        assert ch is not None
        while True:
            with self._out_cond:
                while not self._outq and not self._out_closed:
                    self._out_cond.wait()
                if not self._outq:
                    return
                msg, fds = self._outq.popleft()
                key = msg.pop("_key", None)
                if key is not None:
                    self._notify_pending.discard(key)
            try:
                ch.send(msg, fds)
            except ChannelClosed:
                pass
            finally:
                for fd in fds:
                    os.close(fd)

    def call(self, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = (),
             timeout: float = QUERY_TIMEOUT_S) -> dict[str, Any] | None:
        """A request the process answers with a reply carrying the same id; None if it does not in time."""
        reply: dict[str, Any] | None = self._pending.call(lambda req: self.send({**msg, "id": req}, fds),
                                                          timeout)
        return reply

    def query(self) -> dict[str, Any]:
        """Fresh statistics if the process answers quickly, else the last ones."""
        if not self.finished:
            reply = self.call({"t": "query"}, timeout=0.5)
            if reply is not None and isinstance(reply.get("stats"), dict):
                self.stats = reply["stats"]
        return self.stats

    def pause(self) -> None:
        self.paused = True
        self.send({"t": "pause"})

    def unpause(self) -> None:
        self.paused = False
        self.send({"t": "unpause"})

    def shutdown(self, outcome: str, detail: str = "") -> None:
        """Stop the domain now (xl destroy): ask its process, which reports back; kill it if it does not."""
        if self.finished:
            return
        if self._reader is None:  # never served (its create failed): nothing to ask, nobody to wait for
            self.kill()
            self._finished(outcome, detail)
            return
        self.send({"t": "destroy", "outcome": outcome, "detail": detail})
        if not self.done.wait(5.0):
            self.kill()
            self._finished(outcome, detail or "its process did not stop; killed")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            return
        if self.spawner is not None and self.spawner.status(self.pid) is not None:
            return  # it ended; its pid may be someone else's now
        if self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- virtual block devices (the toolstack side is backends/blkback/manager.py) ----------------------
    def attach_vbd(self, devid: int, args: dict[str, Any], records: list[tuple[str, str, bool]],
                   fds: list[int]) -> None:
        reply = self.call({"t": "blk-attach", "devid": devid, "args": args, "files": records}, fds,
                          timeout=BLK_TIMEOUT_S)
        if reply is None:
            raise HyperdiscoError(f"hyperdisco: {self.name}: its process did not take disk {args['vdev']}")
        if reply.get("error"):
            raise HyperdiscoError(_one_line(str(reply["error"])))

    def detach_vbd(self, devid: int, wait_s: float) -> bool:
        reply = self.call({"t": "blk-detach", "devid": devid, "wait": wait_s}, timeout=wait_s + BLK_TIMEOUT_S)
        return bool(reply and reply.get("ok"))

    # -- vifs (the toolstack side is backends/net/manager.py) ------------------------------------------
    def attach_vif(self, devid: int, args: dict[str, Any], fd: int) -> None:
        """Hand the domain's netback its end of the vif's socket pair (closed here in any case)."""
        try:
            reply = self.call({"t": "net-attach", "devid": devid, "args": args}, [fd], timeout=BLK_TIMEOUT_S)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
        if reply is None:
            raise HyperdiscoError(f"hyperdisco: {self.name}: its process did not take vif {devid}")
        if reply.get("error"):
            raise HyperdiscoError(_one_line(f"hyperdisco: {self.name}: vif {devid}: {reply['error']}"))

    def detach_vif(self, devid: int, wait_s: float) -> bool:
        reply = self.call({"t": "net-detach", "devid": devid, "wait": wait_s}, timeout=wait_s + BLK_TIMEOUT_S)
        return bool(reply and reply.get("ok"))

    def input(self, data: bytes) -> bool:
        return self.console.input(data) if self.console is not None else False

    # -- from the domain process ------------------------------------------------------------------------
    def _console_out(self, data: bytes) -> None:
        if self.first_output is None:
            self.first_output = time.monotonic()
        if not self.guest_up:
            window = self._tail + data
            self.guest_up = GUEST_READY in window
            self._tail = window[-(len(GUEST_READY) - 1):]
        self.console_buffer.write(data)

    def _read(self) -> None:
        assert self.ch is not None
        while True:
            try:
                msg, fds = self.ch.recv()
            except ChannelClosed:
                break
            if msg.get("t") == "gnt-shared":  # a page it lends another domain (dom0/grants.py)
                self.host.grants.shared(self, msg, fds)
                fds = []
            for fd in fds:  # a domain process has no other business sending descriptors
                os.close(fd)
            try:
                if self._handle(msg):
                    break
            except Exception as exc:  # the domain's messages are input: a bad one ends the domain
                self.host.log(f"domain {self.domid}: bad message from its process: {type(exc).__name__}")
                self.kill()
                break
        if not self.finished:
            if self.proc is not None:
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.kill()
            elif self.spawner is not None and self.spawner.wait_exit(self.pid, 5.0) is None:
                self.kill()
            self._finished("crash", f"its process died{self._exit_text()}")
        self._reap_process()

    def _handle(self, msg: dict[str, Any]) -> bool:
        t = msg.get("t")
        if t == "kick":
            if msg.get("what") == "console" and self.console is not None:
                self.console.kick()
            elif msg.get("what") == "store":
                self.host.xenstored.kick(self.domid)
        elif t == "out":
            data = base64.b64decode(str(msg.get("data", "")))
            self._console_out(data)
        elif t == "log":  # already limited per kind in the process; this bounds a compromised one
            text = _one_line(str(msg.get("msg", "")))[:MAX_LOG_LINE]
            prefix = f"(d{self.domid}) "
            line = text if text.startswith(prefix) else prefix + text
            self._log_limit.log(self.host.log, "process", line)
        elif t == "xs" and self.relay is not None:
            self.relay.request(msg)
        elif t == "xs-close" and self.relay is not None:
            self.relay.close_conn(msg.get("conn"))
        elif t == "reply":
            self._pending.deliver(msg.get("id"), msg)
        elif t == "migrate":  # a live migration's progress (toolstack/migrate_ops.py)
            self.migration.put(msg)
        elif t == "saved":  # save -c: the checkpoint is written (toolstack/snapshot_ops.py)
            self.saved_detail = _one_line(str(msg.get("detail", "")))[:MAX_LOG_LINE]
            self.saved.set()
        elif t == "evtchn-bind":
            self.host.broker.bind(self, msg)
        elif t == "evtchn-send":
            self.host.broker.send(self, msg)
        elif t == "evtchn-close":
            self.host.broker.close(self, msg)
        elif t == "sched" and self.host.arbiter is not None:  # its gate asks for cores (dom0/arbiter.py)
            self.host.arbiter.message(self, msg)
        elif t == "gnt-map":
            self.host.grants.map(self, msg)
        elif t == "gnt-unmap":
            self.host.grants.unmap(self, msg)
        elif t == "shutdown":
            if isinstance(msg.get("stats"), dict):
                self.stats = msg["stats"]
            outcome = msg.get("outcome")
            self._finished(outcome if outcome in OUTCOMES else "crash", _one_line(str(msg.get("detail", ""))),
                           logged=True)  # the process said so in its own log line
            return True
        return False

    def _finished(self, outcome: str, detail: str, logged: bool = False) -> None:
        with self._lock:
            if self.finished:
                return
            self.outcome, self.outcome_detail, self.finished = outcome, detail, True
        if not logged:
            self.host.log(f"(d{self.domid}) shutdown: {outcome}{' (' + detail + ')' if detail else ''}")
        self.done.set()
        if self.on_shutdown is not None:
            self.on_shutdown(self)

    def _exit_text(self) -> str:
        if self.proc is not None:
            code = self.proc.poll()
        elif self.spawner is not None:
            code = self.spawner.status(self.pid)
        else:
            return ""
        if code is None:
            return ""
        if code < 0:
            try:
                return f" (signal {signal.Signals(-code).name})"
            except ValueError:
                return f" (signal {-code})"
        return f" (exit status {code})"

    def _reap_process(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()

    # -- end --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release domain 0's side: the process must be finished (or is killed now)."""
        self.kill()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(10.0)
        with self._out_cond:
            self._out_closed = True
            for _msg, fds in self._outq:
                for fd in fds:
                    os.close(fd)
            self._outq.clear()
            self._out_cond.notify()
        if self.relay is not None:
            self.relay.close()
        if self.ch is not None:
            self.ch.close()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(5.0)
        if self.pages is not None:
            self.pages.close()
        if self.adopt_path is not None:
            self.adopt_path.unlink(missing_ok=True)
            self.adopt_path.with_suffix(".json").unlink(missing_ok=True)

    # -- what list/top/run show -------------------------------------------------------------------------
    def cpu_seconds(self) -> float:
        return float(self.stats.get("cpu_s", 0.0))

    def traps(self) -> dict[str, int]:
        traps = self.stats.get("traps", {})
        return {str(k): int(v) for k, v in traps.items()} if isinstance(traps, dict) else {}

    def vcpu_rows(self) -> list[dict[str, Any]]:
        rows = self.stats.get("vcpus")
        return rows if isinstance(rows, list) else [{} for _ in range(self.config.vcpus)]

    def describe(self) -> str:
        return "; ".join(str(v.get("describe", "")) for v in self.vcpu_rows())


OUTCOMES = ("poweroff", "reboot", "crash", "destroyed", "suspend", "watchdog", "soft_reset", "timeout")


def _listen(path: Path) -> socket.socket:
    """The adoption socket of a new domain process: domain 0's own, mode 0600."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(1)
    return sock


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _memfd_with(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, len(data))
        if data:
            with mmap.mmap(fd, len(data)) as m:
                m[:] = data
    except BaseException:
        os.close(fd)
        raise
    return fd
