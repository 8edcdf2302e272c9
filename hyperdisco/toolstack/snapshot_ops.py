"""xl save / restore in the daemon (docs/save-format.md; the domain process's side: vmm/snapshot.py).

save DOM FILE: the file is opened here (the jailed process can open nothing) and handed to the domain
process ("save-to"), then the guest is asked to suspend through control/shutdown = "suspend"; when it
has, the process writes the file and the domain ends with outcome "suspend". restore FILE: the file is
checked whole (core/savefile.py), its configuration validated as a create request's, and a new domain is
built from it with the file handed to its process, which loads memory and vCPU state instead of the
kernel.
"""

from __future__ import annotations

import hashlib
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..backends.net.manager import VifConfig
from ..core.domain import DomainConfig
from ..core.savefile import SaveFile, SaveFileError
from ..dom0 import vcpus as dom0_vcpus
from ..dom0.handle import DomainHandle
from ..dom0.host import Host
from ..errors import HyperdiscoError
from ..loader.elf import KernelImage
from . import clones, quiesce
from .requests import RequestError
from .saved_record import record_with_vcpus, record_with_vifs, saved_vifs

SUSPEND_TIMEOUT_S = 120.0


# kernel_identity of the kernels in use: a KernelImage is shared by every domain made from one file
# (toolstack/build.py) and never changed, and hashing its ~50 MB took 22 ms of every save and restore
_IDENTITIES: dict[int, tuple[weakref.ref[KernelImage], str]] = {}


def kernel_identity(kernel: KernelImage) -> str:
    """SHA-256 of the kernel's loaded segments and entry: what the saved memory was booted from (computed
    once per KernelImage)."""
    known = _IDENTITIES.get(id(kernel))
    if known is not None and known[0]() is kernel:
        return known[1]
    identity = _kernel_hash(kernel)
    for key in [k for k, (ref, _i) in _IDENTITIES.items() if ref() is None]:  # kernels no longer used
        del _IDENTITIES[key]
    _IDENTITIES[id(kernel)] = (weakref.ref(kernel), identity)
    return identity


def _kernel_hash(kernel: KernelImage) -> str:
    h = hashlib.sha256()
    h.update(kernel.pvh_entry.to_bytes(8, "little"))
    for seg in kernel.segments:
        h.update(seg.paddr.to_bytes(8, "little") + seg.memsz.to_bytes(8, "little"))
        h.update(seg.data)
    return "sha256:" + h.hexdigest()


def save(host: Host, dom: DomainHandle, path: str, timeout: float = SUSPEND_TIMEOUT_S,
         keep: bool = False) -> dict[str, Any]:
    """`keep` (xl save -c): a checkpoint; the guest's suspend is cancelled once the file is written and
    the domain carries on."""
    if dom.finished:
        raise RequestError(f"hyperdisco: save: domain {dom.name} is not running")
    try:
        # never an existing file: the daemon runs as root for clients the socket was granted to, and a
        # save must not truncate a file of the host's (xl overwrites; here the user removes it first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RequestError(f"hyperdisco: save: {path}: {exc.strerror}") from None
    started = time.monotonic()
    agent = host.pv_channels.agent(dom.domid)
    frozen = quiesce.freeze(agent)  # the guest agent's fsfreeze, when it answers (toolstack/quiesce.py)
    try:
        # its vifs and its vCPUs as they are (toolstack/saved_record.py)
        record = record_with_vifs(dom.config.record, host.net.configs(dom.domid))
        possible = dom0_vcpus.max_vcpus(dom)
        record = record_with_vcpus(record, dom0_vcpus.available(host.xs, dom.domid, possible), possible)
        header = {"hyperdisco": __version__, "kernel": kernel_identity(dom.config.kernel),
                  "record": record, "name": dom.name, "saved_at": time.time(),
                  "guest_up": dom.guest_up, "fsfrozen": frozen.frozen}
        dom.saved.clear()
        reply = dom.call({"t": "save-to", "header": header, "checkpoint": keep}, [fd], timeout=10.0)
    except BaseException:
        _thaw_if_running(dom, agent, frozen)
        raise
    finally:
        os.close(fd)
    if reply is None or not reply.get("ok"):
        os.unlink(path)
        _thaw_if_running(dom, agent, frozen)
        raise RequestError(f"hyperdisco: save: domain {dom.name} did not take the save file")
    host.request_shutdown(dom, "suspend")
    try:
        if frozen.frozen and quiesce.suspend_refused(
                agent, lambda: dom.saved.is_set() or dom.done.is_set() or dom.finished, timeout):
            # a task blocked on the frozen filesystems stopped the guest's freezer: thawed, asked again
            frozen = quiesce.Freeze(report=f"{frozen.report}, but the guest could not suspend frozen (a task "
                                           f"blocked on a frozen filesystem); {quiesce.thaw(agent)}, saved "
                                           "without a freeze")
            host.request_shutdown(dom, "suspend")
        result = _wait_saved(host, dom, path, timeout, keep, started)
    finally:  # save -c, or a guest that did not suspend: the original runs on, thawed
        thawed = _thaw_if_running(dom, agent, frozen)
    if frozen.report:
        after = (f"; {thawed} after the checkpoint" if thawed else
                 "; a domain restored from it is thawed when its agent answers" if frozen.frozen else "")
        result["fsfreeze"] = frozen.report + after
    return result


def _thaw_if_running(dom: DomainHandle, agent: Any, frozen: quiesce.Freeze) -> str:
    if not frozen.frozen or dom.finished:
        return ""
    return quiesce.thaw(agent)


def _wait_saved(host: Host, dom: DomainHandle, path: str, timeout: float, keep: bool,
                started: float) -> dict[str, Any]:
    if keep:
        deadline = time.monotonic() + timeout
        while not dom.saved.wait(0.2):
            if dom.finished:
                raise RequestError(f"hyperdisco: save: domain {dom.name} ended ({dom.outcome}); "
                                   "nothing saved")
            if time.monotonic() > deadline:
                raise RequestError(f"hyperdisco: save: domain {dom.name} did not suspend within "
                                   f"{timeout:.0f} s")
        if not dom.saved_detail.startswith("saved"):
            raise RequestError(f"hyperdisco: save: {dom.saved_detail or 'nothing saved'}")
        return {"file": path, "detail": dom.saved_detail, "bytes": os.path.getsize(path),
                "seconds": round(time.monotonic() - started, 3)}
    if not dom.done.wait(timeout):
        raise RequestError(f"hyperdisco: save: domain {dom.name} did not suspend within {timeout:.0f} s "
                           "(is its kernel's xenbus control/shutdown watch running?)")
    if dom.outcome != "suspend" or not dom.outcome_detail.startswith("saved"):
        raise RequestError(f"hyperdisco: save: domain {dom.name} ended with {dom.outcome}"
                           f"{': ' + dom.outcome_detail if dom.outcome_detail else ''}; nothing saved")
    # as xl, save returns once the domain is gone: its name and its vifs' MACs are free for restore
    host.wait_gone(dom, 30.0)
    return {"file": path, "detail": dom.outcome_detail, "bytes": os.path.getsize(path),
            "seconds": round(time.monotonic() - started, 3)}


def restore(host: Host, path: str, configure: Callable[[dict[str, Any]], DomainConfig],
            name: str | None = None, overrides: dict[str, Any] | None = None,
            given_vifs: Sequence[VifConfig] | None = None) -> dict[str, Any]:
    """`name`, `overrides` (a clone's create config: its disks) and `given_vifs` (its vifs instead of the
    saved ones): toolstack/clones.py."""
    started = time.monotonic()
    if not isinstance(path, str) or not path or "\0" in path:
        raise RequestError("hyperdisco: restore: the save file must be a path")
    try:  # checked whole while copied into a sealed memfd, or that copy again (dom0/sealed_saves.py)
        sealed_fd, save = host.sealed_saves.acquire(path)
    except SaveFileError as exc:
        raise RequestError(f"hyperdisco: restore: {exc}") from None
    try:
        return _restore_from(host, path, sealed_fd, save, configure, name, overrides, given_vifs, started)
    finally:
        os.close(sealed_fd)


def _restore_from(host: Host, path: str, sealed_fd: int, save: SaveFile,
                  configure: Callable[[dict[str, Any]], DomainConfig], name: str | None,
                  overrides: dict[str, Any] | None, given_vifs: Sequence[VifConfig] | None,
                  started: float) -> dict[str, Any]:
    header = save.header
    record = header.get("record")
    if not isinstance(record, dict):
        raise RequestError(f"hyperdisco: restore: {path}: no domain configuration in the file")
    if header.get("hyperdisco") != __version__:
        raise RequestError(f"hyperdisco: restore: {path} was saved by hyperdisco "
                           f"{str(header.get('hyperdisco'))[:40]}, this is {__version__}")
    saved_name = str(record.get("name"))
    record = clones.clone_record(record, clones.clone_name(
        saved_name, name, lambda n: any(d.name == n for d in host.domains.values())), overrides)
    config = configure(record)
    if given_vifs is not None:
        vifs = list(given_vifs)
    else:  # a clone (a new name) gets new MACs: clones.clone_vifs
        vifs = clones.clone_vifs(saved_vifs(record, path), clone=record.get("name") != saved_name)
    if kernel_identity(config.kernel) != header.get("kernel"):
        raise RequestError(f"hyperdisco: restore: {path} was saved from another kernel than "
                           f"{record.get('kernel') or 'the default one'} is now")
    try:
        dom = host.create(config, vifs=vifs, restore=sealed_fd)
    except HyperdiscoError as exc:
        if clones.is_disk_busy(exc):
            raise RequestError(f"{exc}{clones.DISK_HINT}") from None
        raise
    host.sealed_saves.used_by(save, lambda: not dom.finished)  # its copy is kept while it runs
    # its shell was up when it was saved and carries on: it prints no new banner (exec waits for one)
    dom.guest_up = header.get("guest_up") is True
    if header.get("fsfrozen") is True:  # saved with its filesystems frozen: thawed once its agent answers,
        # waited for up to RESTORE_WAIT_S before restore answers (the reseed's exec after it: qemu-ga
        # refuses guest-exec while frozen), then left to go on in the background
        quiesce.thaw_when_resumed(lambda: host.pv_channels.agent(dom.domid), lambda: dom.finished,
                                  host.log, dom.name).join(quiesce.RESTORE_WAIT_S)
    return {"domid": dom.domid, "name": dom.name, "seconds": round(time.monotonic() - started, 3)}
