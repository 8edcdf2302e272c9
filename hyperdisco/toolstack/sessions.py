"""Consoles as the user meets them: the terminal attached to a guest, and commands run through it."""

from __future__ import annotations

import os
import re
import secrets
import select
import sys
import termios
import threading
import tty
from collections.abc import Callable
from typing import Any

from ..dom0.handle import GUEST_READY
from ..errors import HyperdiscoError

DETACH = b"\x1d"  # Ctrl-]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
# ECMA-48 DSR 6 ("where is the cursor?"), which a terminal answers with CPR "ESC [ row ; col R". Busybox's
# line editor (libbb/lineedit.c, FEATURE_EDITING_ASK_TERMINAL) asks after each prompt when no input is
# waiting and, when the line ends with the question unanswered, sleeps 20 ms (usleep) before it returns
# it; a report it did not ask for is a key code it ignores.
CURSOR_QUERY = b"\x1b[6n"


class TerminalAttachment:
    """Copies guest output to stdout and stdin to the guest; Ctrl-] detaches."""

    def __init__(self, send: Callable[[bytes], None], on_detach: Callable[[], None]) -> None:
        self.send = send
        self.on_detach = on_detach
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: list[Any] | None = None

    def output(self, data: bytes) -> None:
        os.write(sys.stdout.fileno(), data)

    def start(self) -> None:
        fd = sys.stdin.fileno()
        if os.isatty(fd):
            self._saved = termios.tcgetattr(fd)
            tty.setraw(fd)
        self._thread = threading.Thread(target=self._pump, args=(fd,), name="hd-stdin", daemon=True)
        self._thread.start()

    def _pump(self, fd: int) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([fd], [], [], 0.2)
            if not r:
                continue
            data = os.read(fd, 1024)
            if not data:
                return
            if DETACH in data:
                self.send(data[:data.index(DETACH)])
                self.on_detach()
                return
            self.send(data.replace(b"\n", b"\r") if self._saved is None else data)

    def stop(self) -> None:
        self._stop.set()
        if self._saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None


MAX_TYPED_LINE = 200  # characters per typed line: busybox ash's line editor keeps 1024 bytes of a line
MAX_COMMAND = 64 * 1024


def exec_script(command: str, tag: str, poweroff: bool) -> str:
    """What is typed at the guest's shell for `command`. A short command is typed as it is; a long one is
    first copied into a file in short lines (each a quoted printf), then sourced, so that no typed line
    exceeds the shell's line editor and every byte arrives as given."""
    if len(command) > MAX_COMMAND:
        raise HyperdiscoError(f"hyperdisco: exec: command longer than {MAX_COMMAND} characters")
    if "\0" in command:
        raise HyperdiscoError("hyperdisco: exec: the command contains a NUL character")
    begin = f"printf '%s%s\\n' HDX{tag} B"
    end = f"printf '%s%s %d\\n' HDX{tag} E $s" + ("; sync; poweroff -f" if poweroff else "")
    if len(command) <= MAX_TYPED_LINE and "\n" not in command:
        return f"{begin}; ( {command}\n); s=$?; {end}\n"
    path = f"/tmp/.hdx{tag}"
    lines = [f": > {path}"]
    for i in range(0, len(command), MAX_TYPED_LINE):
        chunk = command[i:i + MAX_TYPED_LINE].replace("'", "'\\''")
        lines.append(f"printf '%s' '{chunk}' >> {path}")
    return "\n".join(lines) + f"\n{begin}; ( . {path}\n); s=$?; rm -f {path}; {end}\n"


class ExecSession:
    """Runs one shell command in the guest through its console and collects output and exit status.

    It waits for the guest's shell prompt, types the command wrapped in markers that the echo of the
    typed line cannot contain (the marker is assembled by printf), then `poweroff` if asked to.
    """

    READY = GUEST_READY

    def __init__(self, command: str, send: Callable[[bytes], object], poweroff: bool = True,
                 booting: bool = True) -> None:
        self.command = command
        self.booting = booting
        self.send = send
        self.poweroff = poweroff
        tag = secrets.token_hex(4)
        self.begin = f"HDX{tag}B".encode()
        self.end = f"HDX{tag}E".encode()
        self._line = exec_script(command, tag, poweroff)
        self.buffer = bytearray()
        self._scan = 0  # where the next search for a marker starts
        self._begin = -1  # where the begin marker was found
        self._asked = 0  # the cursor queries in the buffer up to here are answered
        self._end_re = re.compile(re.escape(self.end) + rb" (\d+)\r?\n")
        self.typed = False
        self.exit_status: int | None = None
        self.output = b""
        self.done = threading.Event()

    def start(self, cursor_asked: bool = False) -> None:
        """For a guest that is already up: ask its shell for a fresh prompt. `cursor_asked`: the prompt
        it sits at asked where the cursor is while nobody was attached (prompt_asked): answered first, so
        that its line editor does not sleep before the empty line."""
        if not self.booting:
            self.send((cursor_report(b"# ") if cursor_asked else b"") + b"\n")

    def _answers(self, start: int) -> bytes:
        """A cursor position report for each DSR that arrived from `start` on (as a terminal answers)."""
        out = b""
        i = self.buffer.find(CURSOR_QUERY, max(start, self._asked))
        while i >= 0:
            line_start = max(self.buffer.rfind(b"\n", 0, i), self.buffer.rfind(b"\r", 0, i)) + 1
            out += cursor_report(bytes(self.buffer[line_start:i]))
            self._asked = i + len(CURSOR_QUERY)
            i = self.buffer.find(CURSOR_QUERY, self._asked)
        return out

    def feed(self, data: bytes) -> None:
        """Console output as it arrives. Each search starts where the last one ended (less a marker's
        length), so a command printing megabytes costs linear time, not quadratic. Cursor queries are
        answered as a terminal would (CURSOR_QUERY)."""
        fresh = max(0, len(self.buffer) - len(CURSOR_QUERY) + 1)  # a query may straddle two chunks
        self.buffer += data
        if not self.typed:
            i = self.buffer.find(self.READY) if self.booting else 0
            if i >= 0 and b"# " in self.buffer[i:]:
                self.typed = True
                self._scan = 0
                self.send(self._answers(i) + self._line.encode())
            elif i < 0 and len(self.buffer) > 1 << 20:  # boot chatter before the prompt: keep its tail only
                del self.buffer[:-4096]
                self._asked = 0
            return
        answers = self._answers(fresh)
        if answers:
            self.send(answers)
        if self.exit_status is None:
            if self._begin < 0:
                b = self.buffer.find(self.begin, self._scan)
                if b < 0 or self.buffer.find(b"\n", b) < 0:
                    self._scan = max(0, len(self.buffer) - len(self.begin) - 2)
                    return
                self._begin = b
                self._scan = b
            b = self._begin
            m = self._end_re.search(self.buffer, max(b, self._scan))
            if m is None:
                self._scan = max(b, len(self.buffer) - len(self.end) - 16)
                return
            start = self.buffer.index(b"\n", b) + 1
            body = bytes(self.buffer[start:m.start()])
            self.output = ANSI.sub(b"", body).replace(b"\r\n", b"\n")
            self.exit_status = int(m.group(1))
            self.done.set()


def prompt_asked(history: bytes) -> bool:
    """Whether a guest's console (its output so far) ends with a cursor query nobody answered: the shell
    waits at a prompt in its line editor, which ignores a report it did not ask for. Also for a console
    that has shown no prompt yet although the guest is up (restored or adopted: the prompt was printed
    before); a report that finds the shell between two commands instead is echoed as text, harmless."""
    return history.endswith(CURSOR_QUERY) or b"# " not in history


def cursor_report(line: bytes) -> bytes:
    """The CPR a terminal sends for DSR 6 with `line` (what it shows of the current line) before the
    cursor: the column after its visible characters, on row 24, the bottom of a 24-line screen, where a
    console that has printed a screenful sits. Not row 1: busybox's read_key (libbb/read_key.c) first
    matches a report against its key sequences, and "ESC [ 1 ; 3" begins Alt-Right's, which makes it read
    past the report and drop what follows; a report whose row starts with 2 is read byte by byte."""
    return b"\x1b[24;%dR" % (len(ANSI.sub(b"", line)) + 1)
