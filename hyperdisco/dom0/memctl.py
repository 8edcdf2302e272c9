"""A domain's memory target and maximum, as xl's mem-set and mem-max set them (libxl_mem.c).

The guest's balloon driver (Linux drivers/xen/xen-balloon.c) watches `memory/target` in its xenstore
directory, in KiB, and reads `memory/static-max` (KiB) once, at the first watch event, to learn how much
of its RAM the toolstack counts that the kernel does not (target_diff); it then gives pages back or takes
them again (core/reservation.py) until it holds the target. libxl writes both nodes when it builds a
domain; `libxl_set_memory_target` refuses a target above static-max ("memory_dynamic_max must be less than
or equal to memory_static_max") and, as xl mem-set always asks (enforce), lowers the domain's max_pages to
the target plus LIBXL_MAXMEM_CONSTANT, so the guest cannot take back more than it was given;
`libxl_domain_setmaxmem` refuses a maximum below the current target and sets max_pages (it leaves
static-max as it is). The domain process holds max_pages (message mem-max); domain 0 holds the nodes.

Here static-max is the domain's RAM: xl.cfg `maxmem` when given, else `memory`. The guest's physical
memory map holds that much and no more, so a target is at most that; with maxmem above memory the guest
boots with maxmem of RAM and a target of memory, and balloons itself down at once (Xen's
populate-on-demand boot of an HVM guest; untouched RAM costs the host nothing here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..core.domain import DomainConfig
    from .handle import DomainHandle
    from .host import Host

MAXMEM_CONSTANT_KIB = 1024  # libxl_internal.h LIBXL_MAXMEM_CONSTANT: slack above a target, in KiB
PAGE_KIB = 4


def initial_nodes(config: DomainConfig) -> list[tuple[str, str]]:
    """The memory nodes libxl writes for a new domain (libxl_dom.c, libxl__build_post), in KiB: static-max
    is maxmem (else memory), the target is memory. With maxmem above memory, the guest's balloon driver
    sees the difference at its first watch event and gives it back at once."""
    static_max = max(config.memory_mib, config.maxmem_mib or 0) * 1024
    return [("memory/static-max", str(static_max)), ("memory/target", str(config.memory_mib * 1024))]


def _read_kib(host: Host, dom: DomainHandle, node: str) -> int:
    value = host.xs.read(f"/local/domain/{dom.domid}/memory/{node}")
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 15:
        raise ConfigError(f"hyperdisco: domain {dom.domid}: cannot read its memory/{node}")
    return int(value)


def set_target(host: Host, dom: DomainHandle, mib: int) -> None:
    """xl mem-set: the balloon target, at most static-max; max_pages follows it (enforce)."""
    if dom.finished:
        raise ConfigError(f"hyperdisco: mem-set: domain {dom.domid} is not running")
    kib = mib * 1024
    static_max = _read_kib(host, dom, "static-max")
    if kib > static_max:
        raise ConfigError(f"hyperdisco: mem-set: {mib} MiB is above {dom.name}'s maximum "
                          f"({static_max // 1024} MiB, its memory)")
    _set_max_pages(dom, kib + MAXMEM_CONSTANT_KIB)
    host.xs.write(f"/local/domain/{dom.domid}/memory/target", str(kib))
    host.log(f"domain {dom.domid} ({dom.name}): memory target {mib} MiB")


def set_max(host: Host, dom: DomainHandle, mib: int) -> None:
    """xl mem-max: the most the domain may hold (max_pages), not below its current target."""
    if dom.finished:
        raise ConfigError(f"hyperdisco: mem-max: domain {dom.domid} is not running")
    kib = mib * 1024
    target = _read_kib(host, dom, "target")
    if kib < target:
        raise ConfigError(f"hyperdisco: mem-max: {mib} MiB is below {dom.name}'s memory target "
                          f"({target // 1024} MiB); mem-set it lower first")
    _set_max_pages(dom, kib + MAXMEM_CONSTANT_KIB)
    host.log(f"domain {dom.domid} ({dom.name}): maximum memory {mib} MiB")


def _set_max_pages(dom: DomainHandle, kib: int) -> None:
    dom.send({"t": "mem-max", "pages": kib // PAGE_KIB})


def current_mib(dom: DomainHandle) -> int:
    """What the domain holds now (Xen's tot_pages, from its last statistics), in MiB; its configured
    memory until it has said."""
    mem = dom.stats.get("memory")
    if isinstance(mem, dict) and isinstance(mem.get("tot_pages"), int):
        return int(mem["tot_pages"]) * PAGE_KIB // 1024
    return dom.config.memory_mib
