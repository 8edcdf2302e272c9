"""A filesystem freeze through the guest agent around `save`, `save -c` and `migrate` (docs/guest-agent.md,
"Freeze before save").

Before the guest is asked to suspend, a domain whose agent answers a short ping gets
guest-fsfreeze-freeze (qemu-ga: sync, then FIFREEZE on every mounted filesystem that supports it): its
disks then hold clean filesystems of their own, not only ones that are consistent together with the
saved memory. The frozen state is in the guest's memory, so it is in the save file too: after `save -c`
the original is thawed (checkpoint written or not), and a domain restored from a file saved frozen (each
clone, the migrated domain) is thawed once its agent answers.

A freeze that fails or times out does not fail the save (libvirt's `snapshot-create --quiesce` does
fail: there the disk is the whole snapshot; here the memory is saved with it and the file restores
correctly without the freeze): the save goes on, and its reply says so in one line. A domain without
the agent's channel is saved as before, and its reply says nothing of a freeze.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..dom0.guest_agent import AgentClient, AgentError
from .agent_ops import wait_agent

PING_S = 2.0  # an agent that does not answer this fast is not asked to freeze (the busybox guest has none)
FREEZE_S = 30.0  # qemu-ga syncs each filesystem before it freezes it: slow on a loaded host
THAW_S = 10.0
RESUMED_WAIT_S = 180.0  # a restored domain's agent answers once its guest has resumed its devices
RESTORE_WAIT_S = 60.0  # restore answers after the thaw, or after this (the thaw then goes on meanwhile)
# Linux's freezer gives up after 20 s (freeze_timeout_msecs) on a task that does not freeze, and a task
# blocked writing to a frozen filesystem never does: do_suspend then fails and the guest runs on, frozen
FROZEN_SUSPEND_S = 30.0  # a restored domain's agent answers once its guest has resumed its devices


@dataclass
class Freeze:
    """What the freeze before a save did. `frozen`: the guest's filesystems may be frozen (also when a
    freeze timed out and the thaw after it failed: the thaw on the other side then costs nothing).
    `report`: one line for the save's reply ("" without an agent channel)."""

    frozen: bool = False
    count: int = 0
    report: str = ""


def freeze(agent: AgentClient | None) -> Freeze:
    """guest-fsfreeze-freeze when the agent answers a ping; never raises."""
    if agent is None:
        return Freeze()
    if not agent.ping(timeout=PING_S):
        return Freeze(report=f"not frozen: the guest agent did not answer within {PING_S:g} s; "
                             "saved without a freeze")
    try:
        n = agent.fsfreeze(timeout=FREEZE_S)
    except AgentError as exc:
        why = str(exc).replace("\n", " ")[:200]
        # a freeze that timed out here may still complete in the guest: thaw (the agent runs one command
        # at a time, so this waits for it); if that fails too, treat the guest as frozen
        try:
            agent.fsthaw(timeout=THAW_S)
        except AgentError:
            return Freeze(frozen=True, report=f"freeze failed ({why}) and the thaw after it too; saved "
                                              "anyway (a restored domain is thawed when its agent answers)")
        return Freeze(report=f"freeze failed ({why}); saved without a freeze")
    return Freeze(frozen=True, count=n,
                  report=f"froze {n} filesystem{'s' if n != 1 else ''} through the guest agent")


def suspend_refused(agent: AgentClient | None, progressed: Callable[[], bool], timeout: float,
                    first: float = FROZEN_SUSPEND_S, every: float = 10.0) -> bool:
    """Whether a guest asked to suspend with its filesystems frozen gave up on it: no progress
    (`progressed()`: the file written, the domain gone) after `first` s, and its agent answers a ping (the
    kernel's freezer stopped qemu-ga while it tried; it answers once the suspend was abandoned). Asked
    again every `every` s until `timeout`; False as soon as the save progresses."""
    deadline = time.monotonic() + timeout
    check = time.monotonic() + first
    while time.monotonic() < deadline:
        if progressed():
            return False
        if time.monotonic() >= check:
            if agent is not None and agent.ping(timeout=PING_S) and not progressed():
                return True
            check = time.monotonic() + every
        time.sleep(0.2)
    return False


def thaw(agent: AgentClient | None, wait: float = 0.0) -> str:
    """guest-fsfreeze-thaw (after waiting up to `wait` s for the agent to answer); a one-line outcome."""
    if agent is None:
        return "not thawed: no guest agent channel"
    if wait > 0 and not wait_agent(agent, wait):
        return f"not thawed: the guest agent did not answer within {wait:g} s"
    try:
        n = agent.fsthaw(timeout=THAW_S)
    except AgentError as exc:
        return f"thaw failed: {str(exc).replace(chr(10), ' ')[:200]}"
    return f"thawed {n} filesystem{'s' if n != 1 else ''}"


def thaw_when_resumed(agent_of: Callable[[], AgentClient | None], gone: Callable[[], bool],
                      log: Callable[[str], None], name: str,
                      wait: float = RESUMED_WAIT_S) -> threading.Thread:
    """A restored domain's thaw, in the background: once its agent answers (pings until `wait` passes or
    `gone()`), guest-fsfreeze-thaw; the outcome goes to `log`."""

    def run() -> None:
        agent = agent_of()
        if agent is None:
            log(f"{name}: restored frozen but has no guest agent channel: not thawed")
            return
        if not wait_agent(agent, wait, gone):
            if not gone():
                log(f"{name}: restored frozen; its guest agent did not answer within {wait:g} s: not thawed")
            return
        log(f"{name}: restored frozen: {thaw(agent)}")

    t = threading.Thread(target=run, name=f"hd-thaw-{name}", daemon=True)
    t.start()
    return t
