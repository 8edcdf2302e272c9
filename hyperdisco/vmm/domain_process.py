"""The domain process: one domain's vCPUs, its hypervisor state and its block backends, in a jail.

Domain 0 starts it with one end of a channel (vmm/channel.py) and sends the build message: the domain's
configuration and the descriptors it needs (the special-pages memfd it shares with domain 0, the shared
kernel image, the initramfs). The process builds the domain (builder.py), enters its jail (jail.py), says
"built", and runs the guest on its own scheduler. From then on it answers domain 0's messages:

  notify console|store     domain 0's xenconsoled/xenstored moved data in a ring: signal the guest
  pause, unpause, destroy  as xl's verbs
  mem-max                  the most pages the guest may hold (xl mem-set, mem-max: dom0/memctl.py)
  query                    statistics and the vCPUs' whereabouts, for list/top/run --stats
  blk-attach, blk-detach   a virtual block device with its image descriptors (opened by domain 0)
  net-attach, net-detach   a vif with its end of the socket pair to domain 0's switch
  chan-attach              a PV console channel (xl.cfg channel) with its end of domain 0's socket pair
  xs-reply, xs-watch       answers for the relayed xenstore connections of its block backends

and sends its own: kick console|store (the guest signalled domain 0's end of a channel), out (bytes the
guest wrote to the debug port or console_io), log, and finally shutdown with the outcome and last
statistics, then exits. If domain 0 goes away the domain is destroyed.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..backends.blkback.host import VbdHost
from ..backends.console_channel import ChannelHost
from ..backends.netback import VifHost
from ..core.domain import Domain
from ..core.scheduler import Scheduler
from ..core.vcpu import VcpuContext
from ..errors import HyperdiscoError
from .builder import build_domain, domain_stats
from .channel import Channel, ChannelClosed, PendingReplies
from .grants import BrokeredGrants
from .interdomain import BrokeredChannels
from .jail import Jail
from .migration import Precopy, open_dirty_log, receive, start_precopy
from .migration import answer as migration_answer
from .remote_xenstore import RemoteXenstore
from .sched_gate import ArbiterGate
from .snapshot import checkpoint, write_save

OUT_CHUNK = 16 * 1024
# how long a domain whose domain 0 died keeps running, waiting for a new one to adopt it
ORPHAN_TIMEOUT_S = float(os.environ.get("HYPERDISCO_ORPHAN_TIMEOUT", "300"))


class DomainProcess:
    def __init__(self, channel: Channel) -> None:
        self.ch = channel
        self.dom: Domain | None = None
        self.xs = RemoteXenstore(channel)
        self.vbds: VbdHost | None = None
        self.vifs: VifHost | None = None
        self.pv_channels: ChannelHost | None = None
        self.channels: BrokeredChannels | None = None
        self.grants: BrokeredGrants | None = None
        self._pending = PendingReplies()  # our own requests to domain 0
        self.scheduler: Scheduler | None = None
        self.gate: ArbiterGate | None = None  # domain 0's BVT arbiter grants the cores
        self.gone = threading.Event()  # domain 0 went away for good
        self.orphaned = threading.Event()  # domain 0 went away; a new one may adopt us
        self.listener: socket.socket | None = None  # where a new domain 0 connects to adopt us
        self.special_fd = -1
        self.jail_report = ""
        self._held: list[dict[str, Any]] = []  # log lines from while no domain 0 listened
        self.save_to: tuple[int, dict[str, Any]] | None = None  # "save-to": the file and its header
        self.dirty: Any = None  # core/dirty_log.DirtyLog (opened before the jail), or why there is none
        self.incoming: socket.socket | None = None  # a migration's stream into this domain (migration.py)
        self.precopy: Precopy | None = None  # an outgoing migration (migration.py)

    # -- to domain 0 ------------------------------------------------------------------------------------
    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        if self.orphaned.is_set():
            # nobody listens: the rings keep what the guest wrote for the next domain 0; log lines wait
            if msg.get("t") == "log" and len(self._held) < 100:
                self._held.append(msg)
            return
        try:
            self.ch.send(msg, fds or ())
        except ChannelClosed:
            self._lost()

    def log(self, msg: str) -> None:
        self.send({"t": "log", "msg": msg[:4096]})

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """A request domain 0 answers with a message carrying the same id; None if it does not in time."""
        if self.orphaned.is_set():
            return None
        reply: dict[str, Any] | None = self._pending.call(lambda req: self.send({**msg, "id": req}), timeout)
        return reply

    def output(self, data: bytes) -> None:
        for i in range(0, len(data), OUT_CHUNK):
            self.send({"t": "out", "data": base64.b64encode(data[i:i + OUT_CHUNK]).decode()})

    # -- life -------------------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            msg, fds = self.ch.recv()
        except ChannelClosed:
            return 1
        try:
            if msg.get("t") != "build":
                raise HyperdiscoError("hyperdisco: domain process: expected a build message")
            dom = build_domain(msg, fds, self.output, self.log)
            self.special_fd = fds[0]
            if isinstance(msg.get("adopt_fd"), int) and 0 <= msg["adopt_fd"] < len(fds):
                self.listener = socket.socket(fileno=fds[msg["adopt_fd"]])
            dom.on_console_kick = lambda: self.send({"t": "kick", "what": "console"})
            dom.on_store_kick = lambda: self.send({"t": "kick", "what": "store"})
            self.dom = dom
            self.vbds = VbdHost(dom, self.xs, self.log)
            self.vifs = VifHost(dom, self.xs, self.log)
            self.pv_channels = ChannelHost(dom, self.xs, self.log)
            self.channels = BrokeredChannels(dom, self.send, self.call)
            dom.remote_channels = self.channels
            self.grants = BrokeredGrants(dom, self.send)
            dom.remote_grants = self.grants
            if isinstance(msg.get("incoming_fd"), int) and 0 <= msg["incoming_fd"] < len(fds):
                self.incoming = socket.socket(fileno=fds[msg["incoming_fd"]])
            self.dirty = open_dirty_log()  # live migration's: the jail has no /proc and no userfaultfd
            jail = Jail(dom.domid, msg.get("jail_root"))
            jail.enter()
        except Exception as exc:  # anything: one line to domain 0, which refuses the create
            detail = str(exc) if isinstance(exc, HyperdiscoError) else f"{type(exc).__name__}: {exc}"
            self.send({"t": "error", "msg": detail})
            return 1
        self.jail_report = jail.report()
        self.send({"t": "built", "jail": self.jail_report, "pid": os.getpid(),
                   "console_port": dom.console_port})
        reader = threading.Thread(target=self._read, name="hd-channel", daemon=True)
        reader.start()
        if msg.get("sched") is True:
            self.gate = ArbiterGate(self.send, len(dom.vcpus))
        self.scheduler = Scheduler(workers=max(1, min(len(dom.vcpus), os.cpu_count() or 1)), gate=self.gate)
        if self.incoming is None or self._migrated_in(dom):
            self.scheduler.add(dom)
            if self.incoming is not None:
                migration_answer(self.incoming, None)
                self.incoming.close()
                self.incoming = None
        while not dom.done.wait(0.5):
            if self.gone.is_set():
                dom.shutdown("destroyed", "domain 0 went away")
        self._finish(dom)
        return 0

    def _finish(self, dom: Domain) -> None:
        assert self.scheduler is not None
        self.scheduler.remove(dom)
        if self.save_to is not None:
            fd, header = self.save_to
            self.save_to = None
            if dom.outcome == "suspend":  # the guest suspended itself: its state goes to the file
                try:
                    dom.outcome_detail = write_save(dom, fd, header)
                except Exception as exc:  # noqa: BLE001 - reported to domain 0 in one line
                    dom.outcome_detail = f"save failed: {type(exc).__name__}: {exc}"[:400]
            else:
                os.close(fd)
        # a failure closing one device must not keep domain 0 from learning the outcome (it would take
        # the process's end for a crash and apply on_crash instead of the guest's own on_reboot/poweroff)
        for what, close in (("vifs", self.vifs), ("channels", self.pv_channels), ("disks", self.vbds)):
            if close is None:
                continue
            try:
                close.close()  # the disks' close flushes their images
            except Exception as exc:  # noqa: BLE001 - one line in domain 0's log
                self.log(f"domain process: closing its {what}: {type(exc).__name__}: {exc}"[:400])
        # finished while domain 0 was away (the guest rebooted, powered off or crashed): wait for the
        # next domain 0, so that it learns the outcome and applies the domain's on_* action
        while self.orphaned.is_set() and not self.gone.is_set():
            time.sleep(0.2)
        self.send({"t": "shutdown", "outcome": dom.outcome, "detail": dom.outcome_detail,
                   "stats": self._stats(dom)})
        self.scheduler.shutdown()

    def _migrated_in(self, dom: Domain) -> bool:
        """Read the incoming migration into the domain (vmm/migration.py) before its vCPU runs; False
        (the domain destroyed, the source told why) if the stream is not a whole one."""
        assert self.incoming is not None
        try:
            receive(dom, self.incoming, lambda: dom.done.is_set() or self.gone.is_set()
                    or self.orphaned.is_set())
        except Exception as exc:  # noqa: BLE001 - StreamError, or anything else: one line, domain destroyed
            detail = str(exc) if type(exc).__name__ == "StreamError" else f"{type(exc).__name__}: {exc}"
            migration_answer(self.incoming, detail)
            self.incoming.close()
            self.incoming = None
            dom.shutdown("destroyed", f"incoming migration: {detail}"[:400])
            return False
        # its disks: domain 0 opens and attaches them now that the source has let go of them
        reply = self.call({"t": "migrate", "phase": "disks"}, timeout=60.0)
        if reply is None or reply.get("ok") is not True:
            detail = str(reply.get("error") if reply else "domain 0 did not attach the disks")[:300]
            migration_answer(self.incoming, detail)
            self.incoming.close()
            self.incoming = None
            dom.shutdown("destroyed", f"incoming migration: {detail}")
            return False
        return True

    def _checkpoint(self, ctx: VcpuContext) -> int:
        """save -c: the guest's suspend hypercall, on its boot vCPU (vmm/snapshot.py checkpoint)."""
        dom = self.dom
        assert dom is not None
        dom.on_suspend = None
        if self.save_to is None:
            return 1
        (fd, header), self.save_to = self.save_to, None
        result, detail = checkpoint(dom, ctx, fd, header)
        self.send({"t": "saved", "detail": detail})
        return result

    def _stats(self, dom: Domain) -> dict[str, Any]:
        stats = domain_stats(dom, self.scheduler)
        stats["vifs"] = self.vifs.stats() if self.vifs is not None else {}
        if self.gate is not None:
            stats["sched"] = self.gate.stats()
        return stats

    def _lost(self) -> None:
        """The channel broke: domain 0 died. Keep running, to be adopted, if we can be reached."""
        if self.gate is not None:
            self.gate.open()
        if self.listener is None:
            self.gone.set()
            if self.dom is not None:
                self.dom.shutdown("destroyed", "domain 0 went away")
            return
        self.orphaned.set()
        if self.gate is not None:
            self.gate.open()  # nobody grants cores now: the host kernel decides
        self.xs.fail_pending()
        self._pending.fail_all(None)

    def _adopted(self) -> bool:
        """Wait for a new domain 0 on the listening socket (up to ORPHAN_TIMEOUT_S); hand it our state."""
        assert self.listener is not None and self.dom is not None
        deadline = time.monotonic() + ORPHAN_TIMEOUT_S
        while time.monotonic() < deadline:
            self.listener.settimeout(min(5.0, max(0.1, deadline - time.monotonic())))
            try:
                conn, _addr = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(None)
            ch = Channel(conn)
            try:
                msg, fds = ch.recv()
                for fd in fds:
                    os.close(fd)
                if msg.get("t") != "adopt":
                    raise ChannelClosed("not an adoption")
                dom = self.dom
                assert self.vbds is not None and self.vifs is not None
                ch.send({"t": "hello", "domid": dom.domid, "name": dom.name,
                         "console_port": dom.console_port, "paused": dom.paused, "pid": os.getpid(),
                         "jail": self.jail_report, "vbds": self.vbds.describe(),
                         "vifs": self.vifs.describe(),
                         "links": self.channels.describe() if self.channels is not None else [],
                         "stats": self._stats(dom)}, [self.special_fd])
            except ChannelClosed:
                ch.close()
                continue
            self.ch = ch
            self.xs.channel = ch
            self.orphaned.clear()
            held, self._held = self._held, []
            for m in held:
                self.send(m)
            self.xs.replay_watches()
            return True
        return False

    # -- from domain 0 ----------------------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                msg, fds = self.ch.recv()
            except ChannelClosed:
                self._lost()
                if self.listener is not None and self._adopted():
                    continue
                self.gone.set()
                return
            try:
                self._handle(msg, fds)
            except Exception as exc:  # a bug here must not take the guest down silently
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                self.log(f"domain process: {msg.get('t')!r}: {type(exc).__name__}: {exc} "
                         f"at {tb.filename}:{tb.lineno}")
                for fd in fds:
                    os.close(fd)

    def _handle(self, msg: dict[str, Any], fds: list[int]) -> None:
        dom = self.dom
        assert dom is not None
        t = msg.get("t")
        if t == "notify":
            if msg.get("what") == "console":
                dom.console_notify()
            elif msg.get("what") == "store":
                dom.store_notify()
        elif t == "sched-grant" and self.gate is not None:
            self.gate.grant(msg)
        elif t == "sched-revoke" and self.gate is not None:
            self.gate.revoke(msg)
        elif t == "sched-gate" and self.gate is not None:
            self.gate.turn_on()
        elif t == "xs-reply":
            self.xs.reply(msg)
        elif t == "xs-watch":
            self.xs.watch_event(msg)
        elif t == "pause":
            dom.paused = True
            for ctx in dom.vcpus:
                ctx.ev.kick()
        elif t == "unpause":
            dom.paused = False
            dom.wake()
        elif t == "destroy":
            outcome = msg.get("outcome")
            dom.shutdown(outcome if outcome in ("destroyed", "timeout") else "destroyed",
                         str(msg.get("detail", ""))[:4096])
        elif t == "mem-max" and isinstance(msg.get("pages"), int) and msg["pages"] >= 0:
            dom.reservation.set_max_pages(msg["pages"])  # xl mem-set/mem-max (dom0/memctl.py)
        elif t == "save-to" and len(fds) == 1 and isinstance(msg.get("header"), dict):
            if self.save_to is not None:
                os.close(self.save_to[0])
            self.save_to = (fds[0], msg["header"])
            if msg.get("checkpoint") is True:  # save -c
                dom.on_suspend = self._checkpoint
            self.send({"t": "reply", "id": msg.get("id"), "ok": True})
        elif t == "migrate-to" and len(fds) == 1:
            self._migrate_to(msg, fds[0])
        elif t == "migrate-cancel" and self.precopy is not None:
            self.precopy.cancel()
            self.precopy = None
        elif t == "query":
            self.send({"t": "reply", "id": msg.get("id"), "stats": self._stats(dom)})
        elif t == "blk-attach":
            self._blk_attach(msg, fds)
        elif t == "blk-detach":
            self._blk_detach(msg)
        elif t in ("evtchn-bound", "migrate-disks"):
            self._pending.deliver(msg.get("id"), msg)
        elif t == "evtchn-peer-bind" and self.channels is not None:
            self.send({"t": "reply", "id": msg.get("id"), **self.channels.peer_bind(msg)})
        elif t == "evtchn-raise" and self.channels is not None:
            self.channels.raise_port(msg)
        elif t == "evtchn-peer-closed" and self.channels is not None:
            self.channels.peer_closed(msg)
        elif t == "gnt-mapped" and self.grants is not None:
            self.grants.mapped(msg, fds)
        elif t == "gnt-peer-map" and self.grants is not None:
            self.grants.peer_request("map", msg)
        elif t == "gnt-peer-unmap" and self.grants is not None:
            self.grants.peer_request("unmap", msg)
        elif t == "net-attach":
            self._net_attach(msg, fds)
        elif t == "chan-attach":
            self._chan_attach(msg, fds)
        elif t == "net-detach":
            assert self.vifs is not None
            ok = self.vifs.detach(int(msg["devid"]), float(msg.get("wait", 0.0)))
            self.send({"t": "reply", "id": msg.get("id"), "ok": ok})
        else:
            for fd in fds:
                os.close(fd)

    def _migrate_to(self, msg: dict[str, Any], fd: int) -> None:
        """Start a live migration over the connected socket domain 0 handed over (vmm/migration.py)."""
        dom = self.dom
        assert dom is not None
        sock = socket.socket(fileno=fd)
        why = ""
        if isinstance(self.dirty, str) or self.dirty is None:
            why = f"no dirty-page tracking here ({self.dirty})"
        elif (dom.on_suspend is not None or self.save_to is not None
              or (self.precopy is not None and not self.precopy.over)):
            why = "another save or migration is under way"
        if why:
            sock.close()
            self.send({"t": "reply", "id": msg.get("id"), "ok": False, "error": why})
            return
        self.send({"t": "reply", "id": msg.get("id"), "ok": True})
        rate = msg.get("rate")
        handover = self.vbds.handover if self.vbds is not None else None
        self.precopy = start_precopy(dom, sock, self.dirty, self.send, handover,
                                     float(rate) if isinstance(rate, (int, float)) and rate > 0 else 0.0)

    def _blk_attach(self, msg: dict[str, Any], fds: list[int]) -> None:
        assert self.vbds is not None
        records = msg["files"]
        if not isinstance(records, list) or len(records) != len(fds):
            raise ValueError("descriptor count does not match the records")
        handed = [(str(r[0]), str(r[1]), bool(r[2]), fd) for r, fd in zip(records, fds, strict=True)]
        try:
            self.vbds.attach(int(msg["devid"]), msg["args"], handed)
        except HyperdiscoError as exc:
            self.send({"t": "reply", "id": msg.get("id"), "error": str(exc)})
            return
        self.send({"t": "reply", "id": msg.get("id"), "ok": True})

    def _net_attach(self, msg: dict[str, Any], fds: list[int]) -> None:
        vifs = self.vifs
        assert vifs is not None
        self._socket_attach(msg, fds, "a vif",
                            lambda fd: vifs.attach(int(msg["devid"]), dict(msg["args"]), fd))

    def _chan_attach(self, msg: dict[str, Any], fds: list[int]) -> None:
        """A PV console channel (backends/console_channel.py) with its end of domain 0's socket pair."""
        chans = self.pv_channels
        assert chans is not None
        self._socket_attach(msg, fds, "a channel",
                            lambda fd: chans.attach(int(msg["devid"]), str(msg["name"]), fd))

    def _socket_attach(self, msg: dict[str, Any], fds: list[int], what: str,
                       attach: Callable[[int], None]) -> None:
        """A device that comes with exactly one descriptor, its end of domain 0's socket pair: `attach`
        takes it over; the reply says whether it did (a bad request: one line)."""
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"{what} comes with exactly one descriptor")
        try:
            attach(fds[0])
        except (ValueError, TypeError, KeyError) as exc:
            self.send({"t": "reply", "id": msg.get("id"), "error": str(exc)[:400]})
            return
        self.send({"t": "reply", "id": msg.get("id"), "ok": True})

    def _blk_detach(self, msg: dict[str, Any]) -> None:
        assert self.vbds is not None
        ok = self.vbds.detach(int(msg["devid"]), float(msg.get("wait", 0.0)))
        self.send({"t": "reply", "id": msg.get("id"), "ok": ok})


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m hyperdisco.vmm CHANNEL_FD (the daemon starts it)", file=sys.stderr)
        return 2
    run_on(int(argv[0]))
    return 0  # not reached


def run_on(fd: int) -> None:
    """Be a domain process on the channel `fd` (a fresh interpreter's or a fork of the template's), then
    exit the process."""
    import faulthandler
    import signal

    faulthandler.enable()  # an engine crash says where each thread was (into domain 0's log)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)  # `kill -USR1 PID`: a thread dump
    code = DomainProcess(Channel(socket.socket(fileno=fd))).run()
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0)  # let daemon threads see the end
    os._exit(code)
