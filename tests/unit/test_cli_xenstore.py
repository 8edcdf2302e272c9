"""`hyperdisco xenstore` as xenstore-utils (issue 11): their escaping, xenstore-ls's line format (-p, -f,
cut to the width), several paths in one transaction, exit codes (1 on any failure, usage errors too).
The commands run as processes against a real daemon (scripted engine) serving a socket in this process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperdisco.cli.xenstore import ls_line, sanitise, unsanitise
from hyperdisco.toolstack.daemon import Daemon


def test_sanitise_as_xenstore_ls() -> None:
    assert sanitise(b"plain text ~") == "plain text ~"
    assert sanitise(b"a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert sanitise(b"\x00\x01\x07") == "\\000\\001\\007"  # below 8: octal
    assert sanitise(b"\x08\x0b\x1f\x7f\x80\xff") == "\\x08\\x0b\\x1f\\x7f\\x80\\xff"
    assert sanitise("\u20ac".encode()) == "\\xe2\\x82\\xac"


def test_unsanitise_as_xenstore_write() -> None:
    assert unsanitise(b"a\\tb\\nc\\rd\\\\e") == b"a\tb\nc\rd\\e"
    assert unsanitise(b"\\000\\1\\12x\\0123") == b"\x00\x01\x0ax\x0a3"  # up to three octal digits
    assert unsanitise(b"\\xff\\xa\\x4gz\\xzz") == b"\xff\x0a\x04gzxzz"  # up to two hex digits, or none
    assert unsanitise(b"\\q\\\"") == b"q\""  # any other escaped character stands for itself
    assert unsanitise(b"end\\") == b"end\x00"
    assert unsanitise(b"\\777") == b"\xff"


@given(st.binary(max_size=64))
def test_unsanitise_undoes_sanitise(value: bytes) -> None:
    assert unsanitise(sanitise(value).encode()) == value


def row(name: str, depth: int = 0, path: str = "", perms: list[str] | None = None) -> dict[str, object]:
    return {"name": name, "depth": depth, "path": path or f"/{name}", "perms": perms}


def test_ls_lines() -> None:
    assert ls_line(row("a", 1), b"x\ty", False, False, 80) == ' a = "x\\ty"'
    # value cut so the line fits 80 columns: name, ` = "`, as much as fits, `\...`
    long = ls_line(row("name", 2), b"v" * 100, False, False, 80)
    assert long == '  name = "' + "v" * 66 + '\\..."' and len(long) == 81  # as xenstore-ls: one over
    flat = ls_line(row("a", 0, "/x/a"), b"v" * 100, False, True, (1 << 31) // 2)
    assert flat == '/x/a = "' + "v" * 100 + '"'
    dotted = ls_line(row("b", 0, perms=["n0", "r1"]), b"", True, False, 80)
    assert dotted.startswith('b = "" . . .') and dotted.endswith(". .  (n0,r1)")
    assert len(dotted) == 60 + len("  (n0,r1)")  # the permissions line up at column 60
    assert ls_line(row("a", 0, "/a", ["n0"]), b"1", True, True, 1 << 30) == '/a = "1"   (n0)'
    assert ls_line({**row("gone"), "errno": "ENOENT"}, None, False, False, 80) == \
        "gone: (No such file or directory)"


@pytest.fixture(scope="module")
def sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("xscli")
    d = Daemon(str(tmp / "c.sock"), engine="scripted")
    path = str(tmp / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=d.handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield path
    listener.close()
    d.host.close()


def xs(sock: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "HYPERDISCO_SOCKET"}
    return subprocess.run([sys.executable, "-m", "hyperdisco", "xenstore", "--socket", sock, *args],
                          capture_output=True, timeout=60, env=env, input=stdin)


def ok(sock: str, *args: str) -> bytes:
    p = xs(sock, *args)
    assert p.returncode == 0, p.stderr
    return p.stdout


def failed(sock: str, *args: str, name: str = "") -> str:
    p = xs(sock, *args)
    assert p.returncode == 1, (args, p)
    err = p.stderr.decode()
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("hyperdisco: ") and name in err
    return err


def test_the_commands(sock: str) -> None:
    ok(sock, "write", "/tool/c/a", "x\\ty\\001\\\\z\\xff", "/tool/c/b/c", "new\nline")
    assert ok(sock, "read", "/tool/c/a", "/tool/c/b/c") == b"x\\ty\\001\\\\z\\xff\nnew\\nline\n"
    assert ok(sock, "read", "-R", "/tool/c/a") == b"x\ty\x01\\z\xff"
    assert ok(sock, "read", "-p", "/tool/c/a") == b"/tool/c/a: x\\ty\\001\\\\z\\xff\n"
    assert ok(sock, "ls", "/tool/c") == b'a = "x\\ty\\001\\\\z\\xff"\nb = ""\n c = "new\\nline"\n'
    assert ok(sock, "ls", "-f", "/tool/c").splitlines() == [
        b'/tool/c/a = "x\\ty\\001\\\\z\\xff"', b'/tool/c/b = ""', b'/tool/c/b/c = "new\\nline"']
    assert ok(sock, "list", "/tool/c") == b"a\nb\n"
    assert ok(sock, "list", "-p", "/tool/c") == b"/tool/c/a\n/tool/c/b\n"
    assert xs(sock, "exists", "/tool/c/a").returncode == 0
    p = xs(sock, "exists", "/tool/c/a", "/tool/c/nope")
    assert p.returncode == 1 and p.stderr == b"" and p.stdout == b""
    ok(sock, "chmod", "-r", "/tool/c/b", "n0", "r3")
    assert ok(sock, "ls", "-p", "/tool/c/b").decode().rstrip().endswith("(n0,r3)")
    ok(sock, "mkdir", "/tool/c/d/e")
    ok(sock, "rm", "-t", "/tool/c/d/e")
    assert ok(sock, "list", "/tool/c") == b"a\nb\n"
    ok(sock, "rm", "/tool/c")
    assert xs(sock, "exists", "/tool/c").returncode == 1


def test_failures_are_one_line_and_status_1(sock: str) -> None:
    failed(sock, "read", "/tool/../x", name="EINVAL")
    failed(sock, "rm", "/nonexistent/x", name="ENOENT")
    failed(sock, "ls", "/nonexistent", name="ENOENT")
    failed(sock, "write", "/tool/x", "a" * 5000, name="E2BIG")
    failed(sock, "write", "/tool/a b", "v", name="EINVAL")
    failed(sock, "write", "/tool/x")  # not a pair
    failed(sock, "chmod", "/tool", "q1")
    failed(sock, "chmod", "/tool", "rx")
    assert xs(sock, "ls", "--bogus").returncode == 1  # a usage error, as xenstore-utils: 1
    p = subprocess.run([sys.executable, "-m", "hyperdisco", "xenstore", "--socket", "/nonexistent/s", "read",
                        "/x"], capture_output=True, timeout=60)
    assert p.returncode == 1 and b"cannot reach the daemon" in p.stderr


def test_several_paths_are_one_transaction(sock: str) -> None:
    ok(sock, "write", "/tool/tx/a", "1")
    p = xs(sock, "read", "/tool/tx/a", "/tool/tx/missing")
    assert p.returncode == 1 and p.stdout == b"1\n" and b"ENOENT" in p.stderr  # what was read is printed
    failed(sock, "write", "/tool/tx/b", "2", "/tool/tx/../c", "3", name="EINVAL")
    assert xs(sock, "exists", "/tool/tx/b").returncode == 1
    failed(sock, "rm", "/tool/tx/a", "/nonexistent/x", name="ENOENT")
    assert xs(sock, "exists", "/tool/tx/a").returncode == 0  # the whole rm was undone
    ok(sock, "rm", "/tool/tx")


def test_large_directories_and_watch(sock: str, tmp_path: Path) -> None:
    names = [f"a-fairly-long-child-name-{i:04d}" for i in range(300)]
    pairs = [x for n in names for x in (f"/tool/big/{n}", "v")]
    ok(sock, "write", *pairs)
    assert ok(sock, "list", "/tool/big").decode().split() == names
    assert len(ok(sock, "ls", "/tool/big").splitlines()) == 300
    w = subprocess.Popen([sys.executable, "-m", "hyperdisco", "xenstore", "--socket", sock, "watch",
                          "-n", "2", "/tool/big"], stdout=subprocess.PIPE)
    assert w.stdout is not None
    assert w.stdout.readline() == b"/tool/big\n"  # fired once when set
    ok(sock, "rm", "/tool/big")
    assert w.stdout.readline() == b"/tool/big\n"
    assert w.wait(30) == 0
