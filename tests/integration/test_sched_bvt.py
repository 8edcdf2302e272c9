"""Borrowed Virtual Time between real guests, each in its own process, on one core handed out by domain
0's arbiter (`daemon --sched-cpus 0`): CPU-bound domains with weights 1:2 get CPU 1:2, with equal weights
equally; an idle domain's console round trip while two CPU-bound domains run is faster warped."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from hyperdisco.client import Connection

from .conftest import Xl, domain_cfg

pytestmark = [pytest.mark.slow, pytest.mark.daemon_args("--sched-cpus", "0")]

SPIN = "setsid sh -c \"while :; do :; done\" >/dev/null 2>&1 </dev/null &"


def shares(xl: Xl) -> dict[str, tuple[float, float]]:
    """Per domain: core time granted by BVT (sched-bvt's CPU(s)) and CPU time used (list's Time(s))."""
    lines = xl("sched-bvt").stdout.splitlines()
    assert lines[0].startswith("context switch allowance 5 ms, cores 0 (pinned)"), lines[0]
    assert lines[1].split()[:4] == ["Name", "ID", "Weight", "Warp(ms)"]
    granted = {ln.split()[0]: float(ln.split()[-1]) for ln in lines[2:]}
    used = {n: float(r[5]) for n, r in xl.rows().items()}
    return {n: (granted[n], used[n]) for n in granted}


def delta(xl: Xl, seconds: float) -> dict[str, tuple[float, float]]:
    a = shares(xl)
    time.sleep(seconds)
    b = shares(xl)
    return {n: (b[n][0] - a[n][0], b[n][1] - a[n][1]) for n in a if n in b}


def test_weights_give_proportional_shares(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "light", "weight = 100", memory=96))
    xl("create", domain_cfg(tmp_path, "heavy", "weight = 200", memory=96))
    for n in ("light", "heavy"):
        xl("exec", n, "true", "--timeout", "300")
    for n in ("light", "heavy"):
        xl("exec", n, SPIN)
    time.sleep(2)
    d = delta(xl, 20)
    (g_light, u_light), (g_heavy, u_heavy) = d["light"], d["heavy"]
    # one core: equal shares would give 1.0; 1:2 weights must give about 2
    assert 1.7 < g_heavy / g_light < 2.3, d
    assert 1.5 < u_heavy / u_light < 2.6, d    # and the CPU the guests really got follows
    assert g_light + g_heavy > 15, d             # the core was kept busy
    # equal weights at run time: equal shares
    xl("sched-bvt", "heavy", "-w", "100")
    time.sleep(2)
    d = delta(xl, 16)
    (g_light, u_light), (g_heavy, u_heavy) = d["light"], d["heavy"]
    assert 0.8 < g_heavy / g_light < 1.25, d
    assert 0.7 < u_heavy / u_light < 1.4, d
    table = xl("sched-bvt").stdout
    assert "heavy" in table and " 100 " in table


def exec_times(conn: Connection, dom: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        r = conn.lookup(dom).exec("echo x")
        out.append(time.monotonic() - t0)
        assert r.status == 0 and "x" in r.text
        time.sleep(0.1)
    return out


def test_warp_makes_an_idle_domain_answer_sooner(xl: Xl, tmp_path: Path) -> None:
    for n in ("hog1", "hog2", "io"):
        xl("create", domain_cfg(tmp_path, n, memory=96))
    for n in ("hog1", "hog2", "io"):
        xl("exec", n, "true", "--timeout", "300")
    for n in ("hog1", "hog2"):
        xl("exec", n, SPIN)
    xl("sched-bvt", "-c", "30")  # a large allowance makes an unwarped waker wait visibly
    with Connection(xl.env["HYPERDISCO_SOCKET"]) as conn:
        plain: list[float] = []
        warped: list[float] = []
        for _round in range(4):  # alternate, so that the host's other load falls on both alike
            conn.call("sched_bvt", dom="io", warp_us=0)
            plain += exec_times(conn, "io", 5)
            conn.call("sched_bvt", dom="io", warp_us=200_000, warpl_us=100_000, warpu_us=50_000)
            warped += exec_times(conn, "io", 5)
    p, w = statistics.median(plain), statistics.median(warped)
    print(f"exec round trip beside two CPU-bound domains, C = 30 ms: median {p * 1e3:.1f} ms unwarped, "
          f"{w * 1e3:.1f} ms warped")
    assert w < 0.8 * p, (plain, warped)
