"""xl mem-set / mem-max (dom0/memctl.py) against a real daemon (scripted engine): the xenstore nodes the
guest's balloon driver reads (KiB), libxl's refusals, max_pages in the domain process, list's Mem."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_support import scripted_daemon, until

from hyperdisco.cli.xl import parse_mem_mib
from hyperdisco.client import Connection, Error
from hyperdisco.errors import HyperdiscoError


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str, Path]]:
    with scripted_daemon(tmp_path_factory.mktemp("memctl")) as served:
        yield served


def max_pages(daemon: object, domid: int) -> int | None:
    dom = daemon.host.domains[domid]  # type: ignore[attr-defined]
    mem = dom.query().get("memory")
    return mem.get("max_pages") if isinstance(mem, dict) else None


def test_mem_set_and_mem_max(served: tuple[object, str, Path]) -> None:
    daemon, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "bal", "memory": 64, "kernel": str(kernel), "cmdline": "scripted=halt"})
        base = f"/local/domain/{dom.domid}/memory"
        xs = conn.xenstore
        assert xs.read(f"{base}/static-max") == b"65536" and xs.read(f"{base}/target") == b"65536"
        assert xs.get_perms(f"{base}/target")[0] == "n0"  # the guest reads it, only domain 0 writes it
        assert max_pages(daemon, dom.domid) == 64 * 256
        assert [r.mem for r in conn.list() if r.name == "bal"] == [64]  # tot_pages, in MiB

        dom.mem_set(40)
        assert xs.read(f"{base}/target") == b"40960"
        assert xs.read(f"{base}/static-max") == b"65536"
        until(lambda: max_pages(daemon, dom.domid) == (40 << 8) + 256)  # target + LIBXL_MAXMEM_CONSTANT

        with pytest.raises(Error, match=r"^hyperdisco: mem-set: 65 MiB is above bal's maximum \(64 MiB"):
            dom.mem_set(65)
        assert xs.read(f"{base}/target") == b"40960"
        with pytest.raises(Error, match=r"^hyperdisco: mem-max: 39 MiB is below bal's memory target"):
            dom.mem_max(39)
        dom.mem_max(48)
        until(lambda: max_pages(daemon, dom.domid) == (48 << 8) + 256)
        assert xs.read(f"{base}/static-max") == b"65536"  # libxl_domain_setmaxmem leaves it
        dom.mem_set(64)
        assert xs.read(f"{base}/target") == b"65536"
        for bad in (0, -1, 1 << 21, "64", None):
            with pytest.raises(Error, match="memory"):
                conn.call("mem_set", dom=dom.domid, memory=bad)
        with pytest.raises(Error, match="no domain"):
            conn.call("mem_set", dom="nosuch", memory=32)
        dom.destroy()


def test_cli(served: tuple[object, str, Path]) -> None:
    _daemon, path, kernel = served
    with Connection(path) as conn:
        dom = conn.create({"name": "cli", "memory": 64, "kernel": str(kernel), "cmdline": "scripted=halt"})

        def xl(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "hyperdisco", *argv, "--socket", path],
                                  capture_output=True, text=True, timeout=60)

        assert xl("mem-set", "cli", "32m").returncode == 0
        assert conn.xenstore.read(f"/local/domain/{dom.domid}/memory/target") == b"32768"
        r = xl("mem-set", "cli", "1g")
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "above cli's maximum" in r.stderr
        r = xl("mem-set", "cli", "lots")
        assert r.returncode != 0
        assert r.stderr.strip() == "hyperdisco: invalid memory size 'lots' (MiB, or with b/k/m/g/t)"
        assert xl("mem-max", "cli", "48").returncode == 0
        dom.destroy()


@pytest.mark.parametrize(("text", "mib"), [("64", 64), ("64m", 64), ("64M", 64), ("1g", 1024),
                                           ("65536k", 64), ("67108864b", 64)])
def test_parse_mem(text: str, mib: int) -> None:
    assert parse_mem_mib(text) == mib


@pytest.mark.parametrize("text", ["", "m", "-5", "1.5g", "0", "12q", "1t1", "99999999999999999999", "٣"])
def test_parse_mem_refuses(text: str) -> None:
    with pytest.raises(HyperdiscoError):
        parse_mem_mib(text)


def test_maxmem_above_memory(served: tuple[object, str, Path]) -> None:
    daemon, path, kernel = served
    with Connection(path) as conn:
        with pytest.raises(Error, match="maxmem 48 MiB is less than memory"):
            conn.create({"name": "mx", "memory": 64, "maxmem": 48, "kernel": str(kernel),
                         "cmdline": "scripted=halt"})
        dom = conn.create({"name": "mx", "memory": 64, "maxmem": 96, "kernel": str(kernel),
                           "cmdline": "scripted=halt"})
        base = f"/local/domain/{dom.domid}/memory"
        # the guest's RAM is maxmem; its target memory: its balloon driver gives the rest back at once
        assert conn.xenstore.read(f"{base}/static-max") == b"98304"
        assert conn.xenstore.read(f"{base}/target") == b"65536"
        assert max_pages(daemon, dom.domid) == 96 * 256
        dom.mem_set(96)
        with pytest.raises(Error, match="above mx's maximum"):
            dom.mem_set(97)
        dom.destroy()
