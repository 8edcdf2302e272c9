"""GRUB 2's grub.cfg, read as far as a bootloader like Xen's pygrub needs: the menu and its default.

The file comes from a guest's disk and is hostile: it is parsed, never run. The lexer follows GRUB's
script syntax (words split on blanks; ``'...'`` literal; ``"..."`` with ``$var``/``${var}`` expansion and
``\\`` escapes; ``#`` starts a comment at the start of a word; ``;`` and newlines end a command, a
backslash-newline continues it). Of the commands only these mean something here:

- ``menuentry TITLE [--id ID] [--class C]... {`` ... ``}`` and ``submenu`` (the same, holding entries);
  ``function NAME {`` ... ``}`` bodies are skipped;
- ``set NAME=VALUE`` and ``NAME=VALUE`` outside entries (in order, whatever ``if`` they sit in: the last
  one wins, which is what grub-mkconfig's ``next_entry``/``saved_entry`` logic gives when no one-shot
  ``next_entry`` is pending); the variables ``load_env`` would read from grubenv are set first, so
  ``set default="${saved_entry}"`` (GRUB_DEFAULT=saved) selects the saved entry;
- in an entry, its last ``linux``/``linux16``/``linuxefi`` line (the kernel and its arguments) and its
  last ``initrd``/``initrd16``/``initrdefi`` line (one or more initramfs files, loaded one after another).

``$menuentry_id_option`` (grub-mkconfig's ``--id`` when GRUB supports ids) is always ``--id``. The
default is chosen as GRUB does: ``default`` is a number (counting entries and submenus at the top level),
an entry's title or id, or such a path through submenus joined by ``>`` ("1>2", "Advanced options for
Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-18-cloud-amd64", ids as grub-set-default writes
them); one that names no entry means entry 0, as in GRUB; a submenu chosen without a path into it means
its first entry.

Every problem is a :class:`GrubError` with one line. Lists of entries and variables grow at most
linearly with the file (which the caller bounds, 1 MiB for grub.cfg), blocks nest at most MAX_DEPTH deep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from hyperdisco.errors import ImageError

MAX_DEPTH = 16  # nested {...} blocks (grub-mkconfig writes 2: a submenu's entries)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_SPECIAL_VARS = frozenset("?#*@0123456789")
LINUX_COMMANDS = frozenset({"linux", "linux16", "linuxefi"})
INITRD_COMMANDS = frozenset({"initrd", "initrd16", "initrdefi"})
_ARG_OPTIONS = frozenset({"--class", "--users", "--hotkey", "--id", "--source"})  # each takes a value


class GrubError(ImageError):
    """grub.cfg cannot be used: malformed, or its default entry boots nothing."""


@dataclass(frozen=True)
class _Var:
    name: str
    quoted: bool = False  # inside "...": expands to one piece of its word, not split into words


_Part = str | _Var


@dataclass
class _Word:
    parts: list[_Part]
    quoted: bool = False  # any part of it was quoted: it stays a word even when it expands to nothing

    def literal(self) -> str | None:
        """The word's text when it has no variables, else None."""
        if all(isinstance(p, str) for p in self.parts):
            return "".join(p for p in self.parts if isinstance(p, str))
        return None

    def expand(self, env: dict[str, str]) -> str:
        """The word's value as one string (as an assignment takes it)."""
        return "".join(p if isinstance(p, str) else env.get(p.name, "") for p in self.parts)

    def fields(self, env: dict[str, str]) -> list[str]:
        """The words it becomes: unquoted variables are split at blanks, as GRUB (and a shell) does; an
        unquoted word that expands to nothing disappears."""
        out: list[str] = [""]
        for p in self.parts:
            if isinstance(p, str) or p.quoted:
                out[-1] += p if isinstance(p, str) else env.get(p.name, "")
                continue
            value = env.get(p.name, "")
            pieces = value.split()
            if not pieces:
                if value and out[-1]:
                    out.append("")
                continue
            if value[0].isspace() and out[-1]:
                out.append("")
            out[-1] += pieces[0]
            out.extend(pieces[1:])
            if value[-1].isspace():
                out.append("")
        kept = [f for f in out if f]
        return kept if kept or not self.quoted else [""]


_Command = list[_Word]


@dataclass
class MenuEntry:
    title: str
    id: str | None
    commands: list[_Command] = field(default_factory=list)


@dataclass
class Submenu:
    title: str
    id: str | None
    items: list[MenuEntry | Submenu] = field(default_factory=list)


@dataclass
class GrubConfig:
    items: list[MenuEntry | Submenu]
    env: dict[str, str]  # the variables as they stand at the end of the file (default among them)

    @property
    def default(self) -> str:
        return self.env.get("default", "")


@dataclass(frozen=True)
class BootEntry:
    """What an entry boots: paths as the entry names them (inside the guest's filesystem)."""

    title: str
    kernel: str
    args: str
    initrds: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------
# Lexer


def _lex(text: str) -> list[_Command]:
    """The commands of a GRUB script, each a list of words (``{`` and ``}`` are words of their own)."""
    commands: list[_Command] = []
    words: list[_Word] = []
    parts: list[_Part] = []
    buf: list[str] = []
    quoted = False
    in_word = False
    i, n = 0, len(text)

    def flush_buf() -> None:
        if buf:
            parts.append("".join(buf))
            buf.clear()

    def end_word() -> None:
        nonlocal in_word, quoted
        flush_buf()
        if in_word:
            words.append(_Word(list(parts), quoted))
        parts.clear()
        in_word = False
        quoted = False

    def end_command() -> None:
        end_word()
        if words:
            commands.append(list(words))
            words.clear()

    def variable(pos: int) -> tuple[_Var | None, int]:
        """A ``$name``/``${name}`` reference at text[pos] == '$': (variable or None, position after it)."""
        if pos + 1 < n and text[pos + 1] == "{":
            end = text.find("}", pos + 2)
            if end < 0:
                return None, pos + 1
            return _Var(text[pos + 2:end]), end + 1
        m = _NAME_RE.match(text, pos + 1)
        if m is not None:
            return _Var(m.group(0)), m.end()
        if pos + 1 < n and text[pos + 1] in _SPECIAL_VARS:
            return _Var(text[pos + 1]), pos + 2
        return None, pos + 1

    while i < n:
        c = text[i]
        if c in " \t\r":
            end_word()
            i += 1
        elif c == "\n" or c == ";":
            end_command()
            i += 1
        elif c == "#" and not in_word:
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2
                continue
            in_word = True
            if i + 1 < n:
                buf.append(text[i + 1])
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise GrubError("unterminated ' string")
            in_word = quoted = True
            buf.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            in_word = quoted = True
            i += 1
            while True:
                if i >= n:
                    raise GrubError('unterminated " string')
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$\n':
                    if text[i + 1] != "\n":
                        buf.append(text[i + 1])
                    i += 2
                elif c == "$":
                    var, i = variable(i)
                    if var is None:
                        buf.append("$")
                    else:
                        flush_buf()
                        parts.append(_Var(var.name, quoted=True))
                else:
                    buf.append(c)
                    i += 1
        elif c == "$":
            in_word = True
            var, i = variable(i)
            if var is None:
                buf.append("$")
            else:
                flush_buf()
                parts.append(var)
        else:
            in_word = True
            buf.append(c)
            i += 1
    end_command()
    return commands


def _is(word: _Word, text: str) -> bool:
    return not word.quoted and word.literal() == text


# ---------------------------------------------------------------------------------------------------------
# Parser


def _expand_words(words: list[_Word], env: dict[str, str]) -> list[str]:
    """Words after expansion; an unquoted word that expands to nothing disappears, as in a shell."""
    out: list[str] = []
    for w in words:
        out.extend(w.fields(env))
    return out


def _segments(commands: list[_Command]) -> Iterator[_Command]:
    """Commands split at their braces: ``menuentry x { linux /k }`` is ``menuentry x {``, ``linux /k``
    and ``}``."""
    for words in commands:
        current: _Command = []
        for w in words:
            if _is(w, "{"):
                current.append(w)
                yield current
                current = []
            elif _is(w, "}"):
                if current:
                    yield current
                yield [w]
                current = []
            else:
                current.append(w)
        if current:
            yield current


def _entry_header(words: list[_Word], env: dict[str, str], kind: str) -> tuple[str, str | None]:
    """(title, id) of ``menuentry``/``submenu`` from the words between the command and its ``{``."""
    env = dict(env, menuentry_id_option="--id")
    args = _expand_words(words, env)
    title: str | None = None
    ident: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            if name in _ARG_OPTIONS and not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            if name == "--id":
                ident = value
        elif title is None:
            title = a
        i += 1
    if title is None:
        raise GrubError(f"{kind} without a title")
    return title, ident


def parse_grub_cfg(text: str, grubenv: dict[str, str] | None = None) -> GrubConfig:
    """The menu of a grub.cfg; ``grubenv`` holds the variables ``load_env`` would set (saved_entry...)."""
    env: dict[str, str] = dict(grubenv or {})
    top: list[MenuEntry | Submenu] = []
    # the open blocks, innermost last: a submenu's item list, an entry's command list, or None (skipped)
    stack: list[Submenu | MenuEntry | None] = []

    def items() -> list[MenuEntry | Submenu] | None:
        if not stack:
            return top
        inner = stack[-1]
        return inner.items if isinstance(inner, Submenu) else None

    for words in _segments(_lex(text)):
        if len(words) == 1 and _is(words[0], "}"):
            if not stack:
                raise GrubError("'}' without a matching '{'")
            stack.pop()
        else:
            head = words[0].literal() if not words[0].quoted else None
            opens = _is(words[-1], "{")
            if head in ("menuentry", "submenu") and opens:
                if len(stack) >= MAX_DEPTH:
                    raise GrubError(f"blocks nest more than {MAX_DEPTH} deep")
                title, ident = _entry_header(words[1:-1], env, head)
                node: MenuEntry | Submenu = (MenuEntry(title, ident) if head == "menuentry"
                                             else Submenu(title, ident))
                where = items()
                if where is not None:  # an entry inside an entry or a function is not in any menu
                    where.append(node)
                    stack.append(node)
                else:
                    stack.append(None)
            elif opens:  # function NAME {, or any other block: its body is not part of the menu
                if len(stack) >= MAX_DEPTH:
                    raise GrubError(f"blocks nest more than {MAX_DEPTH} deep")
                stack.append(None)
            elif stack and isinstance(stack[-1], MenuEntry):
                stack[-1].commands.append(words)
            elif not stack:
                _assign(words, env)
    if stack:
        raise GrubError("a '{' block is not closed at the end of the file")
    return GrubConfig(top, env)


def _assign(words: list[_Word], env: dict[str, str]) -> None:
    """``set NAME=VALUE`` or ``NAME=VALUE`` at the top level; ``menuentry_id_option`` stays --id."""
    head = words[0]
    if _is(head, "set") and len(words) >= 2:
        target = words[1]
    elif not head.quoted and head.parts and isinstance(head.parts[0], str) and "=" in head.parts[0]:
        target = head
    else:
        return
    first = target.parts[0] if target.parts else ""
    if not isinstance(first, str):
        return
    m = _ASSIGN_RE.fullmatch(first)
    if m is None:
        return
    value = _Word([m.group(2), *target.parts[1:]]).expand(env)
    env[m.group(1)] = value


# ---------------------------------------------------------------------------------------------------------
# Choosing and reading an entry


def _find(items: list[MenuEntry | Submenu], key: str) -> MenuEntry | Submenu | None:
    if key.isdigit() and key.isascii():
        index = int(key)
        return items[index] if index < len(items) else None
    for item in items:
        if item.id == key:
            return item
    for item in items:
        if item.title == key:
            return item
    return None


def _first_entry(item: MenuEntry | Submenu) -> MenuEntry | None:
    depth = 0
    while isinstance(item, Submenu):
        if not item.items or depth > MAX_DEPTH:
            return None
        item = item.items[0]
        depth += 1
    return item


def select_entry(config: GrubConfig, choice: str | None = None) -> MenuEntry:
    """The entry ``choice`` names (else grub.cfg's ``default``), as GRUB picks it; entry 0 when neither
    names one. GrubError when the menu has no entry at all."""
    wanted = config.default if choice is None else choice
    chosen: MenuEntry | None = None
    if wanted.strip():
        items: list[MenuEntry | Submenu] = config.items
        node: MenuEntry | Submenu | None = None
        for key in wanted.split(">"):
            node = _find(items, key.strip())
            if node is None:
                break
            if isinstance(node, Submenu):
                items = node.items
            else:
                break
        if node is not None:
            chosen = _first_entry(node)
    if chosen is None:
        chosen = _first_entry(config.items[0]) if config.items else None
    if chosen is None:
        raise GrubError("grub.cfg has no menu entry")
    return chosen


def _strip_device(path: str) -> str:
    """``(hd0,msdos1)/boot/x`` or ``($root)/boot/x`` -> ``/boot/x``: the file is read on the filesystem
    the configuration came from."""
    if path.startswith("("):
        end = path.find(")")
        if end >= 0:
            return path[end + 1:] or "/"
    return path


def _kernel_arg(word: str) -> str:
    """A kernel argument as the kernel's command line needs it (one holding blanks quoted)."""
    if any(c in word for c in " \t") and '"' not in word:
        name, eq, value = word.partition("=")
        return f'{name}="{value}"' if eq else f'"{word}"'
    return word


def boot_entry(config: GrubConfig, entry: MenuEntry) -> BootEntry:
    """The kernel, arguments and initramfs files of ``entry`` (its own ``set`` commands apply to it)."""
    env = dict(config.env)
    kernel: list[str] | None = None
    initrds: list[str] = []
    for words in entry.commands:
        head = words[0].literal() if not words[0].quoted else None
        if head in LINUX_COMMANDS or head in INITRD_COMMANDS:
            args = _expand_words(words[1:], env)
            if head in LINUX_COMMANDS:
                kernel = args
            else:
                initrds = [_strip_device(a) for a in args]
        else:
            _assign(words, env)
    if not kernel:
        raise GrubError(f"menu entry {entry.title[:80]!r} has no linux command")
    return BootEntry(title=entry.title, kernel=_strip_device(kernel[0]),
                     args=" ".join(_kernel_arg(a) for a in kernel[1:]), initrds=tuple(initrds))


def parse_grubenv(data: bytes) -> dict[str, str]:
    """GRUB's environment block (``# GRUB Environment Block``, then ``NAME=VALUE`` lines, ``#`` padding)."""
    env: dict[str, str] = {}
    for raw in data.decode("utf-8", errors="replace").splitlines():
        if raw.startswith("#"):
            continue
        m = _ASSIGN_RE.fullmatch(raw)
        if m is not None:
            env[m.group(1)] = m.group(2).replace("\\n", "\n").replace("\\\\", "\\")
    return env
