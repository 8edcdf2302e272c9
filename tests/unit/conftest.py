"""Shared fixtures of the unit layer: a synthetic PVH kernel and real (tcg) domains that never run."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from unit_support import DomainHarness, make_elf

from hyperdisco.core.clock import Clock
from hyperdisco.core.domain import Domain, DomainConfig
from hyperdisco.engine.tcg.engine import TcgEngine
from hyperdisco.loader.elf import KernelImage, parse_kernel


@pytest.fixture(scope="session")
def kernel() -> KernelImage:
    return parse_kernel(make_elf(), "synthetic")


@pytest.fixture(scope="session")
def engine() -> TcgEngine:
    return TcgEngine()


@pytest.fixture(scope="session")
def clock(engine: TcgEngine) -> Clock:
    return Clock(engine.guest_tsc, calibrate_s=0.02)


@pytest.fixture
def make_domain(kernel: KernelImage, engine: TcgEngine,
                clock: Clock) -> Iterator[Callable[..., DomainHarness]]:
    made: list[Domain] = []

    def build(vcpus: int = 1, memory_mib: int = 32, initrd: bytes | None = None,
              cmdline: str = "console=hvc0") -> DomainHarness:
        out: list[bytes] = []
        logs: list[str] = []
        cfg = DomainConfig("unit", kernel, initrd, cmdline, memory_mib, vcpus=vcpus)
        dom = Domain(1, cfg, engine, clock, out.append, logs.append)
        made.append(dom)
        return DomainHarness(dom, out, logs)

    yield build
    for dom in made:
        dom.close()
        dom.memory.close()


@pytest.fixture
def dh(make_domain: Callable[..., DomainHarness]) -> DomainHarness:
    return make_domain()
