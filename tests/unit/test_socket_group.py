"""`daemon --group NAME` (issue 11): the control socket is 0660 and NAME's; a user in the group can use
the verbs, one outside it is told it is a permission problem (not that the daemon is not running).
Needs root (a group is created and removed, the clients drop to other uids); skipped otherwise."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdisco.cli.main import main
from hyperdisco.errors import HyperdiscoError
from hyperdisco.toolstack.daemon import Daemon, group_id

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("groupadd") is None,
                                reason="needs root and groupadd")

MEMBER_UID, OUTSIDER_UID = 61234, 61235  # no passwd entries needed: the kernel checks numbers


@pytest.fixture(scope="module")
def group() -> Iterator[str]:
    name = f"hdtest{os.getpid() % 100000}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    yield name
    subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def sock(group: str) -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="hd-group-", dir="/tmp"))
    top.chmod(0o755)  # others may pass through to the socket; the socket's mode decides
    d = Daemon(str(top / "control.sock"), engine="scripted", group=group, xenstored_socket="none")
    server = d.listen()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield top / "control.sock"
    server.shutdown()
    server.server_close()
    d.host.close()
    shutil.rmtree(top, ignore_errors=True)


def as_user(uid: int, gids: list[int], *argv: str) -> tuple[int, str]:
    """`hyperdisco ARGV` in a child that dropped to `uid` with supplementary groups `gids` (forked, so
    nothing is loaded from directories the user may not read): its status and output."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 99
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.setgroups(gids)
            os.setgid(gids[0] if gids else uid)
            os.setuid(uid)
            sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115
            status = main(list(argv))
            sys.stdout.flush()
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode(errors="replace")
    _, code = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(code), out


def test_the_socket_is_the_groups(sock: Path, group: str) -> None:
    st = sock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group_id(group) and st.st_uid == 0


def test_a_member_of_the_group_can_list(sock: Path, group: str) -> None:
    status, out = as_user(MEMBER_UID, [group_id(group)], "list", "--socket", str(sock))
    assert status == 0, out
    assert "Domain-0" in out
    status, out = as_user(MEMBER_UID, [group_id(group)], "xenstore", "--socket", str(sock), "exists", "/tool")
    assert status == 0, out


def test_someone_outside_it_gets_a_clear_permission_error(sock: Path, group: str) -> None:
    status, out = as_user(OUTSIDER_UID, [OUTSIDER_UID], "list", "--socket", str(sock))
    assert status != 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith(f"hyperdisco: permission denied on {sock}: ")
    assert f"group {group}" in lines[0] and "--group" in lines[0] and "cannot reach" not in lines[0]


def test_unknown_groups_are_one_line() -> None:
    with pytest.raises(HyperdiscoError, match="no group named"):
        group_id("no-such-group-hd")
    assert group_id("1234") == 1234
