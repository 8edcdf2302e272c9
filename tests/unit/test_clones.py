"""Clones of a save file (hyperdisco/toolstack/clones.py): names as an xl user expects them, the clone's
record, and `restore = "FILE"` in xl.cfg."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperdisco.toolstack.clones import clone_name, clone_record
from hyperdisco.toolstack.requests import RequestError
from hyperdisco.toolstack.xlcfg import parse_text


def test_names() -> None:
    live = {"web", "web-1", "web-3"}
    taken = live.__contains__
    assert clone_name("db", None, taken) == "db"           # a plain restore keeps the saved name
    assert clone_name("web", None, taken) == "web-2"       # the smallest free suffix
    assert clone_name("web", "blue", taken) == "blue"      # restore -n / the config's name
    with pytest.raises(RequestError, match="already exists"):
        clone_name("web", "web-1", taken)
    with pytest.raises(RequestError, match="invalid domain name"):
        clone_name("web", "no/slash", taken)


def test_record_takes_name_and_disks_only() -> None:
    saved = {"name": "web", "memory": 128, "disks": [{"target": "/srv/base.img", "access": "rw"}]}
    assert clone_record(saved, "web-1", None) == {**saved, "name": "web-1"}
    own = [{"target": "/srv/c1.qcow2", "format": "qcow2", "access": "rw", "vdev": "xvdb"}]
    got = clone_record(saved, "c1", {"name": "c1", "memory": 512, "disks": own})
    assert got == {"name": "c1", "memory": 128, "disks": own}  # memory stays the saved domain's
    assert saved["name"] == "web"  # not changed in place


def test_xlcfg_restore_key(tmp_path: Path) -> None:
    spec = parse_text('name = "c1"\nrestore = "t.save"\n', "c1.cfg", base_dir=tmp_path)
    assert spec.restore == str(tmp_path / "t.save")
    assert parse_text('name = "c1"\nrestore = "/abs/t.save"\n', "c1.cfg", base_dir=tmp_path).restore == \
        "/abs/t.save"
    assert parse_text('name = "c1"\n').restore is None
    with pytest.raises(Exception, match="restore"):
        parse_text('name = "c1"\nrestore = ""\n', "c1.cfg")


def test_clone_vifs_get_new_macs() -> None:
    from hyperdisco.backends.net.manager import VifConfig
    from hyperdisco.toolstack.clones import clone_vifs

    saved = [VifConfig(network="lan0", mac="00:16:3e:00:00:01", devid=0, hostfwd=(("tcp", 2222, 22),))]
    assert clone_vifs(saved, clone=False) == saved  # a plain restore: the same MAC (netfront re-reads it)
    (c,) = clone_vifs(saved, clone=True)
    assert c.mac is None and c.devid == 0 and c.network == "lan0" and c.hostfwd == ()
