"""Admission control: a domain the host cannot honour is refused in one line (issue 12, item 5)."""

from __future__ import annotations

import pytest
from unit_support import make_elf

from hyperdisco.core.domain import DomainConfig
from hyperdisco.dom0.admission import ENGINE_OVERHEAD_MIB, Admission
from hyperdisco.errors import ConfigError
from hyperdisco.loader.elf import parse_kernel

KERNEL = parse_kernel(make_elf())


def cfg(name: str, mib: int) -> DomainConfig:
    return DomainConfig(name, KERNEL, None, "", mib)


def test_twelve_big_domains_do_not_fit_in_24_gib() -> None:
    adm = Admission(1.0, total_mib=24 * 1024)
    running: list[DomainConfig] = []
    with pytest.raises(ConfigError, match="not enough host memory") as e:
        for i in range(12):
            c = cfg(f"big{i}", 2048)
            adm.admit(c, running)
            running.append(c)
    assert len(running) == 24 * 1024 // (2048 + ENGINE_OVERHEAD_MIB)
    assert "\n" not in str(e.value)


def test_overcommit_ratio() -> None:
    adm = Admission(2.0, total_mib=1024)
    adm.admit(cfg("a", 1800), [])
    with pytest.raises(ConfigError):
        Admission(1.0, total_mib=1024).admit(cfg("a", 1800), [])
    with pytest.raises(ConfigError, match="out of range"):
        Admission(0.0)
