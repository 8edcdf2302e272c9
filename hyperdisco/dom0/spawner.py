"""Domain 0's end of the template domain process (vmm/zygote.py): domain processes are forked from it
instead of starting a fresh interpreter each. If the template cannot be started or dies, domain 0 starts
domain processes directly (DomainHandle.start) and says so in its log."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable

from ..errors import HyperdiscoError
from ..vmm.channel import Channel, ChannelClosed

SPAWN_TIMEOUT_S = 30.0


class Spawner:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        parent, child = Channel.pair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hyperdisco.vmm.zygote", str(child.fileno())], pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        child.sock.close()
        self.ch = parent
        self._lock = threading.Lock()  # one spawn at a time: replies come in request order
        self._replies: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._status: dict[int, int] = {}
        self._cond = threading.Condition()
        self.alive = True
        threading.Thread(target=self._read, name="hd-template", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg, fds = self.ch.recv()
            except ChannelClosed:
                break
            for fd in fds:
                os.close(fd)
            pid = msg.get("pid")
            if not isinstance(pid, int):
                continue
            if msg.get("t") == "spawned":
                self._replies.put(pid)
            elif msg.get("t") == "exit" and isinstance(msg.get("status"), int):
                with self._cond:
                    self._status[pid] = msg["status"]
                    self._cond.notify_all()
        self.alive = False
        self._replies.put(-1)
        with self._cond:
            self._cond.notify_all()

    def spawn(self, channel_fd: int) -> int:
        """Fork a domain process that serves the channel `channel_fd`; its pid."""
        with self._lock:
            if not self.alive:
                raise HyperdiscoError("hyperdisco: the template domain process is gone")
            try:
                self.ch.send({"t": "spawn"}, [channel_fd])
                pid = self._replies.get(timeout=SPAWN_TIMEOUT_S)
            except (ChannelClosed, queue.Empty):
                pid = -1
        if pid <= 0:
            raise HyperdiscoError("hyperdisco: the template domain process did not fork a domain process")
        return pid

    def status(self, pid: int) -> int | None:
        """How a process it forked ended (as os.waitstatus_to_exitcode), or None while unknown."""
        with self._cond:
            return self._status.get(pid)

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._status or not self.alive, timeout)
            return self._status.get(pid)

    def close(self) -> None:
        self.ch.close()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
