"""`hyperdisco run`: one domain, from creation to its end, attached to the terminal or running a command."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from ..core.clock import Clock
from ..core.domain import Domain, DomainConfig
from ..core.scheduler import Scheduler
from ..engine.base import get_engine
from .console import ExecSession, TerminalAttachment


@dataclass
class RunReport:
    outcome: str
    detail: str
    exit_status: int
    output: bytes = b""
    timings: dict[str, float] = field(default_factory=dict)
    traps: dict[str, int] = field(default_factory=dict)


def log_to_stderr(msg: str) -> None:
    sys.stderr.write(f"hyperdisco: {msg}\n")


def run_domain(config: DomainConfig, engine_name: str = "tcg", exec_command: str | None = None,
               timeout: float | None = None, t_start: float | None = None, verbose: bool = False,
               quiet_console: bool = False) -> RunReport:
    t0 = t_start if t_start is not None else time.monotonic()
    engine = get_engine(engine_name)
    clock = Clock(engine.guest_tsc)
    session: ExecSession | None = None
    attach: TerminalAttachment | None = None
    dom_ref: list[Domain] = []
    transcript = bytearray()

    def send(data: bytes) -> None:
        if dom_ref:
            dom_ref[0].console.input(data)

    if exec_command is not None:
        session = ExecSession(exec_command, send)

        def sink(data: bytes) -> None:
            transcript.extend(data)
            assert session is not None
            session.feed(data)
    else:
        attach = TerminalAttachment(send, lambda: dom_ref[0].destroy() if dom_ref else None)

        def sink(data: bytes) -> None:
            transcript.extend(data)
            if not quiet_console:
                assert attach is not None
                attach.output(data)

    def log(msg: str) -> None:
        if verbose:
            log_to_stderr(msg)

    dom = Domain(1, config, engine, clock, sink, log)
    dom_ref.append(dom)
    sched = Scheduler(workers=1)
    if attach is not None:
        attach.start()
    try:
        sched.add(dom)
        finished = dom.done.wait(timeout)
        if not finished:
            dom.shutdown("timeout", f"no shutdown within {timeout:.0f}s")
        sched.remove(dom)
    finally:
        if attach is not None:
            attach.stop()
        sched.shutdown()
    t_end = time.monotonic()
    traps = dom.traps()
    timings = {"total_s": t_end - t0}
    if dom.first_output is not None:
        timings["first_output_s"] = dom.first_output - t0
    first_tsc = min((c.ev.counts().first_syscall_tsc for c in dom.vcpus), default=0)
    if first_tsc:
        timings["user_space_s"] = clock.mono_at(first_tsc) - t0
    dom.close()
    outcome = dom.outcome or "unknown"
    status = {"poweroff": 0, "reboot": 0, "destroyed": 0}.get(outcome, 1)
    output = b""
    if session is not None:
        if session.exit_status is not None:
            status = session.exit_status if outcome != "crash" else 1
            output = session.output
        else:
            status = 1
            output = bytes(transcript)
    return RunReport(outcome, dom.outcome_detail, status, output, timings, traps)
