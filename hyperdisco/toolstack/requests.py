"""Validation of the daemon's control requests (docs/control-api.md): every request is checked against
the documented argument types before anything acts on it, and bounded in size and nesting.

A request is one JSON object per line: {"op": NAME, ...arguments}. Unknown operations, unknown or
missing arguments and values of the wrong type are answered with one-line errors; nothing here raises
anything but RequestError.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import HyperdiscoError

MAX_REQUEST_BYTES = 1 << 20
MAX_NAME = 64
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_STRING = 64 * 1024
DEVID_RE = re.compile(r"[0-9]{1,5}")
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")


class RequestError(HyperdiscoError):
    pass


# argument -> (kind, required); kinds: str, int, bool, float, dom, dict, dev (a vif's devid or MAC)
Schema = dict[str, tuple[str, bool]]

OPS: dict[str, Schema] = {
    "create": {"config": ("dict", True)},
    "list": {"long": ("bool", False)},
    "top": {},
    "info": {},
    "domid": {"dom": ("dom", True)},
    "domname": {"dom": ("dom", True)},
    "pause": {"dom": ("dom", True)},
    "unpause": {"dom": ("dom", True)},
    "destroy": {"dom": ("dom", True)},
    "shutdown": {"dom": ("dom", True), "reason": ("str", False)},
    "wait": {"dom": ("dom", True), "timeout": ("float", False)},
    "dmesg": {"clear": ("bool", False)},
    "xenstore": {"cmd": ("str", True), "path": ("str", True), "value": ("str", False)},
    "exec": {"dom": ("dom", True), "command": ("str", True), "timeout": ("float", False)},
    "block_attach": {"dom": ("dom", True), "disk": ("dict", True)},
    "block_detach": {"dom": ("dom", True), "vdev": ("str", True), "timeout": ("float", False)},
    "block_list": {"dom": ("dom", True)},
    "network_attach": {"dom": ("dom", True), "vif": ("dict", True)},
    "network_detach": {"dom": ("dom", True), "dev": ("dev", True), "timeout": ("float", False)},
    "network_list": {"dom": ("dom", True)},
    "console": {"dom": ("dom", True)},
    "watch": {"path": ("str", True)},
}


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """One request line -> (op, arguments), validated against OPS."""
    if len(line) > MAX_REQUEST_BYTES:
        raise RequestError(f"hyperdisco: request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        req = json.loads(line)
    except RecursionError:
        raise RequestError("hyperdisco: bad request: nested too deeply") from None
    except ValueError as exc:
        raise RequestError(f"hyperdisco: bad request: not JSON ({str(exc).split(':')[0]})") from None
    if not isinstance(req, dict):
        raise RequestError("hyperdisco: bad request: expected a JSON object")
    op = req.pop("op", None)
    if not isinstance(op, str):
        raise RequestError("hyperdisco: bad request: 'op' must be a string")
    schema = OPS.get(op)
    if schema is None:
        raise RequestError(f"hyperdisco: unknown operation {op[:64]!r}")
    for key in req:
        if key not in schema:
            raise RequestError(f"hyperdisco: {op}: unknown argument {str(key)[:64]!r}")
    for key, (kind, required) in schema.items():
        if key in req and req[key] is None and not required:
            del req[key]  # an optional argument sent as null: its default
        if key not in req:
            if required:
                raise RequestError(f"hyperdisco: {op}: missing argument {key!r}")
            continue
        req[key] = check(op, key, kind, req[key])
    return op, req


def check(op: str, key: str, kind: str, value: Any) -> Any:
    def bad(what: str) -> RequestError:
        return RequestError(f"hyperdisco: {op}: {key} must be {what}")

    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        if len(value) > MAX_STRING:
            raise RequestError(f"hyperdisco: {op}: {key} is longer than {MAX_STRING} characters")
        if "\0" in value:
            raise bad("a string without NUL characters")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86400:
            raise bad("a number of seconds (0..86400)")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "dom":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise bad("a domain name or ID")
        if isinstance(value, int):
            if not 0 <= value < 1 << 16:
                raise bad("a domain ID (0..65535)")
            return value
        if value.isascii() and value.isdigit() and len(value) <= 5:
            return int(value)
        return check_name(value, f"{op}: {key}")
    if kind == "dev":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 16:
            return value
        if isinstance(value, str) and (DEVID_RE.fullmatch(value) or MAC_RE.fullmatch(value)):
            return int(value) if value.isdigit() else value
        raise bad("a device ID (0..65535) or a MAC address")
    if kind == "dict":
        if not isinstance(value, dict):
            raise bad("an object")
        return value
    raise bad(kind)  # pragma: no cover - a schema typo


def check_name(name: Any, where: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name)[:40] if isinstance(name, str) else type(name).__name__
        raise RequestError(f"hyperdisco: {where}: invalid domain name {shown} (1-{MAX_NAME} letters, "
                           "digits, '_', '.', '-')")
    return name


def field(config: dict[str, Any], key: str, kind: type, default: Any, low: int | None = None,
          high: int | None = None) -> Any:
    """One field of a create request's config: its type checked (bool is not an int), ints in range."""
    value = config.get(key, default)
    if value is None and default is None:
        return None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"hyperdisco: create: {key} must be an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise RequestError(f"hyperdisco: create: {key} {value} is out of range ({low}..{high})")
        return value
    if not isinstance(value, kind):
        raise RequestError(f"hyperdisco: create: {key} must be a {kind.__name__}")
    if isinstance(value, str) and ("\0" in value or len(value) > MAX_STRING):
        raise RequestError(f"hyperdisco: create: {key} must be a string without NUL characters")
    return value
