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
from ..vmm.channel import Channel, ChannelClosed, ChannelFull

SPAWN_TIMEOUT_S = 30.0


class Spawner:
    def __init__(self, log: Callable[[str], None], on_spare: Callable[[int], None] | None = None,
                 on_spare_gone: Callable[[int], None] | None = None) -> None:
        """`on_spare(pid)`: the template forked a spare domain process ahead of its domain (vmm/zygote.py),
        called on a thread of its own (its cgroup is made then: a slow move, off any create's way);
        `on_spare_gone(pid)`: a spare that ended unused (its cgroup can go)."""
        self.log = log
        self.on_spare = on_spare
        self.on_spare_gone = on_spare_gone
        self.spare = 0  # the template's spare, not handed a domain yet
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
                if pid == self.spare:
                    self.spare = 0
                self._replies.put(pid)
            elif msg.get("t") == "spare":
                self.spare = pid
                if self.on_spare is not None:
                    threading.Thread(target=self.on_spare, args=(pid,), name="hd-spare", daemon=True).start()
            elif msg.get("t") == "exit" and isinstance(msg.get("status"), int):
                if pid == self.spare:
                    self.spare = 0
                    if self.on_spare_gone is not None:
                        self.on_spare_gone(pid)
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

    def request_spare(self) -> None:
        """A create is done: the template may fork the next spare now (vmm/zygote.py)."""
        if self.alive and not self.spare:
            try:
                self.ch.send({"t": "spare-now"}, wait=False)
            except (ChannelClosed, ChannelFull):
                pass

    def status(self, pid: int) -> int | None:
        """How a process it forked ended (as os.waitstatus_to_exitcode), or None while unknown."""
        with self._cond:
            return self._status.get(pid)

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._status or not self.alive, timeout)
            return self._status.get(pid)

    def close(self) -> None:
        spare = self.spare
        self.ch.close()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if spare and self.on_spare_gone is not None:  # it ends with the template (nobody reaps it now)
            self.on_spare_gone(spare)
