"""The BVT scheduler's toolstack side: `weight`/`warp`/`warpl`/`warpu` of a create request, and the
`sched_bvt` request (xl's Xen 2 verb `sched-bvt`: show or set a domain's weight, warp value, warp limit
and unwarp requirement, and the global context-switch allowance)."""

from __future__ import annotations

from typing import Any

from ..core.bvt import DEFAULT_WEIGHT, BvtError, BvtParams
from ..dom0.host import Host
from .requests import RequestError, field

US = 1000
# warp= alone: the warp limit and unwarp requirement it gets unless warpl=/warpu= say otherwise (ms)
DEFAULT_WARPL_MS = 100
DEFAULT_WARPU_MS = 100
MAX_MS = 10_000
CONFIG_KEYS = ("weight", "warp", "warpl", "warpu")


def params_of_config(config: dict[str, Any]) -> BvtParams | None:
    """weight (1-65535, default 256), warp, warpl, warpu (ms) of a create request; None: all default."""
    if not any(config.get(k) is not None for k in CONFIG_KEYS):
        return None
    weight = field(config, "weight", int, DEFAULT_WEIGHT, 1, 65535)
    warp = field(config, "warp", int, 0, 0, MAX_MS)
    warpl = field(config, "warpl", int, DEFAULT_WARPL_MS if warp else 0, 0, MAX_MS)
    warpu = field(config, "warpu", int, DEFAULT_WARPU_MS if warp else 0, 0, MAX_MS)
    return BvtParams(weight, warp * 1_000_000, warpl * 1_000_000, warpu * 1_000_000)


def sched_bvt(host: Host, dom: str | int | None = None, weight: int | None = None, warp_us: int | None = None,
              warpl_us: int | None = None, warpu_us: int | None = None,
              ctx_allow_us: int | None = None) -> dict[str, Any]:
    arb = host.arbiter
    if arb is None:
        raise RequestError("hyperdisco: sched-bvt: this daemon lets the host kernel share the CPUs "
                           "(daemon --sched host): no BVT parameters")
    changes = {k: v for k, v in (("weight", weight), ("warp_ns", warp_us), ("warp_limit_ns", warpl_us),
                                 ("unwarp_ns", warpu_us)) if v is not None}
    if changes and dom is None:
        raise RequestError("hyperdisco: sched-bvt: weight and warp settings need a domain")
    try:
        if ctx_allow_us is not None:
            arb.set_ctx_allow(ctx_allow_us * US)
        if dom is not None and changes:
            d = host.find(dom)
            p = arb.params(d.domid)
            new = BvtParams(
                weight=changes.get("weight", p.weight),
                warp_ns=changes["warp_ns"] * US if "warp_ns" in changes else p.warp_ns,
                warp_limit_ns=(changes["warp_limit_ns"] * US if "warp_limit_ns" in changes
                               else p.warp_limit_ns),
                unwarp_ns=changes["unwarp_ns"] * US if "unwarp_ns" in changes else p.unwarp_ns)
            arb.set_params(d.domid, new)
            d.config.bvt = new  # kept across its on_* restarts
    except BvtError as exc:
        raise RequestError(f"hyperdisco: sched-bvt: {exc}") from None
    doms = [host.find(dom)] if dom is not None else sorted(host.domains.values(), key=lambda d: d.domid)
    rows = []
    granted_at = arb.granted_all()  # one instant for all: their shares compare
    for d in doms:
        try:
            p = arb.params(d.domid)
        except BvtError:
            continue  # finished, not yet (or no longer) scheduled
        granted = granted_at.get(d.domid)
        gate = d.query().get("sched")  # its process's side: grants taken, time its vCPUs waited for one
        gate = gate if isinstance(gate, dict) else {}
        rows.append({"name": d.name, "domid": d.domid, "weight": p.weight, "warp_us": p.warp_ns // US,
                     "warpl_us": p.warp_limit_ns // US, "warpu_us": p.unwarp_ns // US,
                     "granted_s": round((granted or 0) / 1e9, 3), "grants": gate.get("grants"),
                     "wait_s": gate.get("wait_s")})
    st = arb.status()
    return {"ctx_allow_us": st["ctx_allow_ns"] // US, "cores": st["cores"], "pinned": st["pinned"],
            "decisions": st["decisions"], "decide_us_mean": st["decide_us_mean"], "forfeits": st["forfeits"],
            "revokes": st["revokes"], "revoke_us_mean": st["revoke_us_mean"],
            "domains": rows}
