"""Live migration inside the domain processes (docs/migration.md; the daemons' side:
toolstack/migrate_ops.py, the stream: core/migstream.py).

Source: domain 0 hands over a socket already connected to the destination's domain process ("migrate-to").
`Precopy.run` (a thread of its own) starts the dirty log over guest RAM (core/dirty_log.py), sends every
non-zero page while the guest runs, then in rounds the pages written during the previous round, until a
round leaves few enough (or stops shrinking); it tells domain 0 "precopied", which asks the guest to
suspend (control/shutdown = "suspend", as save does). The guest's SCHEDOP_shutdown(suspend) lands in
`Precopy.final`, on its boot vCPU's thread, with the other vCPUs held out of guest code: the pages written
since the last round, the special pages and every vCPU's state as save writes it (vmm/snapshot.py: one
VCPU record each, the boot vCPU's hypercall returning 0, "resumed in a new domain", then the LAPC record)
go out, then DONE, and it waits for the destination's RUNNING. With it the domain ends here (outcome
suspend, "migrated"); without it (the destination died, the connection broke, it refused) the hypercall
returns 1, "suspend cancelled", and the guest carries on here as after `save -c`.

Destination: a domain built without a kernel (as a restore is) whose process, once jailed, reads the
stream into its memory (`receive`) before its vCPUs are scheduled, imports their states as restore does
(once DONE checked out), starts them and answers RUNNING.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from ..core.dirty_log import DirtyLog, DirtyLogError
from ..core.domain import Domain
from ..core.migstream import RUNNING, StreamError, StreamReader, StreamWriter
from ..core.savefile import nonzero_runs
from ..core.vcpu import VcpuContext
from ..errors import HyperdiscoError
from ..xen.abi import PAGE
from .snapshot import apply_lapc_section, import_vcpu_sections, lapc_section, vcpu_sections

_INDEX = struct.Struct("<I")  # a VCPU record's index, as the save file's VCPU section

MAX_ROUNDS = 30
STOP_PAGES = 256  # a round that leaves at most this many dirty pages ends the pre-copy (1 MiB)
ANSWER_TIMEOUT_S = 60.0


class Precopy:
    """One outgoing migration of a domain (any number of vCPUs)."""

    def __init__(self, dom: Domain, sock: socket.socket, dirty: DirtyLog,
                 report: Callable[[dict[str, Any]], None], rate: float = 0.0,
                 handover: Callable[[bool], list[str]] | None = None) -> None:
        self.dom = dom
        self.handover = handover  # VbdHost.handover: the read-write images' locks dropped / taken back
        self.sock = sock
        self.dirty = dirty
        self.report = report  # a message to domain 0 ({"t": "migrate", "phase": ...})
        self.out = StreamWriter(sock, rate)
        self.over = False  # ended (sent, failed or cancelled)
        self.rounds: list[int] = []  # pages sent per round
        self.started = time.monotonic()

    def _ram(self) -> memoryview:
        ram = self.dom.memory.regions[0]
        return memoryview(ram.mem)[:self.dom.memory.ram_bytes]

    def _send_dirty(self) -> int:
        ram = self._ram()
        sent = 0
        for first, n in list(self.dirty.collect()):
            self.out.pages_from(first * PAGE, ram[first * PAGE:(first + n) * PAGE])
            sent += n
        return sent

    def run(self) -> None:
        """The pre-copy rounds (a thread); then domain 0 is told to have the guest suspend."""
        try:
            ram = self._ram()
            base = self.dom.memory.regions[0]
            self.dirty.start(base.host_address, self.dom.memory.ram_bytes)
            sent = 0
            for first, n in nonzero_runs(ram):
                self.out.pages_from(first * PAGE, ram[first * PAGE:(first + n) * PAGE])
                sent += n
            self.rounds.append(sent)
            while len(self.rounds) < MAX_ROUNDS:
                sent = self._send_dirty()
                self.rounds.append(sent)
                if sent <= STOP_PAGES or (len(self.rounds) > 4 and sent >= self.rounds[-2]):
                    break
        except (StreamError, OSError) as exc:
            self._failed(f"pre-copy: {exc}")
            return
        self.dom.on_suspend = self.final
        self.report({"t": "migrate", "phase": "precopied", "rounds": len(self.rounds),
                     "pages": self.out.pages, "bytes": self.out.bytes})

    def final(self, ctx: VcpuContext) -> int:
        """SCHEDOP_shutdown(suspend) on the boot vCPU: stop-and-copy, then wait for the destination. The
        other vCPUs (spinning in stop_machine, or parked) are held out of guest code meanwhile, so that the
        last pages and every vCPU's state are one consistent picture (as save -c holds them)."""
        dom = self.dom
        dom.on_suspend = None
        stopped = time.monotonic()
        released = False
        stats: dict[str, Any] = {}
        with dom.quiesced(ctx):
            try:
                last = self._send_dirty()
                self.rounds.append(last)
                self.dirty.stop()
                special = dom.special
                view = memoryview(special.mem)[:special.size]
                for first, n in nonzero_runs(view):
                    self.out.pages_from(special.gpa + first * PAGE, view[first * PAGE:(first + n) * PAGE])
                ctx.ev.set_gpr(0, 0)  # HYPERVISOR_suspend's result there: "resumed in a new domain"
                self.out.rate = 0.0  # the stop-and-copy goes as fast as it can
                # each vCPU's state as save writes it (vmm/snapshot.py): the engine's, then the rest
                for payload in vcpu_sections(dom, current=ctx):
                    self.out.vcpu_section(payload)
                self.out.lapc(lapc_section(dom))
                # the guest's disk I/O is drained (its frontends suspended): the destination may open them
                released = self.handover is not None
                problems = self.handover(True) if self.handover is not None else []
                if problems:
                    raise StreamError("cannot hand over the disks: " + "; ".join(problems))
                self.out.done({"rounds": len(self.rounds), "pages": self.out.pages})
                refused = self.out.answer(ANSWER_TIMEOUT_S)
            except (StreamError, OSError) as exc:
                refused = str(exc)
            downtime = time.monotonic() - stopped
            if not refused:
                stats = {"rounds": len(self.rounds), "round_pages": self.rounds, "pages": self.out.pages,
                         "bytes": self.out.bytes, "downtime_s": round(downtime, 4),
                         "seconds": round(time.monotonic() - self.started, 3)}
                # ended before the other vCPUs are let go: they never run here again
                dom.shutdown("suspend", "migrated " + json.dumps(stats, separators=(",", ":")))
        if refused and released and self.handover is not None:
            for problem in self.handover(False):  # ours again: the guest carries on here
                dom.log(f"migration: disk lock not taken back: {problem}")
        if refused:
            self._failed(f"stop-and-copy: {refused}")
            return 1  # suspend cancelled: the guest carries on here
        self._close()
        ctx.ev.request_stop()
        self.report({"t": "migrate", "phase": "done", **stats})
        return 0

    def cancel(self) -> None:
        """Domain 0 gave up on this migration: no stop-and-copy any more; a round in progress, or the
        stop-and-copy if it already began, fails on the closed connection (the guest carries on)."""
        if self.dom.on_suspend == self.final:
            self.dom.on_suspend = None
            self.dirty.stop()
        self._close()

    def _failed(self, detail: str) -> None:
        self.dom.on_suspend = None
        self.dirty.stop()
        self._close()
        self.report({"t": "migrate", "phase": "failed", "detail": detail[:400]})

    def _close(self) -> None:
        self.over = True
        try:
            self.sock.close()
        except OSError:
            pass


def start_precopy(dom: Domain, sock: socket.socket, dirty: DirtyLog, report: Callable[[dict[str, Any]], None],
                  handover: Callable[[bool], list[str]] | None, rate: float = 0.0) -> Precopy:
    p = Precopy(dom, sock, dirty, report, rate, handover)
    threading.Thread(target=p.run, name="hd-migrate", daemon=True).start()
    return p


def receive(dom: Domain, sock: socket.socket, abort: Callable[[], bool]) -> dict[str, Any]:
    """Fill a domain built without a kernel from the stream and import its vCPU; StreamError (one line)
    if the stream is not a whole, well-formed one for this domain. Nothing of the domain has run."""
    ram = dom.memory.regions[0]
    regions = [(ram.gpa, dom.memory.ram_bytes, memoryview(ram.mem)),
               (dom.special.gpa, dom.special.size, memoryview(dom.special.mem))]

    def place(gpa: int, n: int) -> memoryview | None:
        for start, size, view in regions:
            if start <= gpa and gpa + n <= start + size:
                return view[gpa - start:gpa - start + n]
        return None

    payloads: list[bytes] = []
    lapc: list[Any] = []

    def on_vcpu(index: int, state: bytes) -> None:
        # refused at once, not only once the stream is whole (import_vcpu_sections checks it all again)
        if not 0 <= index < len(dom.vcpus) or len(payloads) >= len(dom.vcpus):
            raise StreamError(f"corrupt stream (vCPU {index} is not one of this domain's)")
        payloads.append(_INDEX.pack(index) + state)

    stats = StreamReader(sock, place, abort).receive(on_vcpu, lapc.append)
    # the whole stream checked out: the vCPUs' states go in as a restore's do (vmm/snapshot.py)
    try:
        import_vcpu_sections(dom, payloads, "migrate")
        if lapc:
            apply_lapc_section(dom, lapc[0], "migrate")
    except HyperdiscoError as exc:
        raise StreamError(str(exc).removeprefix("hyperdisco: migrate: ")[:200]) from None
    except Exception as exc:  # noqa: BLE001 - the engine refuses a state blob in its own words
        raise StreamError(f"vCPU state refused: {exc}"[:200]) from None
    return stats


def answer(sock: socket.socket, error: str | None) -> None:
    """RUNNING, or FAILED with the reason, to the source; best effort (it may be gone)."""
    try:
        sock.settimeout(5.0)
        sock.sendall(RUNNING if error is None else b"FAILED " + error.encode()[:200].replace(b"\n", b" ")
                     + b"\n")
    except OSError:
        pass


def open_dirty_log() -> DirtyLog | str:
    """The dirty log, or why this host has none (said when a migration is asked for)."""
    try:
        return DirtyLog.open()
    except (DirtyLogError, OSError) as exc:
        return str(exc)
