"""xl.cfg's `channel = [...]` (xl.cfg(5), Xen's docs/misc/channel.txt): names in order (devid 1, 2, ...),
connection= and path= as xl accepts them, bad specs one-line ConfigErrors; the daemon's own check of a
create request's channel list."""

from __future__ import annotations

import pytest

from hyperdisco.errors import ConfigError
from hyperdisco.toolstack.agent_ops import channel_names
from hyperdisco.toolstack.requests import RequestError
from hyperdisco.toolstack.xlcfg import parse_channel, parse_text

AGENT = "org.qemu.guest_agent.0"


def test_spec_forms() -> None:
    assert parse_channel(f"name={AGENT}, connection=socket, path=/run/x.sock") == AGENT
    assert parse_channel(f" name = {AGENT} ") == AGENT
    assert parse_channel("connection=pty,name=org.xenproject.guest.clipboard.0.1,") == \
        "org.xenproject.guest.clipboard.0.1"


@pytest.mark.parametrize("spec, message", [
    ("connection=socket", "needs name="),
    ("name=a b", "not 1-128"),
    ("name=" + "x" * 200, "not 1-128"),
    ("name=a, name=b", "given twice"),
    ("name=a, conection=socket", "did you mean 'connection'"),
    ("name=a, connection=file", "is not one of"),
    ("name=a, backend=3", "domain 0 only"),
    ("name", "expected key=value"),
    ("=a", "expected key=value"),
    ("bogus=1, bogus=2", "unknown channel parameter 'bogus'"),   # unknown is said before given twice
    ("name=a\0", "NUL"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_channel(spec)


def test_in_a_config_file() -> None:
    spec = parse_text(f'name = "d"\nchannel = [ "name={AGENT}, connection=socket", "name=other.1" ]\n')
    assert spec.channels == [AGENT, "other.1"]
    assert parse_text('name = "d"\n').channels == []
    with pytest.raises(ConfigError, match="same name"):
        parse_text(f'name = "d"\nchannel = [ "name={AGENT}", "name={AGENT}" ]\n')
    with pytest.raises(ConfigError, match="at most 8"):
        parse_text('name = "d"\nchannel = [ ' + ", ".join(f'"name=c{i}"' for i in range(9)) + " ]\n")


def test_create_request_channels() -> None:
    assert channel_names(None) == []
    assert channel_names([AGENT]) == [AGENT]
    for bad in ("x", [1], ["a b"], [AGENT, AGENT], [f"c{i}" for i in range(9)]):
        with pytest.raises(RequestError):
            channel_names(bad)
