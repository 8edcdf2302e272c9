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

A spare: the template keeps one child forked ahead ({"t": "spare", "pid": N} tells domain 0, which puts it
in its cgroup then, dom0/cgroups.py prepare), waiting on a socket of its own for the channel of the next
domain; a spawn hands it over instead of forking, so neither the fork nor the cgroup move (7-25 ms on a
cgroup v1 host: the move waits for an RCU grace period) is on the way of a create or restore. The next
spare is forked when domain 0 says its create is done ({"t": "spare-now"}), or SPARE_DELAY_S after a
spawn, not while that domain builds (a cgroup move stalls every fork and thread start on the host
meanwhile). Until it is ready, or if it died, a spawn forks as before.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import time

from .channel import Channel, ChannelClosed


def _preload() -> None:
    from ..engine.tcg.engine import fastpath  # unicorn, and the fast path compiled into the cache
    from . import domain_process  # noqa: F401  (the core, the backends, the jail)

    fastpath()


SPARE_DELAY_S = 1.0


def _reap(ch: Channel) -> set[int]:
    gone: set[int] = set()
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return gone
        if pid == 0:
            return gone
        gone.add(pid)
        try:
            ch.send({"t": "exit", "pid": pid, "status": os.waitstatus_to_exitcode(status)})
        except ChannelClosed:
            return gone


def _as_domain_process(ch: Channel, wake_r: int, wake_w: int, spare: Channel | None) -> None:
    """In a child: drop what the template holds (its signal wake-up, its channels)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(wake_r)
    os.close(wake_w)
    ch.sock.close()
    if spare is not None:
        spare.sock.close()  # close, not shutdown: the spare's end stays whole


def _fork_spare(ch: Channel, wake_r: int, wake_w: int) -> tuple[int, Channel]:
    ours, theirs = Channel.pair()
    pid = os.fork()
    if pid == 0:  # the spare: waits for its domain's channel, then is its domain process
        _as_domain_process(ch, wake_r, wake_w, ours)
        try:
            msg, fds = theirs.recv()
        except ChannelClosed:  # the template went away: no domain for us
            os._exit(0)
        theirs.sock.close()
        if msg.get("t") != "go" or len(fds) != 1:
            os._exit(0)
        os.setsid()
        from .domain_process import run_on

        run_on(fds[0])  # never returns
    theirs.sock.close()
    return pid, ours


def serve(ch: Channel) -> int:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # wakes select through the wakeup fd
    gc.freeze()  # what the imports made stays out of the collector: pages stay shared after fork
    spare: tuple[int, Channel] | None = None
    spare_due = time.monotonic()
    while True:
        wait = None if spare is not None else max(0.0, spare_due - time.monotonic())
        ready, _w, _x = select.select([ch.fileno(), wake_r], [], [], wait)
        if wake_r in ready:
            os.read(wake_r, 4096)
            gone = _reap(ch)
            if spare is not None and spare[0] in gone:
                spare[1].sock.close()
                spare = None
                spare_due = time.monotonic() + SPARE_DELAY_S
        if spare is None and time.monotonic() >= spare_due:
            spare = _fork_spare(ch, wake_r, wake_w)
            try:
                ch.send({"t": "spare", "pid": spare[0]})
            except ChannelClosed:
                return 0
        if ch.fileno() not in ready:
            continue
        try:
            msg, fds = ch.recv()
        except ChannelClosed:
            return 0
        if msg.get("t") == "spare-now" and spare is None:  # domain 0's create is done: the next spare now
            spare_due = time.monotonic()
        if msg.get("t") != "spawn" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        pid = 0
        if spare is not None:  # hand the channel to the spare
            pid, handed = spare
            spare = None
            try:
                handed.send({"t": "go"}, [fds[0]])
            except ChannelClosed:  # it died
                pid = 0
            handed.sock.close()
        if pid == 0:
            pid = os.fork()
            if pid == 0:  # the domain process
                _as_domain_process(ch, wake_r, wake_w, spare[1] if spare is not None else None)
                os.setsid()

                from .domain_process import run_on

                run_on(fds[0])  # never returns
        os.close(fds[0])
        spare_due = time.monotonic() + SPARE_DELAY_S
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
