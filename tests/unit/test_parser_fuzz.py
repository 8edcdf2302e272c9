"""Property-based fuzzing of every parser of user input: xl.cfg text, files and overrides
(toolstack/xlcfg.py), disk specs (parse_disk) and vif specs (parse_vif).

One property for all of them: whatever the input, the parser returns a value or raises the project's own
error (:class:`HyperdiscoError`) whose message is one bounded line starting ``hyperdisco: ``; never any
other exception (ValueError, RecursionError, IndexError, ...). The inputs are near-valid configs built from
the grammar, mutations of real configs, random disk and vif specs, deep nesting, huge numbers, NUL,
surrogates and other characters a hostile file or client can send.

Each target's example count is fixed and the whole file stays well under 20 s; hypothesis keeps no example
database here (``database=None``), so runs leave nothing in the work tree.
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_xlcfg import FULL

from hyperdisco.errors import HyperdiscoError
from hyperdisco.toolstack import xlcfg
from hyperdisco.toolstack.xlcfg import parse_disk, parse_file, parse_text, parse_vif

MAX_MESSAGE = 1000   # characters of one error line, whatever the input's size


def fuzz(examples: int) -> Callable[[Any], Any]:
    # HYPERDISCO_FUZZ_EXAMPLES=N: N examples per target instead (longer campaigns; test_backend_fuzz.py too)
    examples = int(os.environ.get("HYPERDISCO_FUZZ_EXAMPLES", "0")) or examples
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def expect_own_error(fn: Callable[[], object]) -> object:
    """Run ``fn``: its result, or None when it raised the project's own error as one bounded line."""
    try:
        return fn()
    except HyperdiscoError as e:
        message = str(e)
        assert message.startswith("hyperdisco: "), message[:200]
        assert "\n" not in message and "\r" not in message, message[:200]
        assert len(message) <= MAX_MESSAGE, (len(message), message[:200])
        return None


def check_domain(spec: object) -> None:
    if spec is None:
        return
    assert isinstance(spec, xlcfg.DomainSpec)
    assert xlcfg.MIN_MEMORY_MIB <= spec.memory <= xlcfg.MAX_MEMORY_MIB
    assert 1 <= spec.vcpus <= xlcfg.MAX_VCPUS
    assert all(isinstance(d, xlcfg.DiskSpec) and d.target and d.vdev for d in spec.disks)


# ---------------------------------------------------------------------------------------------------------
# Generators. The structured ones build their input from one seeded random.Random (st.randoms): thousands
# of grammar-shaped inputs a second, where drawing each choice from hypothesis would cost ten times more.
# A failure still prints the input itself; hypothesis's own strategies add raw text and bytes that shrink.

# characters the grammar gives a meaning, digits and letters, and hostile ones: NUL and other controls, a
# lone surrogate (what surrogateescape makes of a non-UTF-8 byte), BOM, non-ASCII digits, LINE SEPARATOR
HOSTILE = "[]=,;+#'\"\\\n\t\r \x00\x01\x7f:.-_/0123456789xXabcdefzAFZ\udcff\ufeff\u0661\u00b2\u00e9\u2028"
WORD_CHARS = string.ascii_letters + string.digits + "_."

KEYS = sorted(xlcfg.KNOWN_KEYS)
INT_KEYS = ["memory", "maxmem", "vcpus", "maxvcpus"]
NEAR_MISS_KEYS = ["memroy", "builder", "x", "_", "disk2", "Memory", "vif_"]


def gen_text(r: random.Random, n: int = 40) -> str:
    """Mostly hostile characters; sometimes any code point, lone surrogates included."""
    size = r.randrange(n + 1)
    if r.random() < 0.7:
        return "".join(r.choice(HOSTILE) for _ in range(size))
    return "".join(chr(r.randrange(0x110000) if r.random() < 0.3 else r.randrange(0x80)) for _ in range(size))


def gen_number(r: random.Random) -> str:
    """A number as written: decimal, hex, octal, signed, with junk, or thousands of digits long."""
    kind = r.choice(["small", "dec", "hex", "oct", "huge", "junk"])
    if kind == "small":
        return str(r.randrange(-5, 4001))
    if kind == "dec":
        return str(r.randrange(-(1 << 80), 1 << 80))
    if kind == "hex":
        return hex(r.getrandbits(80))
    if kind == "oct":
        return "0" + format(r.getrandbits(40), "o")
    if kind == "huge":
        lead = r.choice(["", "0x", "-", "+", "0", " "]) + r.choice("123456789")
        return lead + r.choice("0123456789fF") * r.randrange(1, 12001)
    return r.choice(string.digits) + "".join(r.choice(WORD_CHARS) for _ in range(r.randrange(11)))


def escape(text: str, quote: str) -> str:
    return "".join("\\" + c if c in (quote, "\\") else "\\n" if c == "\n" else c for c in text)


def gen_string(r: random.Random, body: str | None = None) -> str:
    """A quoted string, mostly well-formed, sometimes with broken quoting or escapes."""
    quote = r.choice("'\"")
    text = escape(body if body is not None else gen_text(r), quote)
    extra = r.choice(["", "", "", "", "\\x4", "\\q", "\\0", "\\777", "\\x41", "\\", "\\\n"])
    end = r.choice([quote, quote, quote, quote, quote, "", "\n"])
    return quote + text + extra + end


DISK_WORDS = ["raw", "qcow2", "cow", "qcow", "vhd", "xvda", "xvdb", "xvdzz", "hda", "ro", "rw", "r", "w",
              "cdrom", "discard", "no-discard", "/img/a.img", "a.img", "", " "]
DISK_KEYS = ["target", "format", "vdev", "access", "devtype", "backendtype", "base", "persistent", "script",
             "specification", "bogus", ""]
PREFIXES = ["", "", "phy:", "raw:", "qcow2:", "tap:aio:", "tap2:tapdisk:", "file:", "vhd:", "weird:"]


def gen_disk_spec(r: random.Random) -> str:
    if r.random() < 0.05:
        return "," * r.randrange(20000) + "/x,raw,xvda"
    items = []
    for _ in range(r.randrange(8)):
        kind = r.choice(["word", "kv", "kv", "prefix", "text"])
        if kind == "word":
            items.append(r.choice(DISK_WORDS))
        elif kind == "kv":
            value = r.choice(DISK_WORDS + ["yes", "no", "maybe"]) if r.random() < 0.6 else gen_text(r)
            items.append(f"{r.choice(DISK_KEYS)}={value}")
        elif kind == "prefix":
            items.append(r.choice(PREFIXES) + r.choice(DISK_WORDS))
        else:
            items.append(gen_text(r))
    return r.choice([",", ", ", " ,", ",,"]).join(items)


def gen_vif_spec(r: random.Random) -> str:
    items = []
    for _ in range(r.randrange(6)):
        kind = r.choice(["mac", "kv", "text"])
        if kind == "mac":
            octets = ("".join(r.choice("0123456789abcdefABCDEFg") for _ in range(r.randrange(1, 4)))
                      for _ in range(r.randrange(1, 8)))
            items.append("mac=" + ":".join(octets))
        elif kind == "kv":
            items.append(f"{r.choice(['bridge', 'ip', 'mac', 'model', '', ' '])}={gen_text(r, 20)}")
        else:
            items.append(gen_text(r))
    return ",".join(items)


def gen_value(r: random.Random, depth: int = 0) -> str:
    roll = r.random()
    if depth < 3 and roll < 0.25:
        items = [gen_value(r, depth + 1) for _ in range(r.randrange(5))]
        return "[" + r.choice([", ", ",\n ", " "]).join(items) + r.choice(["]", "]", ",]", "", "\n]"])
    if roll < 0.45:
        return gen_number(r)
    if roll < 0.75:
        return gen_string(r)
    if roll < 0.9:
        return gen_string(r, gen_disk_spec(r) if r.random() < 0.7 else gen_vif_spec(r))
    return r.choice(["vmlinuz", "(512)", "", "[", "]", ","])


def gen_setting(r: random.Random) -> str:
    roll = r.random()
    if roll < 0.85:
        key = r.choice(KEYS)
    elif roll < 0.95:
        key = r.choice(NEAR_MISS_KEYS)
    else:
        key = r.choice(string.ascii_letters + "_") + "".join(r.choice(WORD_CHARS[:-1]) for _ in range(8))
    op = r.choice([" = ", "=", " = ", " += ", " ", " == "])
    if key in INT_KEYS and r.random() < 0.5:
        number = gen_number(r)
        value = number if r.random() < 0.5 else repr(number)
    elif key == "disk" and r.random() < 0.5:
        value = "[" + ", ".join(gen_string(r, gen_disk_spec(r)) for _ in range(r.randrange(4))) + "]"
    else:
        value = gen_value(r)
    return key + op + value + r.choice(["", "", "", " # note", "#", " # ' [ \x00"])


def gen_config(r: random.Random) -> str:
    lines = [] if r.random() < 0.1 else [f"name = {r.choice(['a', 'web1', 'x.y-z', '42'])!r}"]
    lines += [gen_setting(r) for _ in range(r.randrange(9))]
    r.shuffle(lines)
    return r.choice(["\n", "\n", ";", "\n\n", " ;\n"]).join(lines)


SEEDS = [
    FULL,  # test_xlcfg.py's complete domain
    """\
name = "web"
memory = 128
on_crash = "restart"
disk = [ 'format=raw, vdev=xvda, access=rw, target=/srv/web-root.img' ]
root = "/dev/xvda"
""",
    """\
name='db'; memory=512; vcpus=2
extra = 'console=hvc0'
extra += ' quiet'
disk = ['format=cow, vdev=xvda, base=base.img, persistent=no, target=ov.cow']
disk += ["phy:/dev/vg/db,xvdb,w", "/x.iso,,xvdc,cdrom"]
""",
]


def gen_mutated(r: random.Random) -> str:
    """A real config with a few edits: text inserted, deleted, replaced, spans repeated, brackets opened."""
    text = r.choice(SEEDS)
    for _ in range(r.randrange(1, 7)):
        n = len(text)
        at = r.randrange(n + 1)
        op = r.choice(["insert", "insert", "delete", "replace", "repeat", "brackets"])
        if op == "insert":
            text = text[:at] + r.choice([gen_text, gen_number, gen_setting])(r) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + r.randrange(1, 21):]
        elif op == "replace":
            text = text[:at] + r.choice(HOSTILE) + text[at + 1:]
        elif op == "repeat":
            end = min(n, at + r.randrange(1, 201))
            text = text[:end] + text[at:end] * r.randrange(1, 51) + text[end:]
        else:
            text = text[:at] + "[" * r.randrange(1, 3001) + text[at:]
    return text


def gen_deep(r: random.Random) -> str:
    depth = r.randrange(1, 20001)
    closing = r.choice([depth, depth, depth - 1, depth + 1, 0])
    inner = r.choice(["", "'a,,xvda'", "1", "[", ","])
    opener = "[" + r.choice(["", "\n", " ", ","])
    key = r.choice(["disk", "vif", "memory", "name", "cpus", "bogus"])
    return f"name = 'x'\n{key} = " + opener * depth + inner + "]" * closing + "\n"


def gen_huge(r: random.Random) -> str:
    quote = r.choice(["", "'", '"'])
    return f"name = 'x'\n{r.choice(INT_KEYS + ['name', 'uuid'])} = {quote}{gen_number(r)}{quote}\n"


def gen_overrides(r: random.Random) -> tuple[str, list[str]]:
    pick: list[Callable[[random.Random], str]] = [gen_setting, gen_setting, gen_text, gen_number, gen_deep]
    return r.choice(SEEDS + ["name='x'"]), [r.choice(pick)(r) for _ in range(r.randrange(4))]


def gen_file_bytes(r: random.Random) -> bytes:
    data = r.choice([gen_mutated, gen_config])(r).encode("utf-8", "surrogatepass")
    for _ in range(r.randrange(3)):
        at = r.randrange(len(data) + 1)
        data = data[:at] + bytes(r.randrange(256) for _ in range(r.randrange(1, 5))) + data[at:]
    return data


def seeded(gen: Callable[[random.Random], Any]) -> st.SearchStrategy[Any]:
    return st.randoms(use_true_random=True).map(gen)


hostile_text = st.text(alphabet=st.sampled_from(HOSTILE), max_size=200)
any_text = st.text(max_size=60)         # the whole of Unicode, surrogates included


# ---------------------------------------------------------------------------------------------------------
# The targets: (name, strategy, run) -- run(input) must return or raise only HyperdiscoError

def run_text(text: str) -> None:
    check_domain(expect_own_error(lambda: parse_text(text, "fuzz.cfg")))


def run_text_base_dir(text: str) -> None:
    check_domain(expect_own_error(lambda: parse_text(text, "fuzz.cfg", base_dir="/cfg")))


def run_overrides(args: tuple[str, Sequence[str]]) -> None:
    text, items = args
    check_domain(expect_own_error(lambda: parse_text(text, "fuzz.cfg", items)))


def run_disk(args: tuple[str, bool]) -> None:
    spec, with_base = args
    d = expect_own_error(lambda: parse_disk(spec, "fuzz.cfg:1", Path("/cfg") if with_base else None))
    if d is not None:
        assert isinstance(d, xlcfg.DiskSpec) and d.access in ("ro", "rw") and d.format in xlcfg.DISK_FORMATS
        assert xlcfg.disk_persistent(d) in (True, False)


def run_vif(spec: str) -> None:
    v = expect_own_error(lambda: parse_vif(spec, "fuzz.cfg:1"))
    assert v is None or isinstance(v, xlcfg.VifSpec)


TARGETS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None], int]] = {
    "xlcfg_near_valid": (seeded(gen_config), run_text, 4000),
    "xlcfg_mutated": (seeded(gen_mutated), run_text_base_dir, 4000),
    "xlcfg_random_text": (st.one_of(hostile_text, any_text, hostile_text.map(lambda t: "name = 'x'\n" + t)),
                          run_text, 2000),
    "xlcfg_overrides": (seeded(gen_overrides), run_overrides, 2000),
    "xlcfg_deep_nesting": (seeded(gen_deep), run_text, 1000),
    "xlcfg_huge_numbers": (seeded(gen_huge), run_text, 2000),
    "disk_spec": (st.tuples(st.one_of(seeded(gen_disk_spec), hostile_text, any_text), st.booleans()),
                  run_disk, 4000),
    "vif_spec": (st.one_of(seeded(gen_vif_spec), hostile_text, any_text), run_vif, 2000),
}


def _fuzz_test(name: str) -> Callable[..., None]:
    strategy, run, examples = TARGETS[name]

    @fuzz(examples)
    @given(strategy)
    def test(value: Any) -> None:
        run(value)

    test.__name__ = f"test_{name}"
    return test


test_xlcfg_near_valid = _fuzz_test("xlcfg_near_valid")
test_xlcfg_mutated = _fuzz_test("xlcfg_mutated")
test_xlcfg_random_text = _fuzz_test("xlcfg_random_text")
test_xlcfg_overrides = _fuzz_test("xlcfg_overrides")
test_xlcfg_deep_nesting = _fuzz_test("xlcfg_deep_nesting")
test_xlcfg_huge_numbers = _fuzz_test("xlcfg_huge_numbers")
test_disk_spec = _fuzz_test("disk_spec")
test_vif_spec = _fuzz_test("vif_spec")


FILE_EXAMPLES = 1000


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzcfg")


def run_file(directory: Path, data: bytes) -> None:
    path = directory / "fuzz.cfg"
    path.write_bytes(data)
    check_domain(expect_own_error(lambda: parse_file(path)))


@fuzz(FILE_EXAMPLES)
@given(data=st.one_of(st.binary(max_size=300), seeded(gen_file_bytes)))
def test_xlcfg_file_bytes(cfg_dir: Path, data: bytes) -> None:
    run_file(cfg_dir, data)
