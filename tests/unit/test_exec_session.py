"""The console exec session answers the guest's cursor queries as a terminal does (toolstack/sessions.py):
busybox's line editor asks "ESC [ 6 n" after each prompt and sleeps 20 ms before it runs a line whose
question went unanswered. Fed with console output as a busybox shell prints it."""

from __future__ import annotations

import re

from hyperdisco.toolstack.sessions import CURSOR_QUERY, ExecSession, cursor_report, prompt_asked

PROMPT = b"# " + CURSOR_QUERY


def typed_session(command: str = "true") -> tuple[ExecSession, list[bytes]]:
    sent: list[bytes] = []
    s = ExecSession(command, sent.append, poweroff=False, booting=False)
    return s, sent


def test_the_prompts_question_is_answered_before_the_line() -> None:
    s, sent = typed_session()
    s.start()
    assert sent == [b"\n"]
    s.feed(b"\r\n" + PROMPT)
    assert len(sent) == 2
    report, line = sent[1].split(b"R", 1)
    assert report + b"R" == b"\x1b[24;3R"  # the column after "# "
    assert line.startswith(b"printf ")


def test_a_prompt_without_a_question_gets_the_line_alone() -> None:
    s, sent = typed_session()
    s.start()
    s.feed(b"\r\n# ")
    assert sent[1].startswith(b"printf ")


def test_a_question_left_at_the_prompt_is_answered_with_the_newline() -> None:
    s, sent = typed_session()
    s.start(cursor_asked=True)
    assert sent == [b"\x1b[24;3R\n"]


def test_questions_while_the_command_runs_are_answered_once_each_even_split() -> None:
    s, sent = typed_session()
    s.start()
    s.feed(b"\r\n# ")
    s.feed(b"> \x1b[")  # a query cut between two chunks
    s.feed(b"6nmore output")
    assert sent[2:] == [b"\x1b[24;5R"]  # after "# > " on that line
    s.feed(b" no query here")
    assert len(sent) == 3


def test_the_prompt_after_the_end_marker_is_answered_and_the_result_taken() -> None:
    s, sent = typed_session("echo hi")
    s.start()
    s.feed(b"\r\n# ")
    tag = re.search(rb"HDX([0-9a-f]+) B", sent[1])
    assert tag is not None
    t = tag.group(1)
    s.feed(b"echo of the line\r\nHDX" + t + b"B\r\nhi\r\nHDX" + t + b"E 0\r\n" + PROMPT)
    assert s.done.is_set() and s.exit_status == 0 and s.output == b"hi\n"
    assert sent[-1] == b"\x1b[24;3R"


def test_a_booting_guest_gets_the_answer_after_its_banner() -> None:
    sent: list[bytes] = []
    s = ExecSession("true", sent.append, poweroff=True, booting=True)
    s.start()
    assert sent == []
    s.feed(b"boot\r\nhyperdisco-guest: up\r\n")
    s.feed(PROMPT)
    assert sent[0].startswith(b"\x1b[24;3Rprintf ")


def test_prompt_asked_reads_the_console_tail() -> None:
    assert prompt_asked(b"boot\r\n# " + CURSOR_QUERY)
    assert not prompt_asked(b"boot\r\n# ")
    assert not prompt_asked(b"boot\r\n# \x1b[6nls\r\n")
    assert prompt_asked(b"[    1.45] Restarting tasks ... done.\r\n")  # restored: no prompt printed yet


def test_the_report_never_begins_like_a_key_sequence() -> None:
    # "ESC [ 1 ; 3 C" is Alt-Right to busybox: a report on row 1 would be matched against it and the bytes
    # after it dropped; the reported row never starts with 1
    for line in (b"", b"# ", b"\x1b[1m# \x1b[0m", b"x" * 200):
        r = cursor_report(line)
        assert re.fullmatch(rb"\x1b\[24;\d+R", r)
    assert cursor_report(b"\x1b[1m# \x1b[0m") == b"\x1b[24;3R"
