"""The daemon's operations that use a domain's guest agent (dom0/guest_agent.py over the channel named
org.qemu.guest_agent.0, dom0/channels.py): exec, file_read/file_write (`hyperdisco cp`), the guest's
addresses for `list -l`, and a clean shutdown. docs/guest-agent.md."""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from typing import Any

from ..dom0.guest_agent import AgentClient, AgentError
from ..errors import HyperdiscoError
from .requests import RequestError

FILE_READ_MAX = 64 << 20  # one cp out of the guest
FILE_WRITE_CHUNK = 512 << 10  # one file_write request (the CLI sends a larger file in pieces)
AGENT_WAIT_S = 60.0  # exec waits this long for an agent that is configured but not answering yet
LIST_TIMEOUT_S = 1.0  # list -l asks each agent for its addresses within this
_CHANNEL_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def channel_names(value: Any) -> list[str]:
    """A create request's channel names, checked."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 8 or not all(
            isinstance(v, str) and _CHANNEL_NAME_RE.fullmatch(v) for v in value):
        raise RequestError("hyperdisco: create: channels must be a list of at most 8 channel names")
    if len(set(value)) < len(value):
        raise RequestError("hyperdisco: create: two channels have the same name")
    return list(value)


def wait_agent(agent: AgentClient, timeout: float, stop: Any = None) -> bool:
    """Ping until the agent answers or `timeout` passes (a guest still booting)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop()):
            return False
        if agent.ping(timeout=min(3.0, max(0.1, left))):
            return True
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def agent_for_exec(agent: AgentClient, dom: Any, timeout: float, conn: Any,
                   client_gone: Callable[[Any], bool]) -> bool:
    """Whether `exec` goes through the agent. A guest whose console already said it is up (the busybox
    guest's line) gets one quick ping; any other waits for its agent (a systemd guest booting), until
    that line appears, the domain stops or the client goes away."""
    if dom.guest_up:
        return agent.ping(timeout=2.0)
    return wait_agent(agent, min(timeout / 2, AGENT_WAIT_S),
                      lambda: dom.finished or dom.guest_up or (conn is not None and client_gone(conn)))


def exec_via_agent(agent: AgentClient, name: str, command: str, timeout: float) -> dict[str, Any]:
    """`exec` through guest-exec: /bin/sh -c COMMAND; output is stdout then stderr."""
    try:
        r = agent.exec(["/bin/sh", "-c", command], timeout=timeout)
    except AgentError as e:
        raise HyperdiscoError(f"hyperdisco: exec in {name}: {e}") from e
    status = r.exitcode if r.exitcode is not None else 128 + (r.signal or 0)
    return {"status": status, "output": base64.b64encode(r.out + r.err).decode(), "via": "agent"}


def file_read(agent: AgentClient | None, name: str, path: str, timeout: float) -> dict[str, Any]:
    agent = _need(agent, name, "cp")
    try:
        data = agent.read_file(path, FILE_READ_MAX, timeout=timeout)
    except AgentError as e:
        raise HyperdiscoError(f"hyperdisco: cp from {name}:{path}: {e}") from e
    return {"data": base64.b64encode(data).decode()}


def file_write(agent: AgentClient | None, name: str, path: str, data: str, append: bool,
               timeout: float) -> None:
    agent = _need(agent, name, "cp")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError("hyperdisco: file_write: data is not base64") from e
    if len(raw) > FILE_WRITE_CHUNK:
        raise RequestError(f"hyperdisco: file_write: at most {FILE_WRITE_CHUNK} bytes per request")
    try:
        agent.write_file(path, raw, timeout=timeout, mode="a" if append else "w")
    except AgentError as e:
        raise HyperdiscoError(f"hyperdisco: cp to {name}:{path}: {e}") from e


def addresses(agent: AgentClient | None) -> list[str] | None:
    """The guest's addresses (not loopback) as its agent reports them, or None without an answer."""
    if agent is None:
        return None
    try:
        ifs = agent.interfaces(timeout=LIST_TIMEOUT_S)
    except AgentError:
        return None
    return [a for i in ifs if i.name != "lo" for a in i.addresses][:32]


def shutdown(agent: AgentClient | None, reason: str) -> bool:
    """guest-shutdown when the agent answers at once; False: use control/shutdown."""
    mode = {"poweroff": "powerdown", "halt": "halt", "reboot": "reboot"}.get(reason)
    if agent is None or mode is None or not agent.ping(timeout=2.0):
        return False
    try:
        agent.shutdown(mode)
    except AgentError:
        return False
    return True


def _need(agent: AgentClient | None, name: str, verb: str) -> AgentClient:
    if agent is None:
        raise HyperdiscoError(f"hyperdisco: {verb}: {name} has no guest agent channel "
                              f"(channel = [ \"name=org.qemu.guest_agent.0\" ] in its config)")
    if not wait_agent(agent, 10.0):
        raise HyperdiscoError(f"hyperdisco: {verb}: the guest agent of {name} does not answer")
    return agent
