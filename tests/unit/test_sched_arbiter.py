"""Domain 0's BVT arbiter across domain processes (dom0/arbiter.py, vmm/sched_gate.py), with scripted
CPU-bound domains (the `scripted` engine's spin: a busy loop for each slice) in their own processes:
weights give shares, the gate parks paused domains, sched-bvt shows and sets the parameters, bad ones are
refused in one line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_support import scripted_daemon, until

from hyperdisco.cli.main import main as cli_main
from hyperdisco.client import Connection, Error
from hyperdisco.toolstack.daemon import Daemon


@pytest.fixture(scope="module")
def one_core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, Path]]:
    """A daemon whose arbiter hands out one core (CPU 0, pinned)."""
    with scripted_daemon(tmp_path_factory.mktemp("sched"), sched="bvt", sched_cpus=[0]) as served:
        yield served


def granted(conn: Connection) -> dict[str, float]:
    return {r["name"]: r["granted_s"] for r in conn.call("sched_bvt")["domains"]}


def test_weights_one_to_two_across_processes(one_core: tuple[Daemon, str, Path]) -> None:
    d, path, kernel = one_core
    with Connection(path) as conn:
        a = conn.create({"name": "w1", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=spin:0",
                         "weight": 100})
        b = conn.create({"name": "w2", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=spin:0",
                         "weight": 200})
        try:
            time.sleep(0.5)
            t0 = time.monotonic()
            g0 = granted(conn)
            time.sleep(4.0)
            g1 = granted(conn)
            elapsed = time.monotonic() - t0
            light, heavy = g1["w1"] - g0["w1"], g1["w2"] - g0["w2"]
            # one core, always held: as much granted in all as time passed; equal shares would give 1.0
            assert 0.75 * elapsed < light + heavy <= elapsed + 0.01, (light, heavy, elapsed)
            assert 1.6 < heavy / light < 2.4, (light, heavy)
            rows = {r["name"]: r for r in conn.call("sched_bvt")["domains"]}
            assert rows["w1"]["weight"] == 100 and rows["w2"]["weight"] == 200
            # equal weights from now on: equal shares
            conn.call("sched_bvt", dom="w2", weight=100)
            g0 = granted(conn)
            time.sleep(3.0)
            g1 = granted(conn)
            light, heavy = g1["w1"] - g0["w1"], g1["w2"] - g0["w2"]
            assert 0.75 < heavy / light < 1.33, (light, heavy)
        finally:
            a.destroy()
            b.destroy()
        assert d.host.arbiter is not None and d.host.arbiter.status()["forfeits"] <= 2  # a starved process


def test_paused_domain_leaves_the_core(one_core: tuple[Daemon, str, Path]) -> None:
    _d, path, kernel = one_core
    with Connection(path) as conn:
        a = conn.create({"name": "p1", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=spin:0"})
        b = conn.create({"name": "p2", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=spin:0"})
        try:
            time.sleep(0.5)
            a.pause()

            def still() -> bool:  # the pause has reached its process (a loaded host may take a while)
                before = granted(conn)["p1"]
                time.sleep(0.2)
                return granted(conn)["p1"] - before < 0.005
            until(still)
            g0 = granted(conn)
            time.sleep(2.0)
            g1 = granted(conn)
            assert g1["p1"] - g0["p1"] < 0.05      # paused: holds no core
            assert g1["p2"] - g0["p2"] > 1.6       # the other has it all
            a.unpause()
            until(lambda: granted(conn)["p1"] > g1["p1"] + 0.2)
        finally:
            a.destroy()
            b.destroy()


def test_sched_bvt_table_and_refusals(one_core: tuple[Daemon, str, Path]) -> None:
    _d, path, kernel = one_core
    with Connection(path) as conn:
        a = conn.create({"name": "t1", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt",
                         "warp": 20})
        try:
            r = conn.call("sched_bvt")
            assert r["cores"] == [0] and r["pinned"] and r["ctx_allow_us"] == 5000
            row = {x["name"]: x for x in r["domains"]}["t1"]
            assert (row["weight"], row["warp_us"], row["warpl_us"], row["warpu_us"]) == (256, 20000, 100000,
                                                                                         100000)
            conn.call("sched_bvt", dom="t1", warpl_us=30000, ctx_allow_us=2000)
            r = conn.call("sched_bvt", dom="t1")
            assert r["ctx_allow_us"] == 2000 and r["domains"][0]["warpl_us"] == 30000
            conn.call("sched_bvt", ctx_allow_us=5000)
            for bad in ({"dom": "t1", "weight": 0}, {"dom": "t1", "weight": 70000}, {"ctx_allow_us": 5},
                        {"dom": "t1", "warp_us": -1}, {"weight": 5}, {"dom": "nosuch", "weight": 5}):
                with pytest.raises(Error) as e:
                    conn.call("sched_bvt", **bad)
                assert str(e.value).startswith("hyperdisco:") and "\n" not in str(e.value)
            with pytest.raises(Error):
                conn.create({"name": "t2", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=halt",
                             "weight": 0})
        finally:
            a.destroy()


def test_sched_bvt_verb_and_top_share(one_core: tuple[Daemon, str, Path],
                                      capfd: pytest.CaptureFixture[str]) -> None:
    _d, path, kernel = one_core
    with Connection(path) as conn:
        a = conn.create({"name": "v1", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=spin:0",
                         "weight": 100})
        b = conn.create({"name": "v2", "memory": 32, "kernel": str(kernel), "cmdline": "scripted=spin:0",
                         "weight": 300})
        try:
            assert cli_main(["sched-bvt", "--socket", path, "v1", "--warp", "10", "--warpl", "20"]) == 0
            assert cli_main(["sched-bvt", "--socket", path]) == 0
            out = capfd.readouterr().out.splitlines()
            assert out[0].startswith("context switch allowance 5 ms, cores 0 (pinned)")
            assert out[1].split() == ["Name", "ID", "Weight", "Warp(ms)", "WarpL(ms)", "WarpU(ms)", "CPU(s)"]
            rows = {ln.split()[0]: ln.split() for ln in out[2:]}
            assert rows["v1"][2:6] == ["100", "10", "20", "0"] and rows["v2"][2:6] == ["300", "0", "0", "0"]
            time.sleep(0.5)
            assert cli_main(["top", "--socket", path, "-b", "-i", "1", "-d", "2"]) == 0
            top = capfd.readouterr().out.splitlines()
            head = top[0].split()
            share = head.index("SHARE(%)")
            got = {ln.split()[0]: ln.split()[share] for ln in top[1:]}
            assert got["Domain-0"] == "-"
            assert 12 < float(got["v1"]) < 38 and 62 < float(got["v2"]) < 88, got  # 25% and 75%
            assert cli_main(["sched-bvt", "--socket", path, "-w", "5"]) != 0  # a weight needs a domain
            assert "need a domain" in capfd.readouterr().err
        finally:
            a.destroy()
            b.destroy()
