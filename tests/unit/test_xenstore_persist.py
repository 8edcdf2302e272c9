"""xenstored's state across a restart of domain 0: the tree, permissions and guests' watches."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperdisco.backends.xenstore import Xenstored, persist
from hyperdisco.errors import HyperdiscoError


def test_round_trip(tmp_path: Path) -> None:
    a = Xenstored(lambda m: None)
    xs = a.local_connection()
    xs.write("/local/domain/3/name", "web")
    xs.set_perms("/local/domain/3/name", ["n3", "r0"])
    xs.write("/local/domain/3/data/bin", b"\x00\xffraw")
    path = tmp_path / "xenstore.json"
    persist.save(path, persist.snapshot(a))
    assert path.stat().st_mode & 0o777 == 0o600

    b = Xenstored(lambda m: None)
    snap = persist.load(path)
    assert snap is not None
    persist.restore(b, snap)
    ys = b.local_connection()
    assert ys.read("/local/domain/3/name") == "web"
    assert ys.get_perms("/local/domain/3/name") == ["n3", "r0"]
    assert ys.read_bytes("/local/domain/3/data/bin") == b"\x00\xffraw"
    assert set(ys.directory("/local/domain/3")) == {"name", "data"}
    assert persist.version(b)[0] > 0


def test_hostile_state_files(tmp_path: Path) -> None:
    assert persist.load(tmp_path / "missing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HyperdiscoError, match="corrupt"):
        persist.load(bad)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(HyperdiscoError):
        persist.load(tmp_path / "dir.json")
    with pytest.raises(HyperdiscoError, match="version"):
        persist.restore(Xenstored(lambda m: None), {"format": 99})
