"""Debian's xenstore-utils (libxenstore 4.17) and PyPI's pyxs, unchanged, against the daemon's xenstored
socket (`XENSTORED_PATH`, as libxenstore's xs_open() looks it up): every command's output and exit code,
compared with what domain 0's store holds. The store's content is read from the state file domain 0
writes within 200 ms of every change (`<socket>.state/xenstore.json`, backends/xenstore/persist.py): the
in-process tree, with permissions, not another trip through the socket."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import Xl
from .test_daemon import write_cfg

pytestmark = pytest.mark.slow

TOOLS = ("xenstore-ls", "xenstore-read", "xenstore-write", "xenstore-rm", "xenstore-list",
         "xenstore-exists", "xenstore-chmod", "xenstore-watch")


@dataclass
class Dom0:
    xl: Xl
    xs_path: Path
    state: Path

    def tool(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, XENSTORED_PATH=str(self.xs_path))
        p = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout)
        if check:
            assert p.returncode == 0, (argv, p.returncode, p.stdout, p.stderr)
        return p

    def store(self) -> dict[str, tuple[bytes, list[str], list[str]]]:
        """The in-process store once it is quiet: {path: (value, perms, children)}."""
        last = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)  # domain 0 rewrites the file within 200 ms of a change
            try:
                text = self.state.read_text()
            except FileNotFoundError:
                continue
            if text == last:
                snap = json.loads(text)
                return {p: (base64.b64decode(v), perms, children) for p, v, perms, children in snap["nodes"]}
            last = text
        raise AssertionError("the store did not settle")


@pytest.fixture
def dom0(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Dom0]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"{missing} not installed: scripts/setup.sh installs Debian's xenstore-utils"
    sock, xs_path = tmp_path / "hd.sock", tmp_path / "xenstored" / "socket"
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(sock),
                             "--xenstored-socket", str(xs_path), "-v"],
                            stdout=log, stderr=subprocess.STDOUT)
    request.node.hd_daemon = (proc, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 30
        while not (sock.exists() and xs_path.exists()):
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert (xs_path.stat().st_mode & 0o777) == 0o600
        yield Dom0(Xl(sock), xs_path, sock.with_name(sock.name + ".state") / "xenstore.json")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert not xs_path.exists()  # removed when the daemon stops
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def ls_line(path: str, value: bytes) -> str | None:
    """xenstore-ls -f's line for a node whose value needs no escaping (printable ASCII, no backslash)."""
    text = value.decode("latin-1")
    if not all(" " <= ch <= "~" for ch in text) or "\\" in text:
        return None
    return f'{path} = "{text}"'


def test_a_running_domains_tree(dom0: Dom0, images: GuestImages, tmp_path: Path) -> None:
    dom0.xl("create", write_cfg(tmp_path, "xst"))
    dom0.xl("exec", "xst", "true")
    domid = int(dom0.xl("domid", "xst").stdout)
    home = f"/local/domain/{domid}"
    for _ in range(5):  # the guest may still be settling: compare a quiet store with a listing of it
        before = dom0.store()
        out = dom0.tool("xenstore-ls", "-f", home).stdout.splitlines()
        if dom0.store() == before:
            break
    store = before
    below = sorted(p for p in store if p.startswith(home + "/"))
    assert len(out) == len(below) > 5
    expected = {p: ls_line(p, store[p][0]) for p in below}
    plain = [line for line in out if line in expected.values()]
    assert len(plain) >= len(below) - 2, (out, expected)  # all but values that need escaping
    assert {line.split(" = ")[0] for line in out} == set(below)
    assert dom0.tool("xenstore-list", home).stdout.split() == store[home][2]
    assert dom0.tool("xenstore-read", f"{home}/name").stdout == "xst\n"
    assert dom0.tool("xenstore-read", f"{home}/domid").stdout.strip() == str(domid)
    # what the guest may do, domain 0 reads: its own home's permissions
    perms = dom0.tool("xenstore-ls", "-p", "/local/domain").stdout
    assert f"(n0,r{domid})" in perms or f"(n{domid})" in perms
    dom0.xl("destroy", "xst")


def test_write_read_rm_exists_list_chmod(dom0: Dom0) -> None:
    t = dom0.tool
    t("xenstore-write", "/tool/a", "one", "/tool/b/c", "two words")
    store = dom0.store()
    assert store["/tool/a"][0] == b"one" and store["/tool/b/c"][0] == b"two words"
    assert t("xenstore-read", "/tool/a", "/tool/b/c").stdout == "one\ntwo words\n"
    assert t("xenstore-read", "-p", "/tool/a").stdout == "/tool/a: one\n"
    bad = t("xenstore-read", "/tool/nope", check=False)
    assert bad.returncode == 1 and "couldn't read path /tool/nope" in bad.stderr
    assert t("xenstore-exists", "/tool/a").returncode == 0
    assert t("xenstore-exists", "/tool/nope", check=False).returncode == 1
    assert t("xenstore-list", "/tool").stdout.split() == store["/tool"][2] == ["a", "b"]
    assert t("xenstore-ls", "-f", "/tool").stdout.splitlines() == [
        '/tool/a = "one"', '/tool/b = ""', '/tool/b/c = "two words"']
    # relative paths are domain 0's home
    t("xenstore-write", "vm-note", "x")
    assert dom0.store()["/local/domain/0/vm-note"][0] == b"x"
    # permissions
    t("xenstore-chmod", "/tool/a", "n0", "r5", "w7")
    assert dom0.store()["/tool/a"][1] == ["n0", "r5", "w7"]
    assert "(n0,r5,w7)" in t("xenstore-ls", "-p", "/tool").stdout
    t("xenstore-chmod", "-r", "/tool/b", "b3")
    store = dom0.store()
    assert store["/tool/b"][1] == store["/tool/b/c"][1] == ["b3"]
    # rm, and rm -t tidying the empty parents
    t("xenstore-rm", "/tool/a")
    assert "/tool/a" not in dom0.store()
    assert t("xenstore-rm", "/tool/a", check=False).returncode == 0  # a missing node: no error
    t("xenstore-write", "/tidy/x/y", "1")
    t("xenstore-rm", "-t", "/tidy/x/y")
    assert not [p for p in dom0.store() if p.startswith("/tidy")]
    # what xenstored refuses comes back as the tools' failures
    bad = t("xenstore-write", "/tool/bad//path", "v", check=False)
    assert bad.returncode != 0 and "could not write path" in bad.stderr


def test_a_large_directory(dom0: Dom0) -> None:
    names = [f"entry-with-a-longish-name-{i:05d}" for i in range(5000)]
    pairs: list[str] = []
    for i, n in enumerate(names):
        pairs += [f"/big/{n}", str(i)]
    dom0.tool("xenstore-write", *pairs)  # one transaction
    listed = dom0.tool("xenstore-list", "/big").stdout.split()
    assert listed == names == dom0.store()["/big"][2]  # past one reply: DIRECTORY_PART
    out = dom0.tool("xenstore-ls", "-f", "/big").stdout.splitlines()
    assert out == [f'/big/{n} = "{i}"' for i, n in enumerate(names)]


def test_xenstore_watch_sees_a_write(dom0: Dom0) -> None:
    dom0.tool("xenstore-write", "/watched/x", "0")
    env = dict(os.environ, XENSTORED_PATH=str(dom0.xs_path))
    # -n counts events: the first is the one every new watch fires, the second our write's
    w = subprocess.Popen(["xenstore-watch", "-n", "2", "/watched"], stdout=subprocess.PIPE, text=True,
                         env=env)
    try:
        assert w.stdout is not None
        assert w.stdout.readline() == "/watched\n"
        dom0.tool("xenstore-write", "/watched/x", "1")
        assert w.stdout.readline() == "/watched/x\n"
        assert w.wait(10) == 0
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    one = subprocess.run(["timeout", "10", "xenstore-watch", "-n", "1", "/watched/x"], env=env,
                         capture_output=True, text=True)
    assert (one.returncode, one.stdout) == (0, "/watched/x\n")


def test_pyxs_transactions_and_a_conflict(dom0: Dom0) -> None:
    pyxs = pytest.importorskip("pyxs")
    path = str(dom0.xs_path)
    with pyxs.Client(unix_socket_path=path) as a, pyxs.Client(unix_socket_path=path) as b:
        a.write(b"/px/x", b"0")
        a.transaction()
        assert a.read(b"/px/x") == b"0"
        b.write(b"/px/x", b"b")  # changes what a's transaction read
        a.write(b"/px/x", b"a")
        assert a.commit() is False  # EAGAIN
        assert dom0.store()["/px/x"][0] == b"b"
        a.transaction()
        a.write(b"/px/x", b"a")
        assert a.commit() is True
        assert dom0.store()["/px/x"][0] == b"a"
        m = b.monitor()
        m.watch(b"/px", b"tok")
        events = m.wait()
        assert next(events) == (b"/px", b"tok")
        a.write(b"/px/y", b"1")
        assert next(events) == (b"/px/y", b"tok")
