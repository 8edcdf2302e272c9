"""hyperdisco.client (issue 11): Connection and Domain against a real daemon (scripted engine) on a socket:
create, list, lookup, pause/unpause, destroy, the store, watches and errors with Xen's names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_support import scripted_daemon

from hyperdisco.client import Connection, DomainInfo, Error


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    with scripted_daemon(tmp_path_factory.mktemp("client")) as (_daemon, path, kernel):
        yield path, kernel


def test_domains(served: tuple[str, Path]) -> None:
    path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "cl", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt"})
        assert (dom.name, dom.domid) == ("cl", 1)
        assert [d.name for d in conn.domains()] == ["cl"]
        assert [r.name for r in conn.list()] == ["Domain-0", "cl"]
        same = conn.lookup("cl")
        assert same.domid == dom.domid and conn.lookup(dom.domid).name == "cl"
        info = dom.info()
        assert isinstance(info, DomainInfo) and info.mem == 32
        dom.pause()
        assert dom.info().state[2] == "p"
        dom.unpause()
        assert dom.info().state[2] == "-"
        assert conn.info()["domains"] == 1
        dom.destroy()
        assert conn.domains() == []
        with pytest.raises(Error):
            conn.lookup("cl")
        with pytest.raises(Error):
            dom.info()


def test_store_and_errors(served: tuple[str, Path]) -> None:
    path, _ = served
    with Connection(path) as conn:
        xs = conn.xenstore
        xs.write("/tool/cl/a", b"\x00bin\xff")
        xs.write("/tool/cl/b", "text")
        assert xs.read("/tool/cl/a") == b"\x00bin\xff" and xs.exists("/tool/cl/b")
        assert xs.list("/tool/cl") == ["a", "b"]
        rows = xs.ls("/tool/cl", with_perms=True)
        assert [(r["name"], r["value"], r["perms"]) for r in rows] == [("a", b"\x00bin\xff", ["n0"]),
                                                                       ("b", b"text", ["n0"])]
        xs.set_perms("/tool/cl", ["n0", "r2"], recurse=True)
        assert xs.get_perms("/tool/cl/b") == ["n0", "r2"]
        with pytest.raises(Error) as e:
            xs.read("/tool/cl/missing")
        assert e.value.errno == "ENOENT"
        with pytest.raises(Error) as e:
            xs.transaction([{"cmd": "write", "path": "/tool/cl/c", "value": "1"},
                            {"cmd": "read", "path": "/tool/../x"}])
        assert e.value.errno == "EINVAL" and not xs.exists("/tool/cl/c")
        assert xs.transaction([{"cmd": "write", "path": "/tool/cl/c", "value": "1"},
                               {"cmd": "read", "path": "/tool/cl/c"}]) == [None, "1"]
        events = conn.watch("/tool/cl")
        assert next(events) == ("/tool/cl", "/tool/cl")
        xs.rm("/tool/cl")
        assert next(events) == ("/tool/cl", "/tool/cl")
        events.close()
        assert conn.call("list")[0]["name"] == "Domain-0"  # still usable after all of that


def test_no_daemon() -> None:
    with pytest.raises(Error, match="cannot reach the daemon"):
        Connection("/nonexistent/dir/c.sock")
