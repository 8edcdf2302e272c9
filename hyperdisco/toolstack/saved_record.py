"""What `save` keeps of a domain's configuration beside its create record (docs/save-format.md): its vifs
as attached ("The network") and its vCPUs as vcpu-set left them ("Several vCPUs").

The save file's header holds the domain's create record; its "net" list is every vif as attached when
the guest suspended (VifConfig.to_record: devid, mac, network, ips, rate, uplink, hostfwd, vifname), taken
from domain 0's live table rather than the record kept since create, so hot-plugged and detached vifs are
as they were. `restore` attaches them to the new domain with the same devid and MAC: the guest's
xen-netfront reads "mac" again when it reconnects after resume (talk_to_netback) and sets it on the
interface, so another MAC would change the guest's address under the other guests' ARP caches.

vCPUs: `vcpu-set` changes how many vCPUs are available (cpu/I/availability) but not the record, so the
record saved has `vcpus` = the number available and `maxvcpus` = the number the domain has (as libxl
saves avail_vcpus beside max_vcpus): the restored domain has as many vCPUs, and its availability nodes
say what they said at the save.

The file is untrusted input: a vif record that does not check (VifConfig.from_record) is one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..backends.net.manager import MAX_VIFS, VifConfig
from .requests import RequestError


def record_with_vifs(record: Any, vifs: Sequence[VifConfig]) -> Any:
    """The create record to save: `record` with "net" set to `vifs` (a record that is not a dict, as an
    adopted domain's may be, is returned as it is)."""
    if not isinstance(record, dict):
        return record
    out = {k: v for k, v in record.items() if k != "net"}
    if vifs:
        out["net"] = [v.to_record() for v in vifs]
    return out


def record_with_vcpus(record: Any, available: int, possible: int) -> Any:
    """The create record to save: `vcpus` = the vCPUs available now, `maxvcpus` = all the domain has (a
    record that is not a dict is returned as it is, and one whose `vcpus` is already that number)."""
    if not isinstance(record, dict) or not 1 <= available <= possible or record.get("vcpus", 1) == available:
        return record
    return {**record, "vcpus": available, "maxvcpus": possible}


def saved_vifs(record: dict[str, Any], path: str) -> list[VifConfig]:
    """The vifs a save file's record lists, each with its devid and MAC; RequestError (one line) when the
    list or one of them is malformed."""
    recs = record.get("net")
    if recs is None:
        return []
    if not isinstance(recs, list) or len(recs) > MAX_VIFS:
        raise RequestError(f"hyperdisco: restore: {path}: the saved vifs are not a list of at most "
                           f"{MAX_VIFS}")
    vifs = []
    for i, rec in enumerate(recs):
        try:
            cfg = VifConfig.from_record(rec)
        except (ValueError, TypeError, IndexError) as exc:
            raise RequestError(f"hyperdisco: restore: {path}: saved vif {i}: {exc}"[:300]) from None
        if cfg.devid is None or cfg.mac is None:
            raise RequestError(f"hyperdisco: restore: {path}: saved vif {i} has no devid or mac")
        vifs.append(cfg)
    if len({v.devid for v in vifs}) != len(vifs) or len({v.mac for v in vifs}) != len(vifs):
        raise RequestError(f"hyperdisco: restore: {path}: two saved vifs share a devid or a mac")
    return vifs
