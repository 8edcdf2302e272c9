"""The control API's schema (control-api.schema.json, issue 11): the daemon validates requests against it
(requests.py is a validator of the subset it uses), docs/control-api.md's operations table is generated
from it, and it agrees with the daemon's operations and the code's limits."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hyperdisco.backends.net.manager import MAX_VIFS
from hyperdisco.platform import layout
from hyperdisco.toolstack import apidoc, requests
from hyperdisco.toolstack.daemon import MAX_VCPUS, STREAM_OPS, Daemon
from hyperdisco.toolstack.requests import RequestError, XsRequestError, parse_request
from hyperdisco.toolstack.xlcfg import DISK_FORMATS, SUPPORTED_ACTIONS, DomainSpec

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = requests.schema()
DEFS = SCHEMA["$defs"]


def subschemas(node: Any, where: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every subschema with where it is (properties and $defs are maps of names to schemas)."""
    found = [(where, node)]
    for key, value in node.items():
        if key in ("properties", "$defs"):
            for name, sub in value.items():
                found += subschemas(sub, f"{where}/{key}/{name}")
        elif key in ("allOf", "anyOf", "oneOf"):
            for i, sub in enumerate(value):
                found += subschemas(sub, f"{where}/{key}/{i}")
        elif key in ("items", "not", "if", "then", "else", "propertyNames", "x-result", "x-stream") or (
                key == "additionalProperties" and isinstance(value, dict)):
            found += subschemas(value, f"{where}/{key}")
    return found


def test_the_schema_uses_only_what_the_validator_understands() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    known = requests.SCHEMA_KEYWORDS | requests.ANNOTATIONS | {"type", "properties", "required", "items"}
    for where, sub in subschemas(SCHEMA):
        assert set(sub) <= known, (where, set(sub) - known)
        if "$ref" in sub:
            assert sub["$ref"].removeprefix("#/$defs/") in DEFS, where
        if "pattern" in sub:
            requests._pattern(sub["pattern"])  # compiles
    for where, sub in subschemas(SCHEMA)[1:]:
        assert "oneOf" not in sub, f"{where}: oneOf only at the root (dispatched on op)"


def test_every_request_is_closed_and_named_by_its_op() -> None:
    assert SCHEMA["properties"]["op"]["enum"] == list(requests.OPS)
    for op, definition in requests.OPS.items():
        assert definition is DEFS[f"request.{op}"]
        assert definition["additionalProperties"] is False and definition["type"] == "object"
        assert "x-result" in definition and "description" in definition["x-result"], op


def test_schema_and_daemon_have_the_same_operations() -> None:
    handlers = {name.removeprefix("op_") for name in dir(Daemon) if name.startswith("op_")}
    streams = {op for op, d in requests.OPS.items() if "x-stream" in d}
    assert streams == set(STREAM_OPS)
    assert all(hasattr(Daemon, f"_{op}_stream") for op in STREAM_OPS)
    assert set(requests.OPS) - streams == handlers, "an op_* without a schema entry, or the other way"


def test_the_docs_table_is_the_schemas() -> None:
    doc = (ROOT / "docs" / "control-api.md").read_text()
    assert apidoc.render(doc) == doc, "run python -m hyperdisco.toolstack.apidoc"
    for op in requests.OPS:
        assert f"| `{op}` |" in doc


def test_the_check_fails_when_they_differ(tmp_path: Path) -> None:
    doc = tmp_path / "api.md"
    doc.write_text(f"# x\n{apidoc.BEGIN}\n| op | arguments | result |\n| `gone` | – | – |\n"
                   f"{apidoc.END}\nmore\n")
    assert apidoc.main([str(doc), "--check"]) == 1
    assert apidoc.main([str(doc)]) == 0 and apidoc.main([str(doc), "--check"]) == 0
    text = doc.read_text()
    assert "`gone`" not in text and "| `events` |" in text and text.endswith("more\n")


def test_the_schema_states_the_codes_limits() -> None:
    config = DEFS["config"]["properties"]
    assert (config["memory"]["minimum"], config["memory"]["maximum"]) == (layout.MIN_RAM >> 20,
                                                                          layout.MAX_RAM >> 20)
    assert config["vcpus"]["maximum"] == MAX_VCPUS
    assert DEFS["action"]["enum"] == list(SUPPORTED_ACTIONS)
    assert DEFS["disk"]["properties"]["format"]["enum"] == list(DISK_FORMATS)
    assert config["vifs"]["maxItems"] == MAX_VIFS
    assert DEFS["text"]["maxLength"] == requests.MAX_STRING
    spec_fields = {f.name for f in dataclasses.fields(DomainSpec)} - {"source"}
    assert spec_fields <= set(config), "a DomainSpec field the client sends is not in the schema"


def test_the_schema_is_packaged() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]
    assert "control-api.schema.json" in data["hyperdisco.toolstack"]


def line(**kw: Any) -> bytes:
    return json.dumps(kw).encode() + b"\n"


GOOD = [
    (dict(op="create", config={"name": "w", "memory": 64, "kernel": None, "disks": [{"target": "/x.img"}],
                               "vifs": [{"bridge": "lan0"}], "on_crash": "restart"}),
     {"config": {"name": "w", "memory": 64, "disks": [{"target": "/x.img"}], "vifs": [{"bridge": "lan0"}],
                 "on_crash": "restart"}}),
    (dict(op="destroy", dom="7"), {"dom": 7}),
    (dict(op="destroy", dom="web.1"), {"dom": "web.1"}),
    (dict(op="shutdown", dom=1, reason="reboot"), {"dom": 1, "reason": "reboot"}),
    (dict(op="wait", dom=1, timeout=0.5), {"dom": 1, "timeout": 0.5}),
    (dict(op="xenstore", cmd="write", path="/tool/a", value="v", base64=False), {
        "cmd": "write", "path": "/tool/a", "value": "v", "base64": False}),
    (dict(op="xenstore", cmd="chmod", path="a", perms=["n0", "r65535"], recurse=True), {
        "cmd": "chmod", "path": "a", "perms": ["n0", "r65535"], "recurse": True}),
    (dict(op="xenstore_tx", ops=[{"cmd": "rm", "path": "/a", "tidy": True}, {"op": "xenstore", "cmd": "read",
                                                                             "path": "/b"}]),
     {"ops": [{"cmd": "rm", "path": "/a", "tidy": True}, {"op": "xenstore", "cmd": "read", "path": "/b"}]}),
    (dict(op="watch", path=["/a", "@releaseDomain"]), {"path": ["/a", "@releaseDomain"]}),
    (dict(op="events"), {}),
    (dict(op="block_attach", dom=1, disk={"target": "/d", "format": "qcow2", "access": "ro",
                                           "extra": {"discard": ""}}),
     {"dom": 1, "disk": {"target": "/d", "format": "qcow2", "access": "ro", "extra": {"discard": ""}}}),
]

BAD: list[tuple[dict[str, Any], str | None, str]] = [  # request, errno, a piece of the message
    (dict(op="destroy", dom="a\n"), None, "destroy: dom must be a domain name or ID"),
    (dict(op="destroy", dom=65536), None, "dom must be a domain ID (0..65535)"),
    (dict(op="events", dom=1), None, "events: unknown argument 'dom'"),
    (dict(op="create", config={"memory": 64}), None, "missing argument 'name'"),
    (dict(op="create", config={"name": "w", "memory": 4096}), None,
     "config.memory must be an integer (32..3072)"),
    (dict(op="create", config={"name": "w", "vcpus": True}), None, "config.vcpus must be an integer"),
    (dict(op="create", config={"name": "w", "on_crash": "rename-restart"}), None, "one of destroy, restart"),
    (dict(op="create", config={"name": "w", "colour": "red"}), None, "unknown argument 'colour'"),
    (dict(op="create", config={"name": "w", "disks": [{"target": ""}]}), None, "config.disks[0].target"),
    (dict(op="create", config={"name": "w", "vifs": [{"bridge": 1}]}), None, "config.vifs[0].bridge"),
    (dict(op="shutdown", dom=1, reason="sleep"), None, "reason must be one of poweroff"),
    (dict(op="exec", dom=1, command="x", timeout=86401), None, "a number of seconds (0..86400)"),
    (dict(op="exec", dom=1, command="a\0b"), None, "may not hold '\\x00'"),
    (dict(op="xenstore", cmd="read", path="/a\nb"), "EINVAL", "may not hold '\\n'"),
    (dict(op="xenstore", cmd="read", path="/a\n"), "EINVAL", "EINVAL"),
    (dict(op="xenstore", cmd="read", path=""), "EINVAL", "must not be empty"),
    (dict(op="xenstore", cmd="read", path="/" + "a" * 4096), "EINVAL", "longer than 4096"),
    (dict(op="xenstore", cmd="chmod", path="/a", perms=["r65536"]), "EINVAL", "perms[0]"),
    (dict(op="xenstore", cmd="chmod", path="/a"), None, "xenstore chmod: missing argument 'perms'"),
    (dict(op="xenstore", cmd="ls", path="/a", tidy=True), None, "xenstore ls: takes no 'tidy'"),
    (dict(op="xenstore_tx", ops=[{"cmd": "ls", "path": "/a"}]), None, "ls is not done in a transaction"),
    (dict(op="xenstore_tx", ops=[{"cmd": "read", "path": "/a", "x": 1}]), None, "ops[0] read: takes no 'x'"),
    (dict(op="xenstore_tx", ops=[]), None, "a list of 1..4096 xenstore requests"),
    (dict(op="watch", path=["/a", "/b c"]), "EINVAL", "path[1]"),
    (dict(op="watch", path=["/a"] * 65), None, "watch: path"),
    (dict(op="network_detach", dom=1, dev="00:16:3e:00:00:0g"), None, "a device ID (0..65535) or a MAC"),
]


@pytest.mark.parametrize(("req", "args"), GOOD, ids=[str(r["op"]) for r, _ in GOOD])
def test_good_requests(req: dict[str, Any], args: dict[str, Any]) -> None:
    assert parse_request(line(**req)) == (req["op"], args)


@pytest.mark.parametrize(("req", "errno", "piece"), BAD,
                         ids=[f"{r['op']}-{i}" for i, (r, _, _) in enumerate(BAD)])
def test_bad_requests(req: dict[str, Any], errno: str | None, piece: str) -> None:
    with pytest.raises(RequestError) as e:
        parse_request(line(**req))
    msg = str(e.value)
    assert msg.startswith("hyperdisco: ") and "\n" not in msg and piece in msg, msg
    assert (e.value.errno if isinstance(e.value, XsRequestError) else None) == errno
    if errno is not None:
        assert errno in msg
