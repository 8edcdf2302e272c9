"""xenstored's state across a restart of domain 0 (as oxenstored's live update keeps it): the tree with
its permissions, the guests' watches and SET_TARGET links, written to a file by the daemon whenever it
changed and read back by the next daemon, which adopts the running domains.

What is not kept: open transactions (a guest's next TRANSACTION_END gets ENOENT... Linux's xenbus then
fails that one operation) and a request or reply in flight at the moment domain 0 died. The file is
written atomically (temporary file, fsync, rename), owned by root, mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from ...errors import HyperdiscoError
from . import store as st
from .watches import Watch

FORMAT = 1


def snapshot(xsd: Any) -> dict[str, Any]:
    """The persistent state of a Xenstored (call with its lock held, or from its own thread)."""
    with xsd._lock:
        nodes = [[path, base64.b64encode(node.value).decode(), st.perms_to_strings(node.perms),
                  list(node.children)] for path, node in xsd.store.nodes.items()]
        guests = {str(domid): [[w.path, w.token, w.relative_to] for w in conn.watches]
                  for domid, conn in xsd._guests.items()}
        return {"format": FORMAT, "nodes": nodes, "guests": guests,
                "targets": {str(k): v for k, v in xsd._targets.items()},
                "special": {k: st.perms_to_strings(v) for k, v in xsd._special_perms.items()}}


def restore(xsd: Any, snap: dict[str, Any]) -> dict[int, list[Watch]]:
    """Load a snapshot into a fresh Xenstored; returns each guest's watches, to give back to it when the
    domain is introduced again (`Xenstored.introduce_domain(..., watches=...)`)."""
    if snap.get("format") != FORMAT:
        raise HyperdiscoError("hyperdisco: xenstore state file of another version")
    with xsd._lock:
        store = xsd.store
        store.nodes.clear()
        store.counts.clear()
        for path, value, perms, children in snap["nodes"]:
            store.put(path, st.Node(base64.b64decode(value), st.parse_perms(perms), tuple(children)))
        xsd._targets = {int(k): int(v) for k, v in snap.get("targets", {}).items()}
        for name, perms in snap.get("special", {}).items():
            xsd._special_perms[name] = st.parse_perms(perms)
    return {int(domid): [Watch(p, t, r) for p, t, r in ws] for domid, ws in snap.get("guests", {}).items()}


def save(path: Path, snap: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(snap, separators=(",", ":")).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HyperdiscoError(f"hyperdisco: {path}: {exc.strerror}") from None
    try:
        st_ = os.fstat(fd)
        if not (st_.st_mode & 0o170000 == 0o100000) or st_.st_size > 64 << 20:
            raise HyperdiscoError(f"hyperdisco: {path}: not a xenstore state file")
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    finally:
        os.close(fd)
    try:
        snap = json.loads(data)
    except ValueError:
        raise HyperdiscoError(f"hyperdisco: {path}: corrupt xenstore state file") from None
    return snap if isinstance(snap, dict) else None


def version(xsd: Any) -> tuple[int, int]:
    """Changes when the persistent state does (store generation, number of guest watches)."""
    with xsd._lock:
        return xsd.store.generation, sum(len(c.watches) for c in xsd._guests.values())
