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


class XsRequestError(RequestError):
    """A xenstore request refused with one of Xen's xsd_errors names (EINVAL, ENOENT, EACCES, E2BIG...),
    which the answer carries as its "errno" (docs/control-api.md)."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(message)
        self.errno = errno


# docs/misc/xenstore.txt: path components are ASCII alphanumerics and -/_@ (special watch paths start
# with @); xenstored checks the rest (no doubled or trailing slash, lengths).
XS_PATH_RE = re.compile(r"[A-Za-z0-9/_@-]+")
XS_PERM_RE = re.compile(r"[nrwb][0-9]{1,5}")
XS_CMDS = ("read", "write", "rm", "ls", "list", "exists", "mkdir", "chmod", "getperms")
MAX_XS_BATCH = 4096
MAX_WATCH_PATHS = 64


# argument -> (kind, required); kinds: str, int, bool, float, dom, dict, dev (a vif's devid or MAC),
# xspath (a xenstore path), xspaths (one path or a list of them), perms (a list of xenstore permissions),
# xsops (a list of xenstore requests, each checked against XS_OP)
Schema = dict[str, tuple[str, bool]]

# one xenstore request: `xenstore`'s arguments, and each element of `xenstore_tx`'s `ops`
XS_OP: Schema = {"cmd": ("str", True), "path": ("xspath", True), "value": ("str", False),
                 "base64": ("bool", False), "perms": ("perms", False), "recurse": ("bool", False),
                 "upto": ("bool", False), "tidy": ("bool", False), "with_perms": ("bool", False)}
# the arguments each command takes besides cmd and path (and base64, which any may carry)
XS_CMD_ARGS: dict[str, tuple[str, ...]] = {
    "read": (), "write": ("value",), "rm": ("tidy",), "ls": ("with_perms",), "list": (), "exists": (),
    "mkdir": (), "chmod": ("perms", "recurse", "upto"), "getperms": ()}

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
    "xenstore": XS_OP,
    "xenstore_tx": {"ops": ("xsops", True)},
    "exec": {"dom": ("dom", True), "command": ("str", True), "timeout": ("float", False)},
    "block_attach": {"dom": ("dom", True), "disk": ("dict", True)},
    "block_detach": {"dom": ("dom", True), "vdev": ("str", True), "timeout": ("float", False)},
    "block_list": {"dom": ("dom", True)},
    "network_attach": {"dom": ("dom", True), "vif": ("dict", True)},
    "network_detach": {"dom": ("dom", True), "dev": ("dev", True), "timeout": ("float", False)},
    "network_list": {"dom": ("dom", True)},
    "console": {"dom": ("dom", True)},
    "watch": {"path": ("xspaths", True)},
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
    args = check_args(op, schema, req)
    if op == "xenstore":
        check_xs_op(args, "xenstore")
    return op, args


def check_args(op: str, schema: Schema, req: dict[str, Any]) -> dict[str, Any]:
    """A request's arguments (`op` removed) checked against `schema`: unknown and missing ones refused,
    optional ones sent as null dropped (their default applies)."""
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
    return req


def check_xs_op(args: dict[str, Any], where: str) -> None:
    """A xenstore request's command and the arguments it may carry (XS_CMD_ARGS); write needs a value,
    chmod its permissions."""
    cmd = args["cmd"]
    if cmd not in XS_CMD_ARGS:
        raise RequestError(f"hyperdisco: {where}: unknown command {cmd[:20]!r} (one of {', '.join(XS_CMDS)})")
    allowed = {"cmd", "path", "base64", *XS_CMD_ARGS[cmd]}
    for key in args:
        if key not in allowed:
            raise RequestError(f"hyperdisco: {where} {cmd}: takes no {key!r}")
    if cmd == "write" and "value" not in args:
        raise RequestError(f"hyperdisco: {where} write: missing argument 'value'")
    if cmd == "chmod" and not args.get("perms"):
        raise RequestError(f"hyperdisco: {where} chmod: missing argument 'perms'")


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
    if kind == "xspath":
        return check_xs_path(value, op)
    if kind == "xspaths":
        if isinstance(value, list):
            if not 1 <= len(value) <= MAX_WATCH_PATHS:
                raise bad(f"a path or a list of 1..{MAX_WATCH_PATHS} paths")
            return [check_xs_path(v, op) for v in value]
        return check_xs_path(value, op)
    if kind == "perms":
        if not isinstance(value, list) or not 1 <= len(value) <= 64:
            raise bad("a list of 1..64 permissions (n0, r1, w2, b3...)")
        for v in value:
            if not isinstance(v, str) or not XS_PERM_RE.fullmatch(v) or int(v[1:]) > 0xFFFF:
                shown = repr(v)[:40] if isinstance(v, str) else type(v).__name__
                raise XsRequestError("EINVAL", f"hyperdisco: {op}: EINVAL (bad permission {shown}: a letter "
                                               "n, r, w or b and a domain ID: n0, r1...)")
        return list(value)
    if kind == "xsops":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_XS_BATCH:
            raise bad(f"a list of 1..{MAX_XS_BATCH} xenstore requests")
        ops = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise RequestError(f"hyperdisco: {op}: {key}[{i}] must be an object")
            args = check_args(f"{op} {key}[{i}]", XS_OP, dict(item))
            check_xs_op(args, f"{op} {key}[{i}]")
            if args["cmd"] == "ls":
                raise RequestError(f"hyperdisco: {op}: {key}[{i}]: ls is not done in a transaction")
            ops.append(args)
        return ops
    raise bad(kind)  # pragma: no cover - a schema typo


def check_xs_path(value: Any, where: str) -> str:
    """A xenstore path as a request carries it: a string of xenstore's path characters; anything else
    (a NUL, a space, a non-ASCII character) is Xen's EINVAL."""
    if not isinstance(value, str):
        raise RequestError(f"hyperdisco: {where} must be a string")
    if not value or len(value) > 4096 or not XS_PATH_RE.fullmatch(value):
        bad = next((c for c in value if not XS_PATH_RE.fullmatch(c)), None)
        why = ("an empty path" if not value else "a path longer than 4096 characters" if len(value) > 4096
               else f"path {_shown(value)}: xenstore paths may not hold {bad!r}")
        raise XsRequestError("EINVAL", f"hyperdisco: {where}: EINVAL ({why})")
    return value


def _shown(text: str, limit: int = 120) -> str:
    """Text for a one-line message: as it is when printable ASCII, its repr otherwise; shortened."""
    short = text[:limit] + ("..." if len(text) > limit else "")
    plain = short.isascii() and short.isprintable() and short.strip() == short and short != ""
    return short if plain else repr(short)


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
