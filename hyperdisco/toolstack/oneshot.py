"""`hyperdisco run`: one domain, from creation to its end, attached to the terminal or running a command."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..backends.console import ConsoleBuffer
from ..backends.net.manager import VifConfig
from ..core.domain import DomainConfig
from ..dom0.handle import DomainHandle
from ..dom0.host import Host
from .sessions import ExecSession, TerminalAttachment

DETACHED_STATUS = 130  # Ctrl-] destroyed the guest: the user interrupted it, as Ctrl-C would


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
               quiet_console: bool = False, vifs: Sequence[VifConfig] = ()) -> RunReport:
    t0 = t_start if t_start is not None else time.monotonic()
    host = Host(engine_name, log_sink=log_to_stderr if verbose else None)
    console = ConsoleBuffer()
    current: list[DomainHandle] = []
    transcript = bytearray()
    console.attach(transcript.extend)

    def send(data: bytes) -> None:
        if current:
            current[-1].input(data)

    session: ExecSession | None = None
    attach: TerminalAttachment | None = None
    detached = False

    def detach() -> None:
        nonlocal detached
        detached = True
        if current:
            current[-1].shutdown("destroyed", "Ctrl-] pressed")

    if exec_command is not None:
        session = ExecSession(exec_command, send)
        console.attach(session.feed)
        config = replace(config, on_reboot="destroy", on_crash="destroy", on_poweroff="destroy")
    else:
        attach = TerminalAttachment(send, detach)
        if not quiet_console:
            console.attach(attach.output)
        config = replace(config, on_reboot="restart", on_crash="destroy", on_poweroff="destroy")
    try:
        dom = host.create(config, console=console, vifs=vifs)
    except BaseException:
        host.close()  # its switches and uplinks, if any started
        raise
    current.append(dom)
    if attach is not None:
        attach.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not dom.done.wait(left):
                dom.query()
                dom.shutdown("timeout", f"no shutdown within {timeout:.0f}s; {dom.describe()}")
            host.wait_gone(dom)
            nxt = host.successor(dom)
            if nxt is None:
                break
            current.append(nxt)  # on_reboot=restart: follow the new incarnation
            dom = nxt
    finally:
        if attach is not None:
            attach.stop()
    t_end = time.monotonic()
    first = current[0]
    traps = first.traps()
    timings = {"total_s": t_end - t0}
    if first.first_output is not None:
        timings["first_output_s"] = first.first_output - t0
    user_space = first.stats.get("user_space_mono")
    if isinstance(user_space, float):
        timings["user_space_s"] = user_space - t0
    host.close()
    outcome = dom.outcome or "unknown"
    status = {"poweroff": 0, "reboot": 0, "destroyed": 0}.get(outcome, 1)
    detail = dom.outcome_detail
    if detached and outcome == "destroyed":
        status, detail = DETACHED_STATUS, "Ctrl-] pressed"
    output = b""
    if session is not None:
        if session.exit_status is not None:
            status = session.exit_status if outcome != "crash" else 1
            output = session.output
        else:
            status = 1
            output = bytes(transcript)
    return RunReport(outcome, detail, status, output, timings, traps)
