"""xenstore through the daemon's control protocol (issue 11): every refusal is one line with Xen's error
name, the connection stays usable and the daemon logs no traceback; xenstore-utils' operations (read,
write, rm -t, list, exists, mkdir, chmod -r/-u, ls rows, several in one transaction); directories over
4 KiB; watches answer before their first event. A real daemon (scripted engine) on a socket pair."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperdisco.toolstack.daemon import Daemon


class Conn:
    def __init__(self, d: Daemon) -> None:
        self.sock, theirs = socket.socketpair()
        threading.Thread(target=d.handle, args=(theirs,), daemon=True).start()
        self.file = self.sock.makefile("rb")

    def raw(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        line = self.file.readline()
        assert line.endswith(b"\n"), "the daemon closed the connection"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def xs(self, cmd: str, path: str, **kw: Any) -> dict[str, Any]:
        return self.raw({"op": "xenstore", "cmd": cmd, "path": path, **kw})

    def ok(self, cmd: str, path: str, **kw: Any) -> Any:
        r = self.xs(cmd, path, **kw)
        assert r["ok"] is True, r
        return r["result"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(str(tmp_path_factory.mktemp("xs") / "c.sock"), engine="scripted")
    yield d
    d.host.close()


@pytest.fixture
def c(daemon: Daemon) -> Iterator[Conn]:
    conn = Conn(daemon)
    yield conn
    conn.sock.close()


def refused(r: dict[str, Any], name: str) -> str:
    assert r["ok"] is False and r["errno"] == name, r
    err = str(r["error"])
    assert "\n" not in err and err.startswith("hyperdisco: ") and name in err
    return err


HOSTILE = [
    ({"cmd": "read", "path": "/tool/../x"}, "EINVAL"),
    ({"cmd": "rm", "path": "/nonexistent/x"}, "ENOENT"),
    ({"cmd": "ls", "path": "/nonexistent"}, "ENOENT"),
    ({"cmd": "list", "path": "/nonexistent"}, "ENOENT"),
    ({"cmd": "read", "path": "/nonexistent"}, "ENOENT"),
    ({"cmd": "write", "path": "/tool/big", "value": "x" * 5000}, "E2BIG"),
    ({"cmd": "write", "path": "/tool/a\0b", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool/a b", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool/a\nb", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool/caf\u00e9", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool/a\u20ac", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool//a", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool/a/", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/" + "a" * 3100, "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "", "value": "v"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool/v", "value": "\udcff"}, "EINVAL"),
    ({"cmd": "write", "path": "/tool/v", "value": "not base64!", "base64": True}, "EINVAL"),
    ({"cmd": "rm", "path": "/"}, "EINVAL"),
    ({"cmd": "chmod", "path": "/tool", "perms": ["x0"]}, "EINVAL"),
    ({"cmd": "chmod", "path": "/tool", "perms": ["r99999999"]}, "EINVAL"),
    ({"cmd": "chmod", "path": "/nonexistent", "perms": ["n0"]}, "ENOENT"),
    ({"cmd": "getperms", "path": "/nonexistent"}, "ENOENT"),
]


@pytest.mark.parametrize(("req", "name"), HOSTILE,
                         ids=[f"{r['cmd']}-{n}-{i}" for i, (r, n) in enumerate(HOSTILE)])
def test_refusals_carry_xen_error_names_and_keep_the_connection(c: Conn, daemon: Daemon,
                                                                  req: dict[str, Any], name: str) -> None:
    refused(c.raw({"op": "xenstore", **req}), name)
    assert c.raw({"op": "list"})["ok"] is True  # the same connection answers the next request
    assert c.ok("exists", "/tool/a") is False  # the NUL path wrote nothing (it used to store /tool/a)
    log = "\n".join(daemon.host.dmesg)
    assert "Traceback" not in log and "internal error" not in log and "control:" not in log


def test_read_write_exists_mkdir_getperms(c: Conn) -> None:
    assert c.ok("write", "/tool/t1/a", value="hello \u20ac") is None
    assert c.ok("read", "/tool/t1/a") == "hello \u20ac"
    assert c.ok("exists", "/tool/t1/a") is True and c.ok("exists", "/tool/t1/zz") is False
    c.ok("mkdir", "/tool/t1/d/e")
    assert c.ok("read", "/tool/t1/d/e") == "" and c.ok("list", "/tool/t1") == ["a", "d"]
    assert c.ok("getperms", "/tool/t1/a") == ["n0"]
    binary = bytes(range(256))
    c.ok("write", "/tool/t1/bin", value=base64.b64encode(binary).decode(), base64=True)
    assert base64.b64decode(c.ok("read", "/tool/t1/bin", base64=True)) == binary
    assert "\ufffd" in c.ok("read", "/tool/t1/bin")  # as text, bytes that are not UTF-8 are replaced
    c.ok("rm", "/tool/t1")
    assert c.ok("exists", "/tool/t1") is False
    c.ok("rm", "/tool/t1")  # removing a missing node whose parent exists is fine (xenstore.txt)


def test_bad_arguments_for_a_command(c: Conn) -> None:
    for req in ({"cmd": "read", "path": "/tool", "value": "x"}, {"cmd": "write", "path": "/tool/x"},
                {"cmd": "chmod", "path": "/tool"}, {"cmd": "frob", "path": "/tool"},
                {"cmd": "ls", "path": "/tool", "tidy": True}):
        r = c.raw({"op": "xenstore", **req})
        assert r["ok"] is False and "\n" not in r["error"], r
    assert c.raw({"op": "list"})["ok"] is True


def test_rm_tidy_removes_empty_parents(c: Conn) -> None:
    c.ok("write", "/tool/t2/keep", value="1")
    c.ok("write", "/tool/t2/a/b/c", value="1")
    c.ok("rm", "/tool/t2/a/b/c", tidy=True)
    assert c.ok("list", "/tool/t2") == ["keep"]  # a/b and a went; t2 has a child left
    c.ok("write", "/tool/t2/v/w", value="1")
    c.ok("write", "/tool/t2/v", value="has a value")
    c.ok("rm", "/tool/t2/v/w", tidy=True)
    assert c.ok("read", "/tool/t2/v") == "has a value"  # a parent with a value stays
    c.ok("rm", "/tool/t2")


def test_chmod_recursive_and_up(c: Conn) -> None:
    c.ok("write", "/tool/t3/a/b", value="1")
    c.ok("write", "/tool/t3/c", value="1")
    c.ok("chmod", "/tool/t3", perms=["n0", "r5"], recurse=True)
    for p in ("/tool/t3", "/tool/t3/a", "/tool/t3/a/b", "/tool/t3/c"):
        assert c.ok("getperms", p) == ["n0", "r5"]
    c.ok("chmod", "/tool/t3/a/b", perms=["b7"], upto=True)
    assert [c.ok("getperms", p) for p in ("/tool/t3/a/b", "/tool/t3/a", "/tool/t3", "/tool", "/")] == [
        ["b7"]] * 4 + [["n0"]]  # as xenstore-chmod -u: up to, not including, the root
    c.ok("chmod", "/tool", perms=["n0"])
    c.ok("rm", "/tool/t3")


def test_ls_rows(c: Conn) -> None:
    c.ok("write", "/tool/t4/a", value="1")
    c.ok("write", "/tool/t4/a/x", value="tab\there")
    c.ok("write", "/tool/t4/b", value="2")
    rows = c.ok("ls", "/tool/t4", with_perms=True)
    assert [(r["depth"], r["name"], r["path"], r["value"], r["perms"]) for r in rows] == [
        (0, "a", "/tool/t4/a", "1", ["n0"]), (1, "x", "/tool/t4/a/x", "tab\there", ["n0"]),
        (0, "b", "/tool/t4/b", "2", ["n0"])]
    whole = [(r["depth"], r["path"]) for r in c.ok("ls", "/")]
    assert (0, "/tool") in whole and (2, "/tool/t4/a") in whole and (3, "/tool/t4/a/x") in whole
    c.ok("rm", "/tool/t4")


def test_directories_over_4k(c: Conn) -> None:
    names = [f"child-with-a-long-name-{i:05d}" for i in range(400)]  # ~12 KiB of names
    r = c.raw({"op": "xenstore_tx", "ops": [{"cmd": "write", "path": f"/tool/t5/{n}", "value": "v"}
                                             for n in names[:200]]})
    assert r["ok"] and all(x["ok"] for x in r["result"])
    for n in names[200:]:
        c.ok("write", f"/tool/t5/{n}", value="v")
    assert c.ok("list", "/tool/t5") == names
    rows = c.ok("ls", "/tool/t5")
    assert [x["name"] for x in rows] == names
    c.ok("rm", "/tool/t5")


def test_a_failing_batch_changes_nothing(c: Conn) -> None:
    r = c.raw({"op": "xenstore_tx", "ops": [
        {"cmd": "write", "path": "/tool/t6/a", "value": "1"}, {"cmd": "read", "path": "/tool/t6/a"},
        {"cmd": "read", "path": "/tool/t6/missing"}, {"cmd": "write", "path": "/tool/t6/b", "value": "2"}]})
    assert r["ok"] is True
    res = r["result"]
    assert [x["ok"] for x in res] == [True, True, False]  # stops at the first failure
    assert res[1]["result"] == "1" and res[2]["errno"] == "ENOENT"
    assert c.ok("exists", "/tool/t6") is False  # aborted: the write did not happen
    bad = c.raw({"op": "xenstore_tx", "ops": [{"cmd": "ls", "path": "/"}]})
    assert bad["ok"] is False
    bad = c.raw({"op": "xenstore_tx", "ops": [{"cmd": "read", "path": "/a\0"}]})
    refused(bad, "EINVAL")


def test_watch_answers_before_its_first_event_and_takes_several_paths(daemon: Daemon) -> None:
    w = Conn(daemon)
    try:
        w.sock.sendall(json.dumps({"op": "watch", "path": ["/tool/w1", "/tool/w2"]}).encode() + b"\n")
        assert json.loads(w.file.readline()) == {"ok": True, "result": None}
        first = {json.loads(w.file.readline())["path"] for _ in range(2)}  # fired once when set
        assert first == {"/tool/w1", "/tool/w2"}
        c = Conn(daemon)
        c.ok("write", "/tool/w2/x", value="1")
        assert json.loads(w.file.readline()) == {"path": "/tool/w2/x", "watch": "/tool/w2"}
        c.ok("rm", "/tool/w2")
    finally:
        w.sock.close()
    bad = Conn(daemon)
    bad.sock.sendall(json.dumps({"op": "watch", "path": "/tool/a\0"}).encode() + b"\n")
    refused(json.loads(bad.file.readline()), "EINVAL")


def test_the_client_sees_the_error_name_and_keeps_its_connection(tmp_path: Path, daemon: Daemon) -> None:
    from hyperdisco.toolstack.protocol import Client, DaemonError

    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    threading.Thread(target=lambda: daemon.handle(listener.accept()[0]), daemon=True).start()
    client = Client(path)
    try:
        with pytest.raises(DaemonError) as e:
            client.call("xenstore", cmd="read", path="/tool/nope")
        assert e.value.errno == "ENOENT" and str(e.value).startswith("hyperdisco: xenstore read /tool/nope")
        assert client.call("xenstore", cmd="exists", path="/tool") is True
    finally:
        client.close()
        listener.close()
