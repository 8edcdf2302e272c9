"""SMP guests are opt-in until the engine's known crash is found (docs/smp.md): vcpus > 1 is one line
without HYPERDISCO_SMP=1, and accepted with it."""

from __future__ import annotations

import pytest

from hyperdisco.errors import ConfigError
from hyperdisco.toolstack.build import SMP_OPT_IN, check_vcpus


def test_vcpus_above_one_need_the_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SMP_OPT_IN, raising=False)
    check_vcpus(1)
    for vcpus, maxvcpus in ((2, 0), (1, 2)):
        with pytest.raises(ConfigError, match="vcpus > 1 is experimental") as info:
            check_vcpus(vcpus, maxvcpus)
        assert "\n" not in str(info.value) and SMP_OPT_IN in str(info.value)
    monkeypatch.setenv(SMP_OPT_IN, "1")
    check_vcpus(2, 4)
