"""Build a domain inside its domain process from domain 0's build message (the composition root of a
domain: engine, clock, memory, kernel and platform), and report its statistics."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..core.clock import Clock
from ..core.domain import Domain, DomainConfig
from ..core.scheduler import Scheduler
from ..engine.base import get_engine
from ..errors import HyperdiscoError
from ..loader.elf import KernelImage, Segment
from ..loader.shared_image import SharedImage, adopt_shared_image
from .snapshot import open_save_soon, restore_into

MAX_INITRD = 1 << 30


def _read_all(fd: int, size: int) -> bytes:
    if not 0 <= size <= MAX_INITRD:
        raise HyperdiscoError("hyperdisco: initramfs size out of range")
    chunks = []
    done = 0
    while done < size:
        b = os.pread(fd, min(size - done, 1 << 24), done)
        if not b:
            raise HyperdiscoError("hyperdisco: initramfs shorter than announced")
        chunks.append(b)
        done += len(b)
    return b"".join(chunks)


def build_domain(msg: dict[str, Any], fds: list[int], output: Callable[[bytes], None],
                 log: Callable[[str], None]) -> Domain:
    """fds: [special pages memfd, kernel image memfd, initramfs memfd (when there is one)]."""
    k = msg["kernel"]
    special_fd, kernel_fd = fds[0], fds[1]
    saved = None
    if isinstance(msg.get("restore_fd"), int) and 0 <= msg["restore_fd"] < len(fds):
        saved = open_save_soon(fds[msg["restore_fd"]])  # checked while the engine and domain are built
    kernel = KernelImage(segments=[Segment(int(p), b"", int(m)) for p, m in k["segments"]],
                         pvh_entry=int(k["pvh_entry"]), notes={})
    adopt_shared_image(kernel, SharedImage(kernel_fd, int(k["gpa"]), int(k["size"])))
    initrd = None
    if msg.get("initrd_size") is not None:
        initrd = _read_all(fds[2], int(msg["initrd_size"]))
        os.close(fds[2])
    engine = get_engine(str(msg.get("engine", "tcg")))
    clock = Clock(engine.guest_tsc, params=msg["clock"])
    config = DomainConfig(name=str(msg["name"]), kernel=kernel, initrd=initrd, cmdline=str(msg["cmdline"]),
                          memory_mib=int(msg["memory_mib"]), vcpus=int(msg["vcpus"]),
                          maxmem_mib=int(msg["maxmem_mib"]) if msg.get("maxmem_mib") is not None else None,
                          max_event_channels=_optional_int(msg.get("max_event_channels")),
                          maxvcpus=int(msg.get("maxvcpus", 0)))
    restore = None
    if saved is not None:
        restore = lambda dom: restore_into(dom, saved())  # noqa: E731
    elif isinstance(msg.get("incoming_fd"), int):  # a live migration's: memory and vCPU come from its stream
        restore = lambda dom: None  # noqa: E731
    # special_fd stays open: a new domain 0 that adopts this domain gets it again (domain_process.py)
    return Domain(int(msg["domid"]), config, engine, clock, output, log, special_fd=special_fd,
                  restore=restore)


def domain_stats(dom: Domain, scheduler: Scheduler | None) -> dict[str, Any]:
    running = scheduler.running() if scheduler is not None else set()
    first_tsc = min((c.ev.counts().first_syscall_tsc for c in dom.vcpus), default=0)
    return {
        "cpu_s": dom.cpu_seconds(),
        "traps": dom.traps(),
        "vcpus": [{"running": ctx in running, "blocked": ctx.halted or ctx.blocked,
                   "describe": ctx.describe(), "up": ctx.online, "tid": ctx.host_tid,
                   "cpu_s": ctx.cpu_ns / 1e9}
                  for ctx in dom.vcpus],
        "paused": dom.paused,
        "shared_bytes": dom.memory.shared_bytes,
        "memory": dom.reservation.stats(),  # tot_pages, max_pages, pages given back (core/reservation.py)
        "user_space_mono": dom.clock.mono_at(first_tsc) if first_tsc else None,
        "first_output": dom.first_output,
    }


def _optional_int(v: Any) -> int | None:
    return None if v is None else int(v)
