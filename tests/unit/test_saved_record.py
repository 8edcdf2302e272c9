"""What a save file records beside the create record (toolstack/saved_record.py): the vifs, every field of
each surviving the header's JSON, the devid and MAC kept when domain 0 prepares them for the new domain, a
malformed list in a (hostile) file one line; the vCPUs as vcpu-set left them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hyperdisco.backends.net.manager import NetworkDevices, VifConfig
from hyperdisco.toolstack.requests import RequestError
from hyperdisco.toolstack.saved_record import record_with_vcpus, record_with_vifs, saved_vifs

VIFS = [VifConfig(network="lan0", mac="00:16:3e:00:00:01", devid=0, ips=("10.0.0.1/24",),
                  rate=(62500, 50000), vifname="web0"),
        VifConfig(network="up0", mac="00:16:3e:12:34:56", devid=3, uplink="passt",
                  hostfwd=(("tcp", 8080, 80),))]


class _Host:
    xs: Any = None

    def log(self, msg: str) -> None:
        pass


def _through_file(record: Any) -> Any:
    return json.loads(json.dumps(record, sort_keys=True, separators=(",", ":")))  # as SaveWriter's header


def test_round_trip_keeps_every_field() -> None:
    record = {"name": "web", "memory": 128, "net": [{"stale": "record of create"}]}
    saved = _through_file(record_with_vifs(record, VIFS))
    assert saved["name"] == "web" and saved["memory"] == 128
    assert saved_vifs(saved, "f") == VIFS  # the live vifs, not the record kept since create
    assert "net" not in record_with_vifs(record, [])  # all detached: none come back
    assert saved_vifs(_through_file(record_with_vifs(record, [])), "f") == []
    assert record_with_vifs(None, VIFS) is None


def test_restore_keeps_devid_and_mac() -> None:
    """NetworkDevices.prepare for the restored domain: the saved devid and MAC, not new ones."""
    vifs = saved_vifs(_through_file(record_with_vifs({"name": "web"}, VIFS)), "f")
    prepared = NetworkDevices(_Host()).prepare("web", vifs)
    assert [(v.devid, v.mac) for v in prepared] == [(0, "00:16:3e:00:00:01"), (3, "00:16:3e:12:34:56")]


@pytest.mark.parametrize("net, what", [
    ("no", "not a list"),
    ([{"mac": "00:16:3e:00:00:01"}], "no devid or mac"),
    ([{"devid": 0}], "no devid or mac"),
    ([{"devid": 0, "mac": "01:00:5e:00:00:01"}], "not a unicast address"),
    ([{"devid": 0, "mac": "zz"}], "saved vif 0"),
    ([{"devid": -1, "mac": "00:16:3e:00:00:01"}], "bad devid"),
    ([{"devid": 0, "mac": "00:16:3e:00:00:01", "network": "../x"}], "bad network"),
    ([{"devid": 0, "mac": "00:16:3e:00:00:01", "ips": [7]}], "bad ip"),
    ([{"devid": 0, "mac": "00:16:3e:00:00:01", "hostfwd": [["tcp", 0, 80]]}], "bad hostfwd"),
    ([{"devid": 0, "mac": "00:16:3e:00:00:01"}, {"devid": 0, "mac": "00:16:3e:00:00:02"}], "share"),
    ([{"devid": 0, "mac": "00:16:3e:00:00:01"}, {"devid": 1, "mac": "00:16:3e:00:00:01"}], "share"),
    ([{"devid": i, "mac": f"00:16:3e:00:01:{i:02x}"} for i in range(65)], "at most 64"),
    ("x", "not a list"),
    ([None], "saved vif 0"),
])
def test_malformed_saved_vifs_one_line(net: Any, what: str) -> None:
    with pytest.raises(RequestError) as e:
        saved_vifs({"name": "web", "net": net}, "web.save")
    msg = str(e.value)
    assert msg.startswith("hyperdisco: restore: web.save: ") and what in msg and "\n" not in msg, msg


def test_vcpus_as_vcpu_set_left_them() -> None:
    record = {"name": "smp", "vcpus": 2}
    assert record_with_vcpus(record, 1, 2) == {"name": "smp", "vcpus": 1, "maxvcpus": 2}
    assert record_with_vcpus(record, 2, 2) is record  # all available: as created
    assert record_with_vcpus({"vcpus": 1, "maxvcpus": 2}, 2, 2) == {"vcpus": 2, "maxvcpus": 2}
    assert record_with_vcpus({"name": "m", "vcpus": 1, "maxvcpus": 4}, 3, 4)["vcpus"] == 3
    assert record_with_vcpus(None, 1, 2) is None
