"""A back end whose device thread waits in poll() on an eventfd and on a socket to domain 0: netback's
VifBackend (frames to and from domain 0's switch) and the console channels' ChannelBackend (bytes to and
from domain 0's end of the channel).

Other threads (xenstore watches, the guest's event-channel sends, stop, a new domain 0 handing over a new
socket) set a flag under `_flags_lock` and write the eventfd (`_wake`); the device thread (`_run`, the
subclass's) reads it, looks at the flags and serves. The socket is non-blocking: the device never waits
on domain 0.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from .xenbus_backend import XenbusBackend


class SocketBackend(XenbusBackend):
    STOP_TIMEOUT_S = 10.0  # how long stop() waits for the device thread by default

    def __init__(self, dom: Any, xenstored: Any, kind: str, devid: int, label: str, thread_name: str,
                 sock: socket.socket, log: Callable[[str], None]) -> None:
        super().__init__(dom, xenstored, kind, devid, label, thread_name, log)
        self._flags_lock = threading.Lock()  # the flags other threads set for the device thread
        self._stop = self._xenbus = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._prepare(sock)
        self.sock = sock

    def _prepare(self, sock: socket.socket) -> None:
        """Make a socket from domain 0 ours (non-blocking; a subclass may set more)."""
        sock.setblocking(False)

    def replace_socket(self, sock: socket.socket) -> None:
        """A new domain 0 adopted the domain: the device talks to it through `sock` from now on."""
        self._prepare(sock)
        old, self.sock = self.sock, sock
        self._wake()
        old.close()

    def stop(self, timeout: float | None = None) -> None:
        with self._flags_lock:
            self._stop = True
        self._wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.STOP_TIMEOUT_S if timeout is None else timeout)
        self.xs.close()
        self.sock.close()
        os.close(self._wake_fd)

    def _on_watch(self, path: str, token: str) -> None:
        with self._flags_lock:
            self._xenbus = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def _clear_wake(self) -> None:
        """The device thread saw the eventfd readable: reset it, so the next _wake is seen again."""
        try:
            os.eventfd_read(self._wake_fd)
        except OSError:
            pass
