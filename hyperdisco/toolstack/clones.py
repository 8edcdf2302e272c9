"""Clones of a saved domain (docs/clones.md): `restore FILE` again and again, or `create CFG` with
`restore = "FILE"` in the config.

Each clone is a new domain: its own ID (the next free one, as any create), its own xenstore subtree
(built for the new domain ID; the guest's xenbus re-reads it on resume), its own name and its own vif
MACs; its memory maps the save file's pages copy-on-write (vmm/snapshot.py, GuestMemory.map_file_pages),
and its ACPI VM Generation ID is a new one (platform/vmgenid.py).

Names, as an xl user expects them: the saved name when no live domain has it (a plain restore), else
NAME-1, NAME-2, ... (the smallest free); `restore -n NAME` or a config's `name =` picks one (a name in use
is refused, as create refuses it). Disks: a clone gets the saved domain's disks unless its config gives
`disk = [...]`. Vifs: the saved ones with the same devids but new MACs and no host port forwards, unless
its config gives `vif = [...]`; the guest keeps its own addresses (a clone on the original's network
needs DHCP or its own network). A writable image is locked by the domain that has it open, so a second
domain that would write it is refused in one line: each clone needs its own overlay (a qcow2 whose
backing file is the saved disk), which its config names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..backends.net.manager import VifConfig
from .requests import RequestError, check_name

MAX_SUFFIX = 9999

# what a clone's config (create CFG with restore = "FILE") may change; everything else (memory, vCPUs,
# kernel, command line) is the saved domain's: the saved memory was booted with it
CLONE_KEYS = ("name", "disks", "vifs")


def clone_name(saved: str, wanted: str | None, taken: Callable[[str], bool]) -> str:
    """The new domain's name: `wanted` (refused when taken), else the saved name when free, else the
    saved name with the smallest free -N suffix."""
    if wanted is not None:
        check_name(wanted, "restore")
        if taken(wanted):
            raise RequestError(f"hyperdisco: restore: a domain called {wanted!r} already exists")
        return wanted
    if not taken(saved):
        return saved
    for n in range(1, MAX_SUFFIX + 1):
        name = f"{saved}-{n}"
        if not taken(name):
            return check_name(name, "restore")
    raise RequestError(f"hyperdisco: restore: no free name {saved}-N (N up to {MAX_SUFFIX})")


def clone_record(record: dict[str, Any], name: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The create record of the clone: the saved one with its new name and the config's disks (when it
    gives any) in place of the saved domain's."""
    out = {**record, "name": name}
    if overrides and overrides.get("disks"):
        out["disks"] = overrides["disks"]
    return out


def clone_vifs(vifs: Sequence[VifConfig], clone: bool) -> list[VifConfig]:
    """The saved vifs for the restored domain: as saved for a plain restore (same devid and MAC: the
    guest's netfront reads its MAC again on resume); for a clone, a MAC of its own (derived from its
    new name, as create derives one) and no host port forwards (those belong to the first domain)."""
    if not clone:
        return list(vifs)
    return [replace(v, mac=None, hostfwd=()) for v in vifs]


def is_disk_busy(exc: Exception) -> bool:
    return "in use by another domain" in str(exc)


DISK_HINT = ("; a clone needs a disk of its own: create CFG with restore = \"FILE\" and a disk = [...] "
             "overlay over the saved disk (docs/clones.md)")
