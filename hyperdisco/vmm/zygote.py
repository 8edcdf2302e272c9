"""The template domain process (a fork server, as Android's zygote or Python's forkserver): started once
by domain 0, it imports everything a domain process needs (the hypervisor core, the backends, the CPU
engine and its compiled fast path), freezes those objects out of the garbage collector, and then forks a
domain process for each request. A fork skips the interpreter's start and the imports (about 0.3 s per
domain) and shares the template's pages with every domain process until one writes them.

Protocol on its socket (SOCK_SEQPACKET, JSON, vmm/channel.py): domain 0 sends {"t": "spawn"} with one
descriptor, the domain process's end of its channel; the template answers {"t": "spawned", "pid": N}. When
a domain process ends, the template (its parent) reaps it and sends {"t": "exit", "pid": N, "status": S}
(S as os.waitstatus_to_exitcode: negative for a signal). The template is single-threaded, so forking is
safe; it exits when domain 0's end of its socket closes (the domain processes live on).
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys

from .channel import Channel, ChannelClosed


def _preload() -> None:
    from ..engine.tcg.engine import fastpath  # unicorn, and the fast path compiled into the cache
    from . import domain_process  # noqa: F401  (the core, the backends, the jail)

    fastpath()


def _reap(ch: Channel) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            ch.send({"t": "exit", "pid": pid, "status": os.waitstatus_to_exitcode(status)})
        except ChannelClosed:
            return


def serve(ch: Channel) -> int:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # wakes select through the wakeup fd
    gc.freeze()  # what the imports made stays out of the collector: pages stay shared after fork
    while True:
        ready, _w, _x = select.select([ch.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(ch)
        if ch.fileno() not in ready:
            continue
        try:
            msg, fds = ch.recv()
        except ChannelClosed:
            return 0
        if msg.get("t") != "spawn" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:  # the domain process
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            ch.sock.close()
            os.setsid()

            from .domain_process import run_on

            run_on(fds[0])  # never returns
        os.close(fds[0])
        try:
            ch.send({"t": "spawned", "pid": pid})
        except ChannelClosed:
            return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m hyperdisco.vmm.zygote CHANNEL_FD (domain 0 starts it)", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(argv[0]))
    _preload()
    return serve(Channel(sock))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
