"""Validation of the daemon's control requests against the control API's schema
(control-api.schema.json, JSON Schema 2020-12; docs/control-api.md is generated from it by apidoc.py).

A request is one JSON object per line: {"op": NAME, ...arguments}; its schema is the schema's
`request.NAME` definition. This module is a small validator of the subset of JSON Schema that file uses
(SCHEMA_KEYWORDS), with the file's two conventions: an optional property sent as null is as if absent,
and a string matched by a subschema with "x-convert": "integer" becomes that integer (a domain ID sent as
"3"). A refusal is one line naming the request and the argument; within a subschema carrying "x-errno" it
is a XsRequestError with that error name (a xenstore path: EINVAL). Nothing here raises anything but
RequestError, and nothing acts on a request before it passed.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

from ..errors import HyperdiscoError

MAX_REQUEST_BYTES = 1 << 20
MAX_NAME = 64
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_STRING = 64 * 1024
SCHEMA_FILE = "control-api.schema.json"

# what the validator understands; annotations it skips; anything else in the schema is a mistake
SCHEMA_KEYWORDS = frozenset({
    "$ref", "allOf", "anyOf", "not", "if", "then", "else", "type", "const", "enum", "minimum", "maximum",
    "minLength", "maxLength", "pattern", "items", "minItems", "maxItems", "properties", "required",
    "additionalProperties", "propertyNames", "maxProperties", "x-convert", "x-errno"})
ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description", "default", "x-result", "x-stream",
                         "contentMediaType", "oneOf"})  # oneOf: only the root's, dispatched on "op"


class RequestError(HyperdiscoError):
    pass


class XsRequestError(RequestError):
    """A xenstore request refused with one of Xen's xsd_errors names (EINVAL, ENOENT, EACCES, E2BIG...),
    which the answer carries as its "errno" (docs/control-api.md)."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(message)
        self.errno = errno


@functools.cache
def schema() -> dict[str, Any]:
    """The control API's schema, as packaged beside this module."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def operations() -> dict[str, dict[str, Any]]:
    """op -> its request's schema: the root's oneOf, each branch a $ref to a definition whose "op" is a
    const."""
    ops: dict[str, dict[str, Any]] = {}
    for branch in schema()["oneOf"]:
        definition = resolve(branch)
        ops[definition["properties"]["op"]["const"]] = definition
    return ops


def resolve(sub: dict[str, Any]) -> dict[str, Any]:
    """A subschema that is only a $ref ("#/$defs/NAME") -> the definition; others as they are."""
    while set(sub) == {"$ref"}:
        sub = _ref(sub["$ref"])
    return sub


def _ref(ref: str) -> dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise ValueError(f"unsupported $ref {ref!r}")  # pragma: no cover - the schema's test catches it
    target: dict[str, Any] = schema()["$defs"][ref[len(prefix):]]
    return target


OPS = operations()


class _Refusal(Exception):
    """Where a value failed (label: "dom", "config.memory", "ops[3].path"; "" for the request object
    itself), why, and the error name of the innermost x-errno around it."""

    def __init__(self, label: str, detail: str, tag: str = "", errno: str | None = None) -> None:
        super().__init__(detail)
        self.label, self.detail, self.tag, self.errno = label, detail, tag, errno

    def error(self, op: str) -> RequestError:
        if self.errno is not None:
            what = f"{self.label} {self.detail}" if self.label else self.detail
            return XsRequestError(self.errno, f"hyperdisco: {op}: {self.errno} ({what})")
        if self.tag or not self.label or self.detail.startswith(("missing ", "unknown ", "takes ")):
            where = " ".join(p for p in (op, self.label, self.tag) if p)
            return RequestError(f"hyperdisco: {where}: {self.detail}")
        return RequestError(f"hyperdisco: {op}: {self.label} {self.detail}")


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """One request line -> (op, arguments), validated against the op's schema."""
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
    op = req.get("op")
    if not isinstance(op, str):
        raise RequestError("hyperdisco: bad request: 'op' must be a string")
    definition = OPS.get(op)
    if definition is None:
        raise RequestError(f"hyperdisco: unknown operation {op[:64]!r}")
    try:
        args = validate(definition, req)
    except _Refusal as refusal:
        raise refusal.error(op) from None
    args.pop("op")
    return op, args


def validate(sub: dict[str, Any], value: Any, label: str = "") -> Any:
    """`value` checked against `sub`: the value (objects copied, optional nulls dropped, x-convert
    applied), or _Refusal."""
    errno = sub.get("x-errno")
    try:
        return _validate(sub, value, label)
    except _Refusal as refusal:
        if errno is not None and refusal.errno is None:
            refusal.errno = errno
        raise


_TYPE_PHRASES = {"string": "a string", "integer": "an integer", "number": "a number",
                 "boolean": "true or false", "object": "an object", "array": "a list", "null": "null"}


def _is(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "object": dict, "array": list,
                              "null": type(None)}[kind])


def _phrase(sub: dict[str, Any]) -> str:
    """What a value of `sub` is, for "must be ...": its title, or its type's name; with its bounds."""
    kinds = sub.get("type")
    base = sub.get("title") or (" or ".join(_TYPE_PHRASES[k] for k in kinds) if isinstance(kinds, list)
                                else _TYPE_PHRASES.get(str(kinds), "something else"))
    if "minimum" in sub or "maximum" in sub:
        base += f" ({_num(sub.get('minimum', '...'))}..{_num(sub.get('maximum', '...'))})"
    return str(base)


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _validate(sub: dict[str, Any], value: Any, label: str) -> Any:
    bad = functools.partial(_Refusal, label)
    if isinstance(value, dict) and "properties" in sub:  # an optional property sent as null: absent
        props, required = sub["properties"], sub.get("required", ())
        value = {k: v for k, v in value.items() if not (v is None and k in props and k not in required)}
    if "$ref" in sub:
        value = validate(_ref(sub["$ref"]), value, label)
    for part in sub.get("allOf", ()):
        value = validate(part, value, label)
    if "anyOf" in sub:
        value = _any_of(sub, value, label)
    if "not" in sub:
        try:
            validate(sub["not"], value, label)
        except _Refusal:
            pass
        else:
            raise bad(f"must be {sub.get('title', 'something else')}")
    kinds = sub.get("type")
    if kinds is not None:
        if not any(_is(k, value) for k in ([kinds] if isinstance(kinds, str) else kinds)):
            raise bad(f"must be {_phrase(sub)}")
    if "const" in sub and not _same(value, sub["const"]):
        raise bad(f"must be {json.dumps(sub['const'])}")
    if "enum" in sub and not any(_same(value, e) for e in sub["enum"]):
        raise bad(f"must be one of {', '.join(str(e) for e in sub['enum'])}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < sub.get("minimum", value) or value > sub.get("maximum", value):
            raise bad(f"must be {_phrase(sub)}")
    if isinstance(value, str):
        _check_string(sub, value, bad)
        if sub.get("x-convert") == "integer":
            value = int(value)
    if isinstance(value, list):
        lo, hi = sub.get("minItems", 0), sub.get("maxItems", len(value))
        if not lo <= len(value) <= hi:
            raise bad(f"must be {sub.get('title') or f'a list of {lo}..{hi} items'}")
        if "items" in sub:
            value = [validate(sub["items"], v, f"{label}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        value = _check_object(sub, value, label)
    if "if" in sub:
        try:
            validate(sub["if"], value, label)
            branch, tag = sub.get("then"), _tag(sub["if"])
        except _Refusal:
            branch, tag = sub.get("else"), ""
        if branch is not None:
            try:
                value = validate(branch, value, label)
            except _Refusal as refusal:
                refusal.tag = refusal.tag or tag
                raise
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _tag(cond: dict[str, Any]) -> str:
    """An if's condition for messages: its consts ("write" in "xenstore write: missing argument...")."""
    props = cond.get("properties", {})
    return " ".join(str(p["const"]) for p in props.values() if isinstance(p, dict) and "const" in p)


def _any_of(sub: dict[str, Any], value: Any, label: str) -> Any:
    """The first branch that takes the value (its conversion applies). When none does and only one
    branch is of the value's type, that branch's refusal says why; otherwise the title does."""
    refusals = []
    for branch in sub["anyOf"]:
        try:
            return validate(branch, value, label)
        except _Refusal as refusal:
            refusals.append((branch, refusal))
    typed = [r for b, r in refusals if _accepts_type(b, value)]
    if len(typed) == 1:
        raise typed[0]
    raise _Refusal(label, f"must be {sub.get('title', 'of another type')}")


def _accepts_type(sub: dict[str, Any], value: Any) -> bool:
    sub = resolve(sub)
    kinds = sub.get("type")
    if kinds is None:
        return all(_accepts_type(p, value) for p in sub.get("allOf", ())) if "allOf" in sub else True
    return any(_is(k, value) for k in ([kinds] if isinstance(kinds, str) else kinds))


@functools.cache
def _pattern(pattern: str) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
    """A schema pattern (ECMA-262, searched) compiled; a final $ is the end of the string (Python's \\Z, not
    before a trailing newline). With it, the character class of a pattern that is one class repeated, to
    name the character refused."""
    compiled = re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$")
                          else pattern)
    m = re.fullmatch(r"\^(\[[^\]]+\])[*+]\$", pattern)
    return compiled, re.compile(m.group(1)) if m else None


def _check_string(sub: dict[str, Any], value: str, bad: Any) -> None:
    if len(value) > sub.get("maxLength", len(value)):
        raise bad(f"is longer than {sub['maxLength']} characters")
    if len(value) < sub.get("minLength", 0):
        raise bad("must not be empty" if sub["minLength"] == 1 else f"is shorter than {sub['minLength']} "
                                                                    "characters")
    if "pattern" in sub:
        compiled, chars = _pattern(sub["pattern"])
        if not compiled.search(value):
            c = next((c for c in value if chars is not None and not chars.fullmatch(c)), None)
            if c is not None:
                raise bad(f"{_shown(value)}: may not hold {c!r}")
            raise bad(f"must be {sub.get('title') or 'matching ' + sub['pattern']}")


def _check_object(sub: dict[str, Any], value: dict[str, Any], label: str) -> dict[str, Any]:
    props: dict[str, Any] = sub.get("properties", {})
    required = sub.get("required", ())
    out = dict(value)
    for key in required:
        if key not in out:
            raise _Refusal(label, f"missing argument {key!r}")
    if len(out) > sub.get("maxProperties", len(out)):
        raise _Refusal(label, f"unknown argument: more than {sub['maxProperties']} keys")
    names = sub.get("propertyNames")
    extra = sub.get("additionalProperties", True)
    for key in list(out):
        inner = f"{label}.{key}" if label else str(key)
        if names is not None:
            try:
                validate(names, key, inner)
            except _Refusal:
                raise _Refusal(label, f"takes no {str(key)[:64]!r}") from None
        if key in props:
            out[key] = validate(props[key], out[key], inner)
        elif extra is False:
            raise _Refusal(label, f"unknown argument {str(key)[:64]!r}")
        elif isinstance(extra, dict):
            out[key] = validate(extra, out[key], inner)
    return out


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
