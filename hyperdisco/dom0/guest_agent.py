"""A client of the QEMU guest agent protocol (qemu-ga), spoken over a byte stream to an unmodified
`qemu-guest-agent` in the guest (QEMU's qga/qapi-schema.json: the commands and their replies).

Wire format: the host writes one JSON object per command, ``{"execute": NAME, "arguments": {...}}``; the
agent answers each with one JSON object and a newline: ``{"return": ...}`` or ``{"error": {"class": ...,
"desc": ...}}``. The stream may hold stale replies (an earlier client that gave up), so every session
starts with ``guest-sync-delimited``: the host sends a 0xFF byte (qemu-ga's parser resets on it) and the
command with a random id; the agent writes 0xFF before its reply, so everything up to the last 0xFF is
thrown away and replies are read until one returns that id.

Everything the agent sends is hostile input: a reply line is bounded (MAX_LINE; longer is an error and the
stream is resynchronised next time), JSON is parsed only from bounded lines (deep nesting is caught),
every wait has a deadline, and the bytes arrive through `feed` from whatever thread reads the channel,
so a silent or flooding guest only ever costs its own caller a timeout.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SYNC_BYTE = b"\xff"
MAX_LINE = 4 << 20  # one reply; guest-file-read of FILE_CHUNK bytes is ~1.4x that in base64
MAX_BUFFER = 2 * MAX_LINE  # unread bytes kept; more is discarded (the next call resynchronises)
FILE_CHUNK = 1 << 20  # bytes per guest-file-read / guest-file-write
MAX_EXEC_OUTPUT = 16 << 20  # qemu-ga itself caps captured output at 16 MiB (GUEST_EXEC_MAX_OUTPUT)


class AgentError(Exception):
    """The agent did not answer in time, answered nonsense, or returned an error."""


class AgentTimeout(AgentError):
    pass


@dataclass
class ExecResult:
    exitcode: int | None
    signal: int | None
    out: bytes
    err: bytes
    truncated: bool = False


@dataclass
class Interface:
    name: str
    mac: str | None
    addresses: list[str] = field(default_factory=list)  # "10.0.0.1/24", "fe80::1/64"


class AgentClient:
    """One agent channel. `write` sends bytes toward the guest (must not block long); the channel's
    reader calls `feed` with what the guest wrote. Calls are serialised: one command in flight."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._call_lock = threading.Lock()
        self._synced = False
        self.overflows = 0

    # -- bytes in ---------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            if len(self._buf) > MAX_BUFFER:  # a flood: keep nothing, resynchronise at the next call
                self._buf.clear()
                self._synced = False
                self.overflows += 1
            self._cond.notify_all()

    def _line(self, deadline: float, after_sync: bool) -> bytes:
        """The next newline-terminated reply (without the newline); with after_sync, only what
        follows a 0xFF byte counts."""
        with self._cond:
            while True:
                if after_sync:
                    i = self._buf.rfind(SYNC_BYTE)
                    if i >= 0:
                        del self._buf[:i + 1]
                        after_sync = False
                    elif len(self._buf) > MAX_LINE:
                        self._buf.clear()
                if not after_sync:
                    j = self._buf.find(b"\n")
                    if j >= 0:
                        line = bytes(self._buf[:j])
                        del self._buf[:j + 1]
                        if len(line) > MAX_LINE:
                            self._synced = False
                            raise AgentError(f"agent reply longer than {MAX_LINE} bytes")
                        return line
                    if len(self._buf) > MAX_LINE:
                        self._buf.clear()
                        self._synced = False
                        raise AgentError(f"agent reply longer than {MAX_LINE} bytes")
                left = deadline - time.monotonic()
                if left <= 0:
                    self._synced = False
                    raise AgentTimeout("the guest agent did not answer")
                self._cond.wait(left)

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any] | None:
        line = line.strip().lstrip(SYNC_BYTE)
        if not line:
            return None
        try:
            obj = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            return None  # garbage between replies (e.g. a partial stale reply): skipped
        return obj if isinstance(obj, dict) else None

    # -- commands ---------------------------------------------------------------------------------------
    def _send(self, command: str, arguments: dict[str, Any] | None) -> None:
        msg: dict[str, Any] = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self._write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def _sync(self, deadline: float) -> None:
        token = secrets.randbelow(1 << 31)
        with self._cond:
            self._buf.clear()
        self._write(SYNC_BYTE)
        self._send("guest-sync-delimited", {"id": token})
        after_sync = True
        while True:
            reply = self._parse(self._line(deadline, after_sync))
            after_sync = False
            if reply is not None and reply.get("return") == token:
                self._synced = True
                return

    def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0,
             no_reply: bool = False) -> Any:
        """Send one command and return its ``return`` value (AgentError on ``error`` or nonsense)."""
        deadline = time.monotonic() + timeout
        if not self._call_lock.acquire(timeout=max(0.0, timeout)):
            raise AgentTimeout("the guest agent is busy with another command")
        try:
            try:
                if not self._synced:
                    self._sync(deadline)
                self._send(command, arguments)
            except OSError as e:
                self._synced = False
                raise AgentError(f"cannot write to the guest agent's channel: {e}") from e
            if no_reply:
                return None
            while True:
                reply = self._parse(self._line(deadline, False))
                if reply is None:
                    continue
                if "error" in reply:
                    err = reply["error"]
                    desc = err.get("desc") if isinstance(err, dict) else None
                    raise AgentError(f"{command}: {str(desc)[:200] if desc is not None else 'error'}")
                if "return" in reply:
                    return reply["return"]
        finally:
            self._call_lock.release()

    def ping(self, timeout: float = 3.0) -> bool:
        try:
            self.call("guest-ping", timeout=timeout)
        except AgentError:
            return False
        return True

    # -- guest-exec -------------------------------------------------------------------------------------
    def exec(self, argv: list[str], timeout: float = 120.0, input_data: bytes | None = None,
             poll: float = 0.05) -> ExecResult:
        deadline = time.monotonic() + timeout
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input_data:
            args["input-data"] = base64.b64encode(input_data).decode()
        started = self.call("guest-exec", args, timeout=min(timeout, 30.0))
        pid = started.get("pid") if isinstance(started, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise AgentError("guest-exec: no pid in the reply")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentTimeout(f"command still running in the guest after {timeout:g} s (pid {pid})")
            st = self.call("guest-exec-status", {"pid": pid}, timeout=min(left, 30.0))
            if not isinstance(st, dict):
                raise AgentError("guest-exec-status: not an object")
            if st.get("exited") is True:
                return ExecResult(exitcode=_opt_int(st.get("exitcode")), signal=_opt_int(st.get("signal")),
                                  out=_b64(st.get("out-data"), MAX_EXEC_OUTPUT),
                                  err=_b64(st.get("err-data"), MAX_EXEC_OUTPUT),
                                  truncated=bool(st.get("out-truncated") or st.get("err-truncated")))
            time.sleep(min(poll, max(0.0, left)))
            poll = min(poll * 1.5, 0.5)

    # -- files ------------------------------------------------------------------------------------------
    def _open(self, path: str, mode: str) -> int:
        h = self.call("guest-file-open", {"path": path, "mode": mode})
        if not isinstance(h, int) or isinstance(h, bool):
            raise AgentError("guest-file-open: no handle in the reply")
        return h

    def _close(self, handle: int) -> None:
        try:
            self.call("guest-file-close", {"handle": handle})
        except AgentError:
            pass

    def read_file(self, path: str, limit: int, timeout: float = 300.0) -> bytes:
        """The guest file's bytes (AgentError past `limit`)."""
        deadline = time.monotonic() + timeout
        h = self._open(path, "r")
        out = bytearray()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AgentTimeout(f"reading {path} took longer than {timeout:g} s")
                r = self.call("guest-file-read", {"handle": h, "count": FILE_CHUNK}, timeout=min(left, 60.0))
                if not isinstance(r, dict):
                    raise AgentError("guest-file-read: not an object")
                chunk = _b64(r.get("buf-b64"), FILE_CHUNK)
                out += chunk
                if len(out) > limit:
                    raise AgentError(f"{path} is larger than {limit} bytes")
                if r.get("eof") is True or not chunk:
                    return bytes(out)
        finally:
            self._close(h)

    def write_file(self, path: str, data: bytes, timeout: float = 300.0, mode: str = "w") -> None:
        """Write (mode "w") or append to (mode "a") a guest file."""
        if mode not in ("w", "a"):
            raise ValueError(mode)
        deadline = time.monotonic() + timeout
        h = self._open(path, mode)
        try:
            for off in range(0, max(len(data), 1), FILE_CHUNK):
                chunk = data[off:off + FILE_CHUNK]
                if not chunk:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AgentTimeout(f"writing {path} took longer than {timeout:g} s")
                r = self.call("guest-file-write", {"handle": h, "buf-b64": base64.b64encode(chunk).decode()},
                              timeout=min(left, 60.0))
                if not isinstance(r, dict) or r.get("count") != len(chunk):
                    raise AgentError(f"guest-file-write: short write to {path}")
        finally:
            self._close(h)

    # -- the rest ---------------------------------------------------------------------------------------
    def interfaces(self, timeout: float = 5.0) -> list[Interface]:
        r = self.call("guest-network-get-interfaces", timeout=timeout)
        if not isinstance(r, list):
            raise AgentError("guest-network-get-interfaces: not a list")
        out: list[Interface] = []
        for item in r[:64]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            mac = item.get("hardware-address")
            iface = Interface(name=_text(item["name"]), mac=_text(mac) if isinstance(mac, str) else None)
            addrs = item.get("ip-addresses")
            for a in addrs[:64] if isinstance(addrs, list) else []:
                if isinstance(a, dict) and isinstance(a.get("ip-address"), str):
                    prefix = _opt_int(a.get("prefix"))
                    suffix = f"/{prefix}" if prefix is not None else ""
                    iface.addresses.append(_text(a["ip-address"]) + suffix)
            out.append(iface)
        return out

    def shutdown(self, mode: str = "powerdown", timeout: float = 5.0) -> None:
        """guest-shutdown sends no reply on success; an error reply still arrives as one."""
        if mode not in ("powerdown", "halt", "reboot"):
            raise ValueError(mode)
        self.call("guest-shutdown", {"mode": mode}, timeout=timeout, no_reply=True)

    def fsfreeze(self, timeout: float = 30.0) -> int:
        n = self.call("guest-fsfreeze-freeze", timeout=timeout)
        return n if isinstance(n, int) else 0

    def fsthaw(self, timeout: float = 30.0) -> int:
        n = self.call("guest-fsfreeze-thaw", timeout=timeout)
        return n if isinstance(n, int) else 0


def _opt_int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _text(s: str) -> str:
    """A name from the guest, fit to print: bounded and without control characters."""
    return "".join(c if c.isprintable() else "?" for c in s[:64])


def _b64(v: object, limit: int) -> bytes:
    if v is None:
        return b""
    if not isinstance(v, str) or len(v) > (limit * 4) // 3 + 8:
        raise AgentError("bad or oversized base64 data from the agent")
    try:
        return base64.b64decode(v, validate=True)
    except ValueError as e:
        raise AgentError("bad base64 data from the agent") from e
