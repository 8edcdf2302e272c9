"""Admission control: a domain is created only if the host can honour it.

A domain costs its RAM plus what its process and CPU engine need besides (the translation buffer, the
interpreter): ENGINE_OVERHEAD_MIB, measured as the private memory of an idle domain process beyond its
guest RAM. The sum over all domains may not exceed the host's memory times an overcommit ratio the
administrator sets (`hyperdisco daemon --overcommit R`, or HYPERDISCO_OVERCOMMIT; default 1.0: no
overcommit; above 1 relies on page sharing and on guests not touching all their RAM).
"""

from __future__ import annotations

import os

from ..core.domain import DomainConfig
from ..errors import ConfigError

ENGINE_OVERHEAD_MIB = 64
DEFAULT_OVERCOMMIT = 1.0


def host_memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20


def cost_mib(config: DomainConfig) -> int:
    return config.memory_mib + ENGINE_OVERHEAD_MIB * max(1, config.vcpus)


class Admission:
    def __init__(self, overcommit: float | None = None, total_mib: int | None = None) -> None:
        if overcommit is None:
            try:
                overcommit = float(os.environ.get("HYPERDISCO_OVERCOMMIT", DEFAULT_OVERCOMMIT))
            except ValueError:
                raise ConfigError("hyperdisco: HYPERDISCO_OVERCOMMIT must be a number") from None
        if not 0.1 <= overcommit <= 100:
            raise ConfigError(f"hyperdisco: overcommit ratio {overcommit} is out of range (0.1..100)")
        self.overcommit = overcommit
        self.total_mib = host_memory_mib() if total_mib is None else total_mib

    @property
    def limit_mib(self) -> int:
        return int(self.total_mib * self.overcommit)

    def admit(self, config: DomainConfig, running: list[DomainConfig]) -> None:
        used = sum(cost_mib(c) for c in running)
        need = cost_mib(config)
        if used + need > self.limit_mib:
            raise ConfigError(
                f"hyperdisco: not enough host memory for {config.name!r}: it needs {need} MiB "
                f"({config.memory_mib} RAM + engine), {self.limit_mib - used} MiB of {self.limit_mib} are "
                f"left (host {self.total_mib} MiB x overcommit {self.overcommit:g})")
