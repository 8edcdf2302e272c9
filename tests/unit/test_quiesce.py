"""The freeze around save (toolstack/quiesce.py) against a scripted qemu-ga on a socket pair (the fake of
test_guest_agent.py): freeze and thaw as qemu-ga answers them, an agent that does not answer, a freeze
that fails or times out, a restored domain's thaw once its agent answers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from test_guest_agent import FakeAgent, connect

from hyperdisco.toolstack import quiesce


class FreezingAgent:
    """qemu-ga's freeze state: guest-fsfreeze-freeze freezes `filesystems` (or fails with `freeze_error`,
    or never answers with `freeze_silent`), thaw thaws them and returns how many were frozen (0 when
    none were, as qemu-ga's FITHAW loop does); while frozen only the commands qemu-ga allows answer."""

    ALLOWED_FROZEN = {"guest-ping", "guest-sync-delimited", "guest-fsfreeze-thaw", "guest-fsfreeze-status"}

    def __init__(self, filesystems: int = 2) -> None:
        self.filesystems = filesystems
        self.frozen = 0
        self.freeze_error = ""
        self.freeze_silent = False
        self.thaw_silent = False
        self.answering = True
        self.fake: FakeAgent | None = None

    def __call__(self, cmd: dict[str, Any]) -> bytes | None:
        assert self.fake is not None
        name = cmd["execute"]
        if not self.answering:
            return None
        if self.frozen and name not in self.ALLOWED_FROZEN:
            return json.dumps({"error": {"class": "GenericError",
                                         "desc": "Command not allowed while frozen"}}).encode() + b"\n"
        if name == "guest-fsfreeze-freeze":
            if self.freeze_silent:
                self.frozen = self.filesystems  # it freezes, but the reply never comes in time
                return None
            if self.freeze_error:
                err = {"error": {"class": "GenericError", "desc": self.freeze_error}}
                return json.dumps(err).encode() + b"\n"
            self.frozen = self.filesystems
            return self.fake.reply(self.frozen)
        if name == "guest-fsfreeze-thaw":
            if self.thaw_silent:
                return None
            n, self.frozen = self.frozen, 0
            return self.fake.reply(n)
        return self.fake.standard(cmd)


def agent(script: FreezingAgent) -> Any:
    client, fake, host = connect(script)
    script.fake = fake
    return client, fake, host


def test_no_channel_no_freeze_and_nothing_said() -> None:
    f = quiesce.freeze(None)
    assert (f.frozen, f.count, f.report) == (False, 0, "")


def test_freeze_then_thaw() -> None:
    script = FreezingAgent(filesystems=2)
    client, fake, host = agent(script)
    f = quiesce.freeze(client)
    assert (f.frozen, f.count) == (True, 2) and script.frozen == 2
    assert f.report == "froze 2 filesystems through the guest agent"
    assert fake.commands[-2:] == ["guest-ping", "guest-fsfreeze-freeze"]
    assert quiesce.thaw(client) == "thawed 2 filesystems"
    assert script.frozen == 0
    host.close()


def test_silent_agent_is_not_frozen_and_costs_only_the_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quiesce, "PING_S", 0.5)
    script = FreezingAgent()
    script.answering = False  # the busybox guest with the channel but no qemu-ga
    client, fake, host = agent(script)
    t0 = time.monotonic()
    f = quiesce.freeze(client)
    assert time.monotonic() - t0 < 3
    assert not f.frozen and "did not answer" in f.report and "saved without a freeze" in f.report
    assert "guest-fsfreeze-freeze" not in fake.commands
    host.close()


def test_failed_freeze_goes_on_without_it() -> None:
    script = FreezingAgent()
    script.freeze_error = "failed to freeze /: Device or resource busy"
    client, fake, host = agent(script)
    f = quiesce.freeze(client)
    assert not f.frozen and script.frozen == 0
    assert f.report == ("freeze failed (guest-fsfreeze-freeze: failed to freeze /: Device or resource busy); "
                        "saved without a freeze")
    assert "\n" not in f.report
    host.close()


def test_freeze_that_times_out_is_thawed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quiesce, "FREEZE_S", 0.5)
    script = FreezingAgent()
    script.freeze_silent = True
    client, fake, host = agent(script)
    f = quiesce.freeze(client)
    assert not f.frozen and script.frozen == 0 and "freeze failed" in f.report
    assert fake.commands[-1] == "guest-fsfreeze-thaw"
    host.close()


def test_freeze_and_thaw_both_time_out_counts_as_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quiesce, "FREEZE_S", 0.3)
    monkeypatch.setattr(quiesce, "THAW_S", 0.3)
    script = FreezingAgent()
    script.freeze_silent = script.thaw_silent = True
    client, fake, host = agent(script)
    f = quiesce.freeze(client)
    assert f.frozen and script.frozen  # the restored domain's side will thaw it
    assert "thaw after it too" in f.report
    host.close()


def test_thaw_of_a_restored_domain_waits_for_its_agent() -> None:
    script = FreezingAgent()
    script.frozen = 1  # the save file's memory: frozen
    script.answering = False  # still resuming
    client, fake, host = agent(script)
    logged: list[str] = []
    t = quiesce.thaw_when_resumed(lambda: client, lambda: False, logged.append, "deb-1", wait=30)
    time.sleep(1.0)
    assert script.frozen == 1 and not logged
    script.answering = True
    t.join(30)
    assert not t.is_alive()
    assert script.frozen == 0 and logged == ["deb-1: restored frozen: thawed 1 filesystem"]
    host.close()


def test_thaw_gives_up_when_the_domain_goes() -> None:
    script = FreezingAgent()
    script.answering = False
    client, fake, host = agent(script)
    gone = threading.Event()
    logged: list[str] = []
    t = quiesce.thaw_when_resumed(lambda: client, gone.is_set, logged.append, "deb", wait=60)
    gone.set()
    t.join(10)
    assert not t.is_alive() and logged == []
    host.close()


def test_thaw_without_an_agent_is_logged() -> None:
    logged: list[str] = []
    quiesce.thaw_when_resumed(lambda: None, lambda: False, logged.append, "web").join(5)
    assert logged == ["web: restored frozen but has no guest agent channel: not thawed"]
    assert quiesce.thaw(None) == "not thawed: no guest agent channel"


def test_suspend_refused_only_when_no_progress_and_the_agent_answers() -> None:
    script = FreezingAgent()
    client, fake, host = agent(script)
    # the guest's suspend was abandoned: its tasks (qemu-ga) run again
    assert quiesce.suspend_refused(client, lambda: False, timeout=10, first=0.5)
    # the file was written meanwhile: never refused
    assert not quiesce.suspend_refused(client, lambda: True, timeout=10, first=0.5)
    # still suspending (its freezer holds qemu-ga): not refused, until the timeout
    script.answering = False
    t0 = time.monotonic()
    assert not quiesce.suspend_refused(client, lambda: False, timeout=2, first=0.5, every=0.5)
    assert time.monotonic() - t0 < 8
    host.close()
