"""The channel between domain 0 (the daemon) and one domain process: a SOCK_SEQPACKET Unix socket pair.

Every message is one datagram holding one JSON object, optionally with file descriptors (SCM_RIGHTS):
the build message carries the domain's special-pages memfd, the shared kernel image, the initramfs and
its disk images. Message boundaries are kept by the socket, so a reader never parses a partial frame.
Both ends treat the other's messages as input to validate: a domain process may be compromised, and
domain 0 never trusts what it says beyond the one domain the socket belongs to.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

MAX_MESSAGE = 256 * 1024  # the largest datagram either end sends (xenstore values are 4 KiB at most)
MAX_FDS = 64


class ChannelClosed(Exception):
    """The other end went away (or sent something that is not a message)."""


class ChannelFull(ChannelClosed):
    """A send that must not wait found the other end's queue full: it stopped reading."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = (), wait: bool = True) -> None:
        """Send one message; with wait=False never block (ChannelFull if the peer's queue is full)."""
        data = json.dumps(msg, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"channel message of {len(data)} bytes is too large")
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        with self._send_lock:
            try:
                self.sock.sendmsg([data], anc, 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                raise ChannelFull("the other end stopped reading") from None
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        """The next message and the descriptors that came with it (the caller owns them)."""
        try:
            data, anc, flags, _addr = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None
        fds: list[int] = []
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(blob[: len(blob) - len(blob) % a.itemsize])
                fds.extend(a)
        if not data:
            for fd in fds:
                os.close(fd)
            raise ChannelClosed("end of channel")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            raise ChannelClosed("truncated message")
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):
            msg = None
        if not isinstance(msg, dict):
            for fd in fds:
                os.close(fd)
            raise ChannelClosed("malformed message")
        return msg, fds

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class PendingReplies:
    """Requests sent over a channel that wait for the reply carrying their id (both ends use one)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list[Any]]] = {}

    def call(self, send: Callable[[int], None], timeout: float) -> Any | None:
        """`send(id)` the request, then wait for its reply: the value delivered, or None after `timeout`."""
        req = next(self._ids)
        done = threading.Event()
        box: list[Any] = []
        with self._lock:
            self._waiting[req] = (done, box)
        try:
            send(req)
            return box[0] if done.wait(timeout) else None
        finally:
            with self._lock:
                self._waiting.pop(req, None)

    def deliver(self, req: object, value: Any) -> None:
        """The reply to request `req` (ignored if nobody waits for it: late, unknown or not an id)."""
        with self._lock:
            waiter = self._waiting.get(req) if isinstance(req, int) else None
        if waiter is not None:
            waiter[1].append(value)
            waiter[0].set()

    def fail_all(self, value: Any) -> None:
        """Every waiting request gets `value` now (the other end is gone)."""
        with self._lock:
            waiting = list(self._waiting.values())
        for done, box in waiting:
            box.append(value)
            done.set()
