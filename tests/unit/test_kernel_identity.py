"""kernel_identity (toolstack/snapshot_ops.py): what a save file says it was booted from, hashed once per
kernel image in use, and never the identity of another kernel, even one that takes a freed image's place."""

from __future__ import annotations

import gc
import hashlib

import pytest

from hyperdisco.loader.elf import KernelImage, Segment
from hyperdisco.toolstack import snapshot_ops


def kernel(data: bytes, entry: int = 0x1000000) -> KernelImage:
    return KernelImage(segments=[Segment(0x1000000, data, len(data) + 4096)], pvh_entry=entry, notes={})


def expected(k: KernelImage) -> str:
    h = hashlib.sha256(k.pvh_entry.to_bytes(8, "little"))
    for s in k.segments:
        h.update(s.paddr.to_bytes(8, "little") + s.memsz.to_bytes(8, "little") + s.data)
    return "sha256:" + h.hexdigest()


def test_hashed_once_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = snapshot_ops._kernel_hash
    monkeypatch.setattr(snapshot_ops, "_kernel_hash", lambda k: calls.append(k) or real(k))
    k = kernel(b"\x90" * 8192)
    assert snapshot_ops.kernel_identity(k) == expected(k)
    assert snapshot_ops.kernel_identity(k) == expected(k)
    assert len(calls) == 1


def test_another_image_has_its_own_identity_even_at_a_reused_address() -> None:
    seen = {}
    for i in range(50):  # freed images' addresses are soon reused by new ones
        k = kernel(bytes([i]) * 4096, entry=0x1000000 + i)
        ident = snapshot_ops.kernel_identity(k)
        assert ident == expected(k)
        seen[ident] = i
        del k
        gc.collect()
    assert len(seen) == 50
    assert len(snapshot_ops._IDENTITIES) <= 2  # dead images' entries are dropped
