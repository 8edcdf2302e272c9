"""Reseeding a restored guest (toolstack/reseed.py, images/guest_tools.py, images/guest/hd-reseed.c):
the command the daemon runs, how its answer is read, and the helper's input checks (the helper itself
reseeding a guest kernel is tests/integration/test_clones.py's)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hyperdisco.images import guest_tools
from hyperdisco.images.initramfs import guest_file, guest_version
from hyperdisco.toolstack import reseed

SEED = bytes(range(32))


def test_the_seed_goes_on_stdin_never_on_a_command_line() -> None:
    for agent in (False, True):
        cmd = reseed.command(SEED, agent)
        assert f"printf %s {SEED.hex()} | " in cmd  # printf is a builtin: no process shows the seed
        assert re.search(SEED.hex() + r" \| (/bin/hd-reseed|perl )", cmd)
        assert cmd.count(SEED.hex()) == (2 if agent else 1)
    # the console's command is typed as one line (sessions.MAX_TYPED_LINE): no file in /tmp holds it
    assert len(reseed.command(SEED, False)) <= 200 and "\n" not in reseed.command(SEED, False)
    perl = reseed.command(SEED, True)
    assert "0x40085203" in perl and "0x5207" in perl  # RNDADDENTROPY, RNDRESEEDCRNG


def test_the_answer_says_whether_it_was_reseeded() -> None:
    assert reseed.outcome(0, b"hd-reseed: reseeded 32 bytes\n") == (
        True, "reseeded with 32 bytes of host randomness")
    ok, text = reseed.outcome(1, b"hd-reseed: RNDADDENTROPY: Operation not permitted\n")
    assert not ok and text == "NOT reseeded: hd-reseed: RNDADDENTROPY: Operation not permitted"
    assert reseed.outcome(127, b"sh: /bin/hd-reseed: not found\n") == (
        False, "NOT reseeded: the guest has no hd-reseed (nor perl)")
    assert reseed.outcome(0, b"something else\n")[0] is False  # status 0 alone is not enough


def test_reseed_runs_a_fresh_seed_and_never_raises() -> None:
    seen: list[str] = []

    def run(cmd: str, timeout: float) -> dict[str, Any]:
        seen.append(cmd)
        return {"status": 0, "output": base64.b64encode(b"hd-reseed: reseeded 32 bytes\n").decode()}

    assert reseed.reseed(run, agent=False) == {"reseeded": True,
                                               "reseed": "reseeded with 32 bytes of host randomness"}
    reseed.reseed(run, agent=False)
    seeds = [re.findall(r"printf %s ([0-9a-f]{64})", c)[0] for c in seen]
    assert len(set(seeds)) == 2  # os.urandom each time

    def failing(cmd: str, timeout: float) -> dict[str, Any]:
        raise RuntimeError("hyperdisco: exec in c1: domain stopped (crash)")

    r = reseed.reseed(failing, agent=False)
    assert r == {"reseeded": False, "reseed": "NOT reseeded: hyperdisco: exec in c1: domain stopped (crash)"}


def test_the_guest_version_follows_the_helper_source(monkeypatch: pytest.MonkeyPatch) -> None:
    before = guest_version()
    real = guest_file
    monkeypatch.setattr("hyperdisco.images.initramfs.guest_file",
                        lambda name: real(name) + (b"\n" if name == "hd-reseed.c" else b""))
    assert guest_version() != before
    monkeypatch.undo()
    monkeypatch.setattr(guest_tools, "compiler", lambda: None)
    assert guest_version() != before  # built again once a compiler is there
    assert guest_tools.build_tools(guest_file, lambda m: None) == []


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if guest_tools.compiler() is None:
        pytest.skip("no C compiler")
    tools = dict(guest_tools.build_tools(guest_file))
    binary = tmp_path_factory.mktemp("tools") / "hd-reseed"
    binary.write_bytes(tools["bin/hd-reseed"])
    binary.chmod(0o755)
    return binary


@pytest.mark.parametrize("given", [b"", b"00" * 15, b"00" * 257, b"0" * 33, b"zz" * 16, b"00 " * 16])
def test_the_helper_refuses_bad_input_before_any_ioctl(helper: Path, given: bytes) -> None:
    r = subprocess.run([str(helper)], input=given, capture_output=True, timeout=30)
    assert r.returncode == 1 and r.stdout == b"", r
    assert r.stderr.startswith(b"hd-reseed: ") and len(r.stderr.splitlines()) == 1, r.stderr


def test_the_helper_needs_cap_sys_admin(helper: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv is None:
        pytest.skip("no setpriv")
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    r = subprocess.run([*drop, str(helper)],
                       input=SEED.hex().encode() + b"\n", capture_output=True, timeout=30)
    assert r.returncode == 1 and b"RNDADDENTROPY: Operation not permitted" in r.stderr, r
