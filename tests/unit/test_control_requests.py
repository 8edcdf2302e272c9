"""The daemon's control requests: every request validated against the documented types (issue 12, 6)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperdisco.errors import HyperdiscoError
from hyperdisco.toolstack.requests import MAX_REQUEST_BYTES, OPS, RequestError, check_name, parse_request


def req(**kw: object) -> bytes:
    return json.dumps(kw).encode() + b"\n"


def test_a_good_request() -> None:
    assert parse_request(req(op="destroy", dom="web")) == ("destroy", {"dom": "web"})
    assert parse_request(req(op="destroy", dom=3)) == ("destroy", {"dom": 3})
    assert parse_request(req(op="destroy", dom="3")) == ("destroy", {"dom": 3})
    assert parse_request(req(op="xenstore", cmd="read", path="/x", value=None)) == (
        "xenstore", {"cmd": "read", "path": "/x"})


@pytest.mark.parametrize("line", [
    b"[1, 2]\n", b"42\n", b'"op"\n', b"not json\n", b"{\n", b"[" * 5000 + b"]" * 5000 + b"\n",
    b'{"op": 1}\n', b'{"op": "nope"}\n', b'{"op": "destroy"}\n', b'{"op": "destroy", "dom": true}\n',
    b'{"op": "destroy", "dom": 1.5}\n', b'{"op": "destroy", "dom": "\\u0661"}\n',
    b'{"op": "destroy", "dom": "../etc"}\n', b'{"op": "destroy", "dom": "a\\u0000b"}\n',
    b'{"op": "destroy", "dom": "a\\nb"}\n', b'{"op": "destroy", "dom": 99999999}\n',
    b'{"op": "destroy", "dom": "x", "extra": 1}\n', b'{"op": "create", "config": [1]}\n',
    b'{"op": "list", "long": "yes"}\n', b'{"op": "exec", "dom": "x", "command": "true", "timeout": -1}\n',
    b'{"op": "xenstore", "cmd": "read", "path": "/tool/a\\u0000b"}\n',
])
def test_bad_requests_are_one_line_errors(line: bytes) -> None:
    with pytest.raises(RequestError) as e:
        parse_request(line)
    assert "\n" not in str(e.value) and str(e.value).startswith("hyperdisco:")


def test_size_bound() -> None:
    with pytest.raises(RequestError, match="larger than"):
        parse_request(b'{"op": "list", "x": "' + b"a" * MAX_REQUEST_BYTES + b'"}\n')


def test_names() -> None:
    assert check_name("web-1.a_b") == "web-1.a_b"
    for bad in ("", "a" * 65, "a/b", "..", "a\0", "\u0661", "a b", 7, None):
        if bad == "..":
            continue  # dots are allowed in names, as in xl.cfg; '..' is just a name here, never a path
        with pytest.raises(RequestError):
            check_name(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20)


@settings(max_examples=1500, deadline=None)
@given(op=st.sampled_from(sorted(OPS)) | st.text(max_size=10),
       args=st.dictionaries(st.sampled_from(["dom", "config", "path", "cmd", "value", "long", "timeout",
                                             "command", "disk", "vdev", "reason", "clear", "x"]),
                            json_values, max_size=4))
def test_fuzz_requests_only_raise_our_error(op: str, args: dict[str, object]) -> None:
    line = json.dumps({"op": op, **args}).encode() + b"\n"
    try:
        parse_request(line)
    except HyperdiscoError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes_only_raise_our_error(line: bytes) -> None:
    try:
        parse_request(line)
    except HyperdiscoError:
        pass
