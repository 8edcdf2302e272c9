"""Domain configuration files in xl.cfg(5) syntax.

Syntax (as libxlu's lexer and grammar accept it, see xl.cfg(5)):

- settings ``KEY = VALUE`` end at a newline or ``;``; ``KEY += VALUE`` appends to an earlier string or list
  of the same key; a ``#`` outside a string starts a comment that runs to the end of the line;
- a key is an identifier ``[A-Za-z_][A-Za-z0-9_]*``; when a key is set twice the last setting wins (xl does
  the same);
- a value is a string in single or double quotes (it cannot span lines; in both kinds a backslash starts a
  C escape: ``\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v \\xHH`` and 1-3 octal digits), a number (decimal,
  ``0x`` hex, and, as C's strtol does for xl, a leading ``0`` means octal), or a list ``[ v1, v2, ... ]``
  that may span lines and may end with a comma.

Like xl, numbers and strings are interchangeable atoms: ``memory = "512"`` is an integer setting and
``name = 42`` names the domain ``42``.

Command-line overrides (``hyperdisco create dom1.cfg 'memory=512' 'name="web2"'``, as ``xl create`` takes
them) use the same syntax and are applied after the file, so they win.

Paths: a relative ``kernel``, ``ramdisk`` or disk ``target`` in the file is resolved against the directory of
the config file (xl would look it up relative to its working directory, and prefix a relative disk target
with ``/dev``); relative paths in command-line overrides are left relative to the current directory.

Every problem is a :class:`ConfigError` with one line naming the file, the line and the key, e.g.
``hyperdisco: dom1.cfg:7: unknown key 'memroy' (did you mean 'memory'?)``; user text quoted in a message is
escaped and cut to MAX_ECHO characters, so the line stays short whatever the input. Hostile input gets
nothing else: lists nest at most MAX_LIST_DEPTH deep (xl's only nested lists, vnuma's, are two deep),
numbers have at most MAX_NUMBER_DIGITS digits (xl's strtol stops at 64 bits anyway), strings cannot hold NUL
(xl's C strings end there), and the parsers run in time linear in their input.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.net.manager import VifConfig
from ..errors import ConfigError, ImageError

MIN_MEMORY_MIB = 32
MAX_MEMORY_MIB = 3072
MAX_VCPUS = 64
MAX_EVENT_CHANNELS = (1 << 17) - 1  # event_channel.h: EVTCHN_FIFO_NR_CHANNELS - 1
MAX_FILE_BYTES = 1 << 20
MAX_LIST_DEPTH = 8
MAX_NUMBER_DIGITS = 32      # of an integer setting (after any 0x): 2**64 has 20 decimal digits
MAX_ECHO = 80               # characters of user text quoted in one error message

KNOWN_KEYS = frozenset({
    "name", "type", "kernel", "ramdisk", "extra", "cmdline", "root", "memory", "maxmem", "vcpus",
    "maxvcpus", "max_event_channels", "on_poweroff", "on_reboot", "on_crash", "disk", "vif", "uuid",
    "cpus", "bootloader", "bootloader_args", "weight", "warp", "warpl", "warpu", "channel",
    "restore",  # hyperdisco: a clone of a save file (toolstack/clones.py)
})
BOOTLOADERS = ("pygrub",)   # by name; a path to it (/usr/lib/xen-4.17/bin/pygrub) means the same

#: every action xl accepts for on_poweroff/on_reboot/on_crash; hyperdisco implements SUPPORTED_ACTIONS
XL_ACTIONS = ("destroy", "restart", "preserve", "rename-restart", "coredump-destroy", "coredump-restart",
              "soft-reset")
SUPPORTED_ACTIONS = ("destroy", "restart", "preserve")

DISK_FORMATS = ("raw", "qcow2", "cow")
XL_ONLY_DISK_FORMATS = ("qcow", "vhd", "qed")
DISK_ACCESS = {"ro": "ro", "r": "ro", "rw": "rw", "w": "rw"}
# Bare keywords in a disk spec (xl-disk-configuration(5)); anything else without '=' is positional.
DISK_FLAGS = frozenset({"cdrom", "direct-io-safe", "discard", "no-discard", "colo"})
# Deprecated "prefix:" forms of the target: formats, and prefixes xl strips and ignores.
DISK_FORMAT_PREFIXES = {"raw": "raw", "qcow2": "qcow2", "qcow": "qcow", "vhd": "vhd"}
DISK_IGNORED_PREFIXES = frozenset({"tapdisk", "tap2", "tap", "aio", "ioemu", "file", "phy"})

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_VDEV_RE = re.compile(r"xvd[a-z]{1,4}")  # xvda..xvdzzzz: more than blkif's device numbers hold anyway
_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_INT_RE = re.compile(r"\s*([+-]?)(0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*)")


@dataclass
class DiskSpec:
    """One ``disk = [...]`` entry (xl-disk-configuration(5)). ``access`` is normalised to ``ro`` or ``rw``."""

    target: str
    format: str = "raw"
    vdev: str = ""
    access: str = "rw"
    extra: dict[str, str] = field(default_factory=dict)   # other key=value parameters and flags (flag: "")

    @property
    def readonly(self) -> bool:
        return self.access == "ro"

    @property
    def persistent(self) -> bool:
        return disk_persistent(self)

    def open_args(self) -> dict[str, Any]:
        """What the disk package's open_disk takes for this disk (sent to the domain process as is)."""
        return {"target": self.target, "format": self.format, "readonly": self.readonly,
                "persistent": self.persistent, "base": self.extra.get("base"),
                "base_format": self.extra.get("base_format"), "vdev": self.vdev}


@dataclass
class VifSpec:
    """One ``vif = [...]`` entry (xl-network-configuration(5)): its ``key=value`` parameters as written
    (``params``) and what they mean. ``mac`` lower-case with colons, None: derived when attached;
    ``bridge``: the network's name; ``ip``: IPv4 addresses, each with an optional /prefix; ``rate``:
    (bytes per interval, interval in microseconds) as libxl computes it; ``uplink`` (passt or
    tap:IFNAME) and ``hostfwd`` ((tcp|udp, host port, guest port), with uplink=passt) are hyperdisco's."""

    params: dict[str, str] = field(default_factory=dict)
    mac: str | None = None
    bridge: str = "xenbr0"
    ip: list[str] = field(default_factory=list)
    rate: tuple[int, int] | None = None
    uplink: str | None = None
    hostfwd: list[tuple[str, int, int]] = field(default_factory=list)
    vifname: str | None = None

    def net_config(self) -> VifConfig:
        """What domain 0's network devices take (backends/net/manager.py)."""
        return VifConfig(network=self.bridge, mac=self.mac, ips=tuple(self.ip), rate=self.rate,
                         uplink=self.uplink, hostfwd=tuple(self.hostfwd), vifname=self.vifname)


@dataclass
class DomainSpec:
    name: str
    type: str = "pvh"
    kernel: str | None = None       # with a bootloader: a file inside the guest's disk (pygrub --kernel)
    ramdisk: str | None = None
    bootloader: str | None = None   # "pygrub": boot the kernel the guest's disk holds (images/pygrub.py)
    bootloader_args: list[str] = field(default_factory=list)
    cmdline: str | None = None      # `cmdline`, or "root=ROOT EXTRA" built from `root` and `extra` as xl does
    memory: int = 256               # MiB
    maxmem: int | None = None       # MiB, >= memory
    vcpus: int = 1                  # online at boot
    maxvcpus: int | None = None     # >= vcpus
    max_event_channels: int | None = None  # the highest event-channel port (xl's default: 1023)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    disks: list[DiskSpec] = field(default_factory=list)
    vifs: list[VifSpec] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)  # `channel = [...]` names, devid 1, 2, ... in order
    uuid: str | None = None
    cpus: str | None = None         # stored as written (e.g. "0-3,^1")
    weight: int | None = None       # BVT weight (1-65535; None: 256, equal shares)
    warp: int | None = None         # BVT warp value, ms (None/0: no warp)
    warpl: int | None = None        # BVT warp limit, ms
    warpu: int | None = None        # BVT unwarp requirement, ms
    restore: str | None = None      # a save file: the domain is a clone of it (toolstack/clones.py)
    source: str = "<config>"        # the config file, for messages


# ---------------------------------------------------------------------------------------------------------
# Values and settings


@dataclass(frozen=True)
class _Number:
    """A bare number atom, kept as written (converted when a key needs an integer)."""

    text: str


_Value = str | _Number | list["_Value"]


@dataclass
class _Setting:
    key: str
    value: _Value
    where: str          # "dom1.cfg:7" or "dom1.cfg: override 'memory=512'"
    base_dir: Path | None


def _q(text: str) -> str:
    """User text for a message: repr() (escapes controls and newlines), cut to MAX_ECHO characters."""
    if len(text) <= MAX_ECHO:
        return repr(text)
    return f"{text[:MAX_ECHO]!r}... ({len(text)} characters)"


def _fail(where: str, key: str | None, message: str) -> ConfigError:
    prefix = f"hyperdisco: {where}: "
    if key is not None:     # an identifier (no quoting needed), of any length
        prefix += f"{key if len(key) <= MAX_ECHO else key[:MAX_ECHO] + '...'}: "
    return ConfigError(prefix + message)


def _describe(value: _Value) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, _Number):
        return _q(value.text)
    return _q(value)


# ---------------------------------------------------------------------------------------------------------
# Lexer


@dataclass(frozen=True)
class _Token:
    kind: str       # IDENT NUMBER STRING NL EOF or the punctuation itself: [ ] , = += ;
    text: str       # source text (for STRING: the decoded value)
    line: int
    raw: str = ""   # source text of a STRING, for messages

    def near(self) -> str:
        if self.kind == "NL":
            return "end of line"
        if self.kind == "EOF":
            return "end of file"
        return _q(self.raw if self.kind == "STRING" else self.text)


_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t", "v": "\v"}
_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_DIGITS = frozenset("0123456789")   # str.isdigit() would take other scripts' digits too
_IDENT_CHARS = _IDENT_START | _DIGITS
_NUMBER_CHARS = _IDENT_CHARS | frozenset(".")


class _Parser:
    """Recursive descent over libxlu's grammar; each statement becomes a _Setting."""

    def __init__(self, text: str, where: str | None, source: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.where_fixed = where        # overrides: one location for every line
        self.source = source
        self.key: str | None = None     # the key of the statement being parsed, for messages
        self.depth = 0                  # lists open around the current token
        self.tokens = self._lex()
        self.lookahead: _Token | None = None
        self.tok = next(self.tokens)

    def where(self, line: int) -> str:
        return self.where_fixed if self.where_fixed is not None else f"{self.source}:{line}"

    def error(self, line: int, message: str) -> ConfigError:
        return _fail(self.where(line), self.key, message)

    # -- lexing

    def _lex(self) -> Iterator[_Token]:
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in " \t\r\f\v":
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            elif c == "\n":
                yield _Token("NL", "\n", self.line)
                self.line += 1
                self.pos += 1
            elif c in "'\"":
                yield self._string(c)
            elif c == "+" and text.startswith("+=", self.pos):
                yield _Token("+=", "+=", self.line)
                self.pos += 2
            elif c in "[],=;":
                yield _Token(c, c, self.line)
                self.pos += 1
            elif c in _IDENT_START or c in _DIGITS:
                kind, chars = ("IDENT", _IDENT_CHARS) if c in _IDENT_START else ("NUMBER", _NUMBER_CHARS)
                start = self.pos
                while self.pos < n and text[self.pos] in chars:
                    self.pos += 1
                yield _Token(kind, text[start:self.pos], self.line)
            else:
                raise self.error(self.line, f"syntax error near {c!r}")
        while True:
            yield _Token("EOF", "", self.line)

    def _string(self, quote: str) -> _Token:
        text, n = self.text, len(self.text)
        start = self.pos
        out: list[str] = []
        i = start + 1
        while True:
            if i >= n or text[i] == "\n":
                raise self.error(self.line, f"unterminated string {_q(text[start:i])}")
            c = text[i]
            if c == quote:
                break
            if c == "\0":
                raise self.error(self.line, "NUL character in string")
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= n or text[i + 1] == "\n":
                raise self.error(self.line, f"unterminated string {_q(text[start:i + 1])}")
            e = text[i + 1]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
            elif e == "x":
                digits = text[i + 2:i + 4]
                if len(digits) != 2 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    raise self.error(self.line, f"invalid escape {_q(text[i:i + 4])} in string "
                                                "(\\x needs two hex digits)")
                out.append(chr(int(digits, 16)))
                i += 4
            elif e in "01234567":
                j = i + 1
                while j < min(i + 4, n) and text[j] in "01234567":
                    j += 1
                out.append(chr(int(text[i + 1:j], 8)))
                i = j
            else:
                raise self.error(self.line, f"invalid escape {_q(text[i:i + 2])} in string")
            if out[-1] == "\0":
                raise self.error(self.line, "NUL character in string (from an escape)")
        self.pos = i + 1
        return _Token("STRING", "".join(out), self.line, raw=text[start:i + 1])

    # -- grammar

    def advance(self) -> _Token:
        tok = self.tok
        if self.lookahead is not None:
            self.tok, self.lookahead = self.lookahead, None
        else:
            self.tok = next(self.tokens)
        return tok

    def peek(self) -> _Token:
        """The token after the current one."""
        if self.lookahead is None:
            self.lookahead = next(self.tokens)
        return self.lookahead

    def starts_setting(self) -> bool:
        """A list that meets `KEY =` was never closed."""
        return self.tok.kind == "IDENT" and self.peek().kind in ("=", "+=")

    def skip_newlines(self) -> None:
        while self.tok.kind == "NL":
            self.advance()

    def statements(self) -> Iterator[tuple[str, str, _Value, int]]:
        """Yield (key, op, value, line) for each setting, in order."""
        while self.tok.kind != "EOF":
            if self.tok.kind in ("NL", ";"):
                self.advance()
                continue
            self.key = None
            if self.tok.kind != "IDENT":
                raise self.error(self.tok.line, f"syntax error near {self.tok.near()}")
            key_tok = self.advance()
            self.key = key_tok.text
            if self.tok.kind not in ("=", "+="):
                raise self.error(self.tok.line, f"syntax error near {self.tok.near()} (expected '=')")
            op = self.advance().kind
            value = self.value()
            if self.tok.kind not in ("NL", ";", "EOF"):
                raise self.error(self.tok.line, f"syntax error near {self.tok.near()}")
            yield key_tok.text, op, value, key_tok.line
            self.key = None

    def value(self) -> _Value:
        tok = self.tok
        if tok.kind == "STRING":
            self.advance()
            return tok.text
        if tok.kind == "NUMBER":
            self.advance()
            return _Number(tok.text)
        if tok.kind == "[":
            return self.list_value()
        hint = " (strings need quotes)" if tok.kind == "IDENT" else ""
        raise self.error(tok.line, f"syntax error near {tok.near()}{hint}")

    def list_value(self) -> list[_Value]:
        if self.depth >= MAX_LIST_DEPTH:
            raise self.error(self.tok.line, f"lists nested more than {MAX_LIST_DEPTH} deep")
        self.depth += 1
        try:
            return self._list_items()
        finally:
            self.depth -= 1

    def _list_items(self) -> list[_Value]:
        opened = self.advance().line
        items: list[_Value] = []
        self.skip_newlines()
        while True:
            if self.tok.kind == "]":
                self.advance()
                return items
            if self.tok.kind == "EOF":
                raise self.error(opened, "unterminated list ('[' is never closed)")
            if self.starts_setting():
                raise self.error(opened, f"unterminated list ('[' is not closed before line {self.tok.line})")
            items.append(self.value())
            self.skip_newlines()
            if self.tok.kind == ",":
                self.advance()
                self.skip_newlines()
            elif self.tok.kind == "EOF":
                raise self.error(opened, "unterminated list ('[' is never closed)")
            elif self.starts_setting():
                raise self.error(opened, f"unterminated list ('[' is not closed before line {self.tok.line})")
            elif self.tok.kind != "]":
                raise self.error(self.tok.line, f"syntax error near {self.tok.near()}")


def _store(settings: dict[str, _Setting], key: str, op: str, value: _Value, where: str,
           base_dir: Path | None) -> None:
    if key not in KNOWN_KEYS:
        hint = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise _fail(where, None, f"unknown key {_q(key)}{suffix}")
    prev = settings.pop(key, None)      # re-insert so the order follows the last setting
    if op == "+=" and prev is not None:
        old = prev.value
        if isinstance(old, _Number) or isinstance(value, _Number):
            raise _fail(where, key, "can't use += with numbers")
        if isinstance(old, list) and isinstance(value, list):
            old.extend(value)       # in place: a file of N `disk += [...]` lines costs O(N), not O(N**2)
            value = old
        elif isinstance(old, str) and isinstance(value, str):
            value = old + value
        else:
            raise _fail(where, key, "can't add a list to a string or a string to a list")
    elif op == "+=" and isinstance(value, _Number):
        raise _fail(where, key, "can't use += with numbers")
    settings[key] = _Setting(key, value, where, base_dir)


def _parse_settings(text: str, source: str, overrides: Sequence[str],
                    base_dir: Path | None) -> dict[str, _Setting]:
    settings: dict[str, _Setting] = {}
    parser = _Parser(text, None, source)
    for key, op, value, line in parser.statements():
        _store(settings, key, op, value, parser.where(line), base_dir)
    for item in overrides:
        where = f"{source}: override {_q(item)}"
        oparser = _Parser(item, where, source)
        count = 0
        for key, op, value, _line in oparser.statements():
            _store(settings, key, op, value, where, None)
            count += 1
        if count == 0:
            raise _fail(where, None, "expected KEY=VALUE")
    return settings


# ---------------------------------------------------------------------------------------------------------
# Typed access to settings


def _as_str(s: _Setting) -> str:
    if isinstance(s.value, list):
        raise _fail(s.where, s.key, "expected a single value, got a list")
    return s.value.text if isinstance(s.value, _Number) else s.value


def _as_int(s: _Setting, low: int, high: int, unit: str = "") -> int:
    if isinstance(s.value, list):
        raise _fail(s.where, s.key, "expected an integer, got a list")
    text = s.value.text if isinstance(s.value, _Number) else s.value
    m = _INT_RE.fullmatch(text.rstrip())
    if m is None:
        raise _fail(s.where, s.key, f"expected an integer, got {_q(text)}")
    sign, digits = m.groups()
    count = len(digits) - 2 if digits[:2] in ("0x", "0X") else len(digits)
    if count > MAX_NUMBER_DIGITS:    # checked before int(), which refuses over 4300 digits with a ValueError
        raise _fail(s.where, s.key, f"number too long ({count} digits, at most {MAX_NUMBER_DIGITS})")
    if digits[:2] in ("0x", "0X"):
        n = int(digits, 16)
    elif len(digits) > 1 and digits.startswith("0"):
        n = int(digits, 8)
    else:
        n = int(digits)
    if sign == "-":
        n = -n
    if not low <= n <= high:
        raise _fail(s.where, s.key, f"{n}{unit} is out of range ({low}..{high}{unit})")
    return n


def _as_str_list(s: _Setting) -> list[str]:
    if not isinstance(s.value, list):
        raise _fail(s.where, s.key, f"expected a list of strings, got {_describe(s.value)}")
    out: list[str] = []
    for item in s.value:
        if isinstance(item, list):
            raise _fail(s.where, s.key, "expected a list of strings, got a nested list")
        out.append(item.text if isinstance(item, _Number) else item)
    return out


def _path(s: _Setting, value: str) -> str:
    if s.base_dir is None or Path(value).is_absolute():
        return value
    return str(s.base_dir / value)


def _bootloader(s: _Setting) -> str:
    value = _as_str(s)
    name = value.rsplit("/", 1)[-1]
    if name not in BOOTLOADERS:
        raise _fail(s.where, s.key, f"{_q(value)} is not supported (hyperdisco has {', '.join(BOOTLOADERS)})")
    return name


def _bootloader_args(s: _Setting) -> list[str]:
    """A list of arguments, or (xl's deprecated form) one string of them separated by blanks; checked
    against the pygrub options hyperdisco takes."""
    from ..images.pygrub import parse_bootloader_args

    args = _as_str_list(s) if isinstance(s.value, list) else _as_str(s).split()
    try:
        parse_bootloader_args(args)
    except ImageError as exc:
        raise _fail(s.where, s.key, str(exc).removeprefix("hyperdisco: bootloader_args: ")) from None
    return args


def _action(s: _Setting) -> str:
    action = _as_str(s)
    if action in SUPPORTED_ACTIONS:
        return action
    if action in XL_ACTIONS:
        raise _fail(s.where, s.key, f"{_q(action)} is not supported (hyperdisco implements "
                                    f"{', '.join(SUPPORTED_ACTIONS)})")
    raise _fail(s.where, s.key, f"unknown action {_q(action)} (expected one of {', '.join(XL_ACTIONS)})")


# ---------------------------------------------------------------------------------------------------------
# disk and vif specs


BOOLEANS = {"yes": True, "1": True, "true": True, "on": True, "no": False, "0": False, "false": False,
            "off": False}
# xl-disk-configuration(5)'s other keys (accepted, not all acted on) and hyperdisco's base/persistent
KNOWN_DISK_KEYS = {"devtype", "backend", "backendtype", "script", "discard", "no-discard", "direct-io-safe",
                   "trusted", "untrusted", "colo", "colo-host", "colo-port", "colo-export", "active-disk",
                   "hidden-disk", "specification", "base", "base_format", "persistent"} | set(DISK_FLAGS)


def disk_persistent(spec: DiskSpec) -> bool:
    return BOOLEANS[spec.extra.get("persistent", "yes")]


def parse_disk(spec: str, where: str = "<disk>", base_dir: Path | None = None) -> DiskSpec:
    """Parse one DISKSPEC (xl-disk-configuration(5)); ``where`` locates it in messages."""
    def bad(message: str) -> ConfigError:
        return _fail(where, "disk", f"{message} in {_q(spec)}")

    if "\0" in spec:
        raise bad("NUL character")
    named: dict[str, str] = {}
    extra: dict[str, str] = {}
    positional = ["target", "format", "vdev", "access"]
    deprecated_prefix = False
    pos = 0         # walked by index, never by re-slicing the rest: linear in the spec's length
    while True:
        comma = spec.find(",", pos)
        end = len(spec) if comma < 0 else comma
        item = spec[pos:end].lstrip()
        start = end - len(item)
        pos = end + 1
        if item.startswith("target="):
            # target= swallows the rest of the spec, commas and trailing whitespace included
            value = spec[start + len("target="):]
            if named.get("target"):
                raise bad("target given twice")
            named["target"] = value
            break
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip()
            if key in named or key in extra:
                raise bad(f"{_q(key)} given twice")
            if key in positional:
                named[key] = value.strip()
            else:
                extra[key] = value.strip()
        elif item.strip() in DISK_FLAGS:
            flag = item.strip()
            if flag == "cdrom":
                extra["devtype"] = "cdrom"
            else:
                extra[flag] = ""
        else:
            value = item.rstrip()
            free = [p for p in positional if p not in named]
            if not free:
                if value:
                    raise bad(f"unexpected parameter {_q(value)}")
            else:
                slot = free[0]
                if slot == "target":
                    value, fmt, deprecated_prefix = _strip_disk_prefixes(value)
                    if fmt is not None:
                        named["format"] = fmt
                    if deprecated_prefix:
                        # the old syntax is [<format>:]<target>,<vdev>,<access>: no format position
                        positional = ["target", "vdev", "access"]
                named[slot] = value
        if comma < 0:
            break

    target = named.get("target", "")
    if not target:
        raise bad("no target (disk image path)")
    fmt = named.get("format") or "raw"
    if fmt not in DISK_FORMATS:
        what = "is not supported" if fmt in XL_ONLY_DISK_FORMATS else "is not a disk format"
        raise bad(f"format {_q(fmt)} {what} (expected {', '.join(DISK_FORMATS)})")
    vdev = named.get("vdev", "")
    if not vdev:
        raise bad("no vdev (e.g. xvda)")
    if not _VDEV_RE.fullmatch(vdev):
        raise bad(f"vdev {_q(vdev)} is not supported (expected xvd[a-z]+, e.g. xvda)")
    default_access = "ro" if extra.get("devtype") == "cdrom" else "rw"
    access = named.get("access") or default_access
    if access not in DISK_ACCESS:
        raise bad(f"access {_q(access)} is invalid (expected ro, r, rw or w)")
    unknown = sorted(set(extra) - KNOWN_DISK_KEYS)
    if unknown:
        raise bad(f"unknown disk parameter {_q(unknown[0])}")
    # hyperdisco's own: base= (the read-only image under a new cow overlay) and its base_format= (raw
    # unless given: formats are never guessed from image contents), persistent=yes|no
    # (no: the disk's writes are kept only until the domain goes, as Disco's non-persistent disks)
    if extra.get("persistent", "yes") not in BOOLEANS:
        raise bad(f"persistent={_q(extra['persistent'])} (expected yes or no)")
    if "base" in extra and not extra["base"]:
        raise bad("base= names no image")
    if "base_format" in extra and extra["base_format"] not in DISK_FORMATS:
        raise bad(f"base_format={_q(extra['base_format'])} (expected one of {', '.join(DISK_FORMATS)})")
    if base_dir is not None:
        if not Path(target).is_absolute():
            target = str(base_dir / target)
        if "base" in extra and not Path(extra["base"]).is_absolute():
            extra["base"] = str(base_dir / extra["base"])
    return DiskSpec(target=target, format=fmt, vdev=vdev, access=DISK_ACCESS[access], extra=extra)


def _strip_disk_prefixes(target: str) -> tuple[str, str | None, bool]:
    """Strip deprecated ``raw:``/``phy:``/``tap:aio:`` style prefixes: (target, format or None, any)."""
    fmt: str | None = None
    found = False
    while True:
        head, colon, tail = target.partition(":")
        if not colon:
            return target, fmt, found
        if head in DISK_FORMAT_PREFIXES:
            fmt = DISK_FORMAT_PREFIXES[head]
        elif head not in DISK_IGNORED_PREFIXES:
            return target, fmt, found
        found = True
        target = tail


def _key_values(spec: str, where: str, device: str, known: Sequence[str] | None = None) -> dict[str, str]:
    """A device spec of comma-separated ``key=value`` pairs (vif, channel) as a map; blanks around keys and
    values are dropped and empty items ignored. Every problem is one line naming ``device``: a NUL, an item
    without ``=`` or without a key, a key given twice and, when ``known`` is given, a key not in it (checked
    item by item, before the repeat)."""
    if "\0" in spec:
        raise _fail(where, device, f"NUL character in {_q(spec)}")
    params: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise _fail(where, device, f"expected key=value, got {_q(item)} in {_q(spec)}")
        if known is not None and key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise _fail(where, device, f"unknown {device} parameter {_q(key)}"
                                       f"{f' (did you mean {hint[0]!r}?)' if hint else ''}")
        if key in params:
            raise _fail(where, device, f"{_q(key)} given twice in {_q(spec)}")
        params[key] = value
    return params


# xl-network-configuration(5)'s keys hyperdisco takes; type, model, script are accepted and ignored
# (no emulated NIC, no hotplug scripts), uplink and hostfwd are hyperdisco's own
KNOWN_VIF_KEYS = ("mac", "bridge", "ip", "rate", "uplink", "hostfwd", "type", "model", "script", "vifname",
                  "backend")
VIF_TYPES = ("vif", "ioemu")
VIF_BACKENDS = ("0", "dom0", "Domain-0")
_NETWORK_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")  # IFNAMSIZ - 1
_VIF_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
_IPV4_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(?:/([0-9]{1,2}))?")
_RATE_RE = re.compile(r"([0-9]{1,20})([GMK]?)([Bb])/s(?:@([0-9]{1,10})(s|ms|us))?")
_RATE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
_INTERVAL_UNITS = {"s": 1_000_000, "ms": 1000, "us": 1}
DEFAULT_RATE_INTERVAL_US = 50_000  # xl's default replenish interval (50 ms)
MAX_RATE_INTERVAL_US = (1 << 32) - 1  # libxl keeps it in a uint32
_HOSTFWD_RE = re.compile(r"(tcp|udp):([0-9]{1,5}):([0-9]{1,5})")


# xl.cfg(5) "channel": name= (required), connection=socket|pty, path= (with socket). hyperdisco serves a
# channel from domain 0 itself (the guest agent's, docs/guest-agent.md); connection= and path= are accepted
# as xl writes them, but nothing listens on the path (see docs/guest-agent.md, "not done")
KNOWN_CHANNEL_KEYS = ("name", "connection", "path", "backend")
CHANNEL_CONNECTIONS = ("socket", "pty")
MAX_CHANNELS = 8
_CHANNEL_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def parse_channel(spec: str, where: str = "<channel>") -> str:
    """One channel spec (comma-separated key=value pairs): its name."""
    params = _key_values(spec, where, "channel", KNOWN_CHANNEL_KEYS)
    name = params.get("name")
    if name is None:
        raise _fail(where, "channel", f"a channel needs name= in {_q(spec)}")
    if not _CHANNEL_NAME_RE.fullmatch(name):
        raise _fail(where, "channel", f"channel name {_q(name)} is not 1-128 letters, digits, '_.:-'")
    conn = params.get("connection", "socket")
    if conn not in CHANNEL_CONNECTIONS:
        raise _fail(where, "channel", f"connection {_q(conn)} is not one of {', '.join(CHANNEL_CONNECTIONS)}")
    if params.get("backend", "0") not in VIF_BACKENDS:
        raise _fail(where, "channel", "channel backends run in domain 0 only")
    return name


def parse_vif(spec: str, where: str = "<vif>") -> VifSpec:
    """Parse one vif spec: comma-separated ``key=value`` pairs; empty items are ignored."""
    params = _key_values(spec, where, "vif")
    return vif_from_params(params, where, spec)


def vif_from_params(params: dict[str, str], where: str = "<vif>", spec: str | None = None) -> VifSpec:
    """The meaning of a vif's ``key=value`` parameters (also for a vif sent to the daemon as its map)."""
    shown = spec if spec is not None else ", ".join(f"{k}={v}" for k, v in params.items())

    def bad(message: str) -> ConfigError:
        return _fail(where, "vif", f"{message} in {_q(shown)}")

    for key, value in params.items():
        if "\0" in key or "\0" in value:
            raise bad("NUL character")
        if key not in KNOWN_VIF_KEYS:
            hint = difflib.get_close_matches(key, KNOWN_VIF_KEYS, n=1)
            raise bad(f"unknown vif parameter {_q(key)}{f' (did you mean {hint[0]!r}?)' if hint else ''}")
    vif = VifSpec(dict(params))
    mac = params.get("mac")
    if mac is not None:
        if not _VIF_MAC_RE.fullmatch(mac):
            raise bad(f"mac {_q(mac)} is not a MAC address (expected xx:xx:xx:xx:xx:xx)")
        octets = bytes(int(mac[i:i + 2], 16) for i in range(0, 17, 3))
        if octets[0] & 1:
            raise bad(f"mac {_q(mac)} is a multicast address (a vif needs a unicast one)")
        if octets == bytes(6):
            raise bad("mac 00:00:00:00:00:00 is not an interface address")
        vif.mac = ":".join(f"{b:02x}" for b in octets)
    if "bridge" in params:
        if not _NETWORK_RE.fullmatch(params["bridge"]):
            raise bad(f"bridge {_q(params['bridge'])} is not a network name (1-32 letters, digits, '_', '.', "
                      "'-')")
        vif.bridge = params["bridge"]
    if "ip" in params:
        vif.ip = [_vif_ip(a, bad) for a in params["ip"].split()]
        if not vif.ip:
            raise bad("ip= names no address")
    if "rate" in params:
        vif.rate = _vif_rate(params["rate"], bad)
    if "uplink" in params:
        up = params["uplink"]
        if up != "passt" and not (up.startswith("tap:") and _IFNAME_RE.fullmatch(up[4:])):
            raise bad(f"uplink {_q(up)} (expected passt or tap:IFNAME)")
        vif.uplink = up
    if "hostfwd" in params:
        seen: set[tuple[str, int]] = set()
        for item in params["hostfwd"].split(";"):
            item = item.strip()
            m = _HOSTFWD_RE.fullmatch(item)
            if m is None or not all(0 < int(p) < 65536 for p in m.group(2, 3)):
                raise bad(f"hostfwd {_q(item)} (expected tcp:HOSTPORT:GUESTPORT or udp:..., ports "
                          "1-65535, several separated by ';')")
            fwd = (m.group(1), int(m.group(2)), int(m.group(3)))
            if fwd[:2] in seen:
                raise bad(f"hostfwd {fwd[0]}:{fwd[1]} given twice")
            seen.add(fwd[:2])
            vif.hostfwd.append(fwd)
        if vif.uplink != "passt":
            raise bad("hostfwd needs uplink=passt")
    if "vifname" in params:
        if not _IFNAME_RE.fullmatch(params["vifname"]):
            raise bad(f"vifname {_q(params['vifname'])} is not an interface name (1-15 letters, digits, "
                      "'_', '.', '-')")
        vif.vifname = params["vifname"]
    if "type" in params and params["type"] not in VIF_TYPES:
        raise bad(f"type {_q(params['type'])} (expected vif or ioemu)")
    if "backend" in params and params["backend"] not in VIF_BACKENDS:
        raise bad(f"backend {_q(params['backend'])} is not supported (only domain 0)")
    return vif


def _vif_ip(text: str, bad: Any) -> str:
    m = _IPV4_RE.fullmatch(text)
    if m is None or any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in m.group(1, 2, 3, 4)):
        raise bad(f"ip {_q(text)} is not an IPv4 address (A.B.C.D or A.B.C.D/NN)")
    if m.group(5) is not None and int(m.group(5)) > 32:
        raise bad(f"ip {_q(text)}: the prefix is longer than 32")
    return text


def _vif_rate(text: str, bad: Any) -> tuple[int, int]:
    """xl's RATE/s[@INTERVAL] (units GB MB KB B for bytes, Gb Mb Kb b for bits; an interval in s, ms or
    us, 50 ms by default) -> (bytes per interval, interval in microseconds), as libxl writes it."""
    m = _RATE_RE.fullmatch(text)
    if m is None:
        raise bad(f"rate {_q(text)} (expected e.g. 10Mb/s or 1MB/s@20ms)")
    per_s = int(m.group(1)) * _RATE_UNITS[m.group(2)]
    if m.group(3) == "b":
        per_s //= 8
    interval = DEFAULT_RATE_INTERVAL_US
    if m.group(4) is not None:
        interval = int(m.group(4)) * _INTERVAL_UNITS[m.group(5)]
    if per_s == 0:
        raise bad(f"rate {_q(text)} is zero")
    if not 0 < interval <= MAX_RATE_INTERVAL_US:
        raise bad(f"rate {_q(text)}: the interval must be between 1us and {MAX_RATE_INTERVAL_US}us")
    per_interval = per_s * interval // 1_000_000
    if per_interval == 0:
        raise bad(f"rate {_q(text)} is less than one byte per interval")
    if per_interval >= 1 << 64:
        raise bad(f"rate {_q(text)} is too large")
    return per_interval, interval


# ---------------------------------------------------------------------------------------------------------
# Building the DomainSpec


def _build(settings: dict[str, _Setting], source: str) -> DomainSpec:
    if "name" not in settings:
        raise _fail(source, None, "missing required key 'name'")
    s = settings["name"]
    name = _as_str(s)
    if not _NAME_RE.fullmatch(name):
        raise _fail(s.where, s.key, f"invalid domain name {_q(name)} (use letters, digits, '_', '.', '-')")
    spec = DomainSpec(name=name, source=source)

    for key, s in settings.items():
        if key == "type":
            kind = _as_str(s)
            if kind != "pvh":
                raise _fail(s.where, key, f"{_q(kind)} is not supported (only pvh)")
            spec.type = kind
        elif key in ("kernel", "ramdisk"):
            path = _as_str(s)
            if not path:
                raise _fail(s.where, key, "empty path")
            if "bootloader" in settings:    # a file inside the guest's disk, as xl hands it to pygrub
                if not path.startswith("/"):
                    raise _fail(s.where, key, f"{_q(path)}: with a bootloader, an absolute path inside the "
                                              "guest's disk")
                setattr(spec, key, path)
            else:
                setattr(spec, key, _path(s, path))
        elif key == "bootloader":
            spec.bootloader = _bootloader(s)
        elif key == "bootloader_args":
            spec.bootloader_args = _bootloader_args(s)
        elif key == "memory":
            spec.memory = _as_int(s, MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB")
        elif key == "maxmem":
            spec.maxmem = _as_int(s, MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB")
        elif key == "vcpus":
            spec.vcpus = _as_int(s, 1, MAX_VCPUS)
        elif key == "maxvcpus":
            spec.maxvcpus = _as_int(s, 1, MAX_VCPUS)
        elif key == "max_event_channels":  # xl.cfg(5): up to 131071 with the FIFO ABI, 4095 with 2-level
            spec.max_event_channels = _as_int(s, 1, MAX_EVENT_CHANNELS)
        elif key in ("on_poweroff", "on_reboot", "on_crash"):
            setattr(spec, key, _action(s))
        elif key == "disk":
            seen: dict[str, str] = {}
            for item in _as_str_list(s):
                disk = parse_disk(item, s.where, s.base_dir)
                if disk.vdev in seen:
                    raise _fail(s.where, key, f"vdev {_q(disk.vdev)} is used by two disks")
                seen[disk.vdev] = item
                spec.disks.append(disk)
        elif key == "vif":
            spec.vifs = [parse_vif(item, s.where) for item in _as_str_list(s)]
            macs = [v.mac for v in spec.vifs if v.mac is not None]
            if len(set(macs)) < len(macs):
                raise _fail(s.where, key, "two vifs have the same mac")
        elif key == "channel":
            spec.channels = [parse_channel(item, s.where) for item in _as_str_list(s)]
            if len(set(spec.channels)) < len(spec.channels):
                raise _fail(s.where, key, "two channels have the same name")
            if len(spec.channels) > MAX_CHANNELS:
                raise _fail(s.where, key, f"at most {MAX_CHANNELS} channels")
        elif key == "uuid":
            uuid = _as_str(s)
            if not _UUID_RE.fullmatch(uuid):
                raise _fail(s.where, key, f"{_q(uuid)} is not a UUID "
                                          "(expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
            spec.uuid = uuid.lower()
        elif key == "cpus":
            if isinstance(s.value, list):
                raise _fail(s.where, key, "per-vCPU affinity lists are not supported "
                                          "(use a string like '0-3')")
            spec.cpus = _as_str(s)
        elif key == "weight":
            spec.weight = _as_int(s, 1, 65535)
        elif key in ("warp", "warpl", "warpu"):
            setattr(spec, key, _as_int(s, 0, 10_000, " ms"))
        elif key in ("cmdline", "root", "extra"):
            _as_str(s)      # checked here, composed below
        elif key == "restore":  # a path, relative to the config file's directory as a disk's target
            path = _as_str(s)
            if not path or "\0" in path:
                raise _fail(s.where, key, "expected the path of a save file")
            spec.restore = str(s.base_dir / path) if s.base_dir is not None else path

    if spec.maxmem is not None and spec.maxmem < spec.memory:
        s = settings["maxmem"]
        raise _fail(s.where, "maxmem", f"{spec.maxmem} MiB is less than memory ({spec.memory} MiB)")
    if spec.maxvcpus is not None and spec.maxvcpus < spec.vcpus:
        s = settings["maxvcpus"]
        raise _fail(s.where, "maxvcpus", f"{spec.maxvcpus} is less than vcpus ({spec.vcpus})")

    # xl: cmdline wins over root/extra; otherwise "root=ROOT EXTRA", "root=ROOT" or "EXTRA"
    if "cmdline" in settings:
        spec.cmdline = _as_str(settings["cmdline"])
    else:
        root = _as_str(settings["root"]) if "root" in settings else None
        extra = _as_str(settings["extra"]) if "extra" in settings else None
        if root is not None and extra is not None:
            spec.cmdline = f"root={root} {extra}"
        elif root is not None:
            spec.cmdline = f"root={root}"
        else:
            spec.cmdline = extra
    return spec


def parse_text(text: str, source: str = "<config>", overrides: Sequence[str] = (),
               base_dir: str | Path | None = None) -> DomainSpec:
    """Parse config text. Relative paths in it are resolved against ``base_dir`` when one is given."""
    settings = _parse_settings(text, source, overrides, Path(base_dir) if base_dir is not None else None)
    return _build(settings, source)


def parse_file(path: str | Path, overrides: Sequence[str] = ()) -> DomainSpec:
    """Parse a config file; its relative paths are resolved against the file's directory."""
    p = Path(path)
    source = str(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise _fail(source, None, "no such file") from None
    except IsADirectoryError:
        raise _fail(source, None, "is a directory, not a config file") from None
    except OSError as exc:
        raise _fail(source, None, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _fail(source, None, f"too large for a config file ({len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _fail(f"{source}:{line}", None, "not a text file (invalid UTF-8)") from None
    return parse_text(text, source, overrides, base_dir=p.parent.absolute())
