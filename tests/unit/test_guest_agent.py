"""The guest agent protocol client (dom0/guest_agent.py) against a fake qemu-ga on a socket pair:
framing, guest-sync-delimited, stale and garbage replies, oversized replies, floods and silence."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hyperdisco.dom0 import guest_agent as ga
from hyperdisco.dom0.guest_agent import AgentClient, AgentError, AgentTimeout

Handler = Callable[[dict[str, Any]], bytes | None]


class FakeAgent:
    """A qemu-ga stand-in: reads commands (0xFF resets its parser, as qemu-ga's does), answers through
    `handler` (which returns the raw bytes to send, or None for no reply). Files live in `files`."""

    def __init__(self, sock: socket.socket, handler: Handler | None = None) -> None:
        self.sock = sock
        self.handler = handler or self.standard
        self.files: dict[str, bytes] = {"/etc/hostname": b"deb\n"}
        self.handles: dict[int, list[Any]] = {}
        self.commands: list[str] = []
        self.stale = b""  # sent before the first sync reply (an earlier client's leftovers)
        threading.Thread(target=self._run, daemon=True).start()

    def reply(self, value: Any) -> bytes:
        return json.dumps({"return": value}).encode() + b"\n"

    def standard(self, cmd: dict[str, Any]) -> bytes | None:
        name, args = cmd["execute"], cmd.get("arguments", {})
        if name == "guest-sync-delimited":
            out, self.stale = self.stale + b"\xff" + self.reply(args["id"]), b""
            return out
        if name == "guest-ping":
            return self.reply({})
        if name == "guest-exec":
            return self.reply({"pid": 42})
        if name == "guest-exec-status":
            return self.reply({"exited": True, "exitcode": 3, "out-data": base64.b64encode(b"hi\n").decode()})
        if name == "guest-file-open":
            if args["path"] not in self.files and args["mode"] == "r":
                err = {"error": {"class": "GenericError", "desc": "No such file"}}
                return json.dumps(err).encode() + b"\n"
            h = 1000 + len(self.handles)
            self.handles[h] = [args["path"], 0]
            if args["mode"] == "w":
                self.files[args["path"]] = b""
            return self.reply(h)
        if name == "guest-file-read":
            path, pos = self.handles[args["handle"]]
            data = self.files[path][pos:pos + args["count"]]
            self.handles[args["handle"]][1] += len(data)
            eof = self.handles[args["handle"]][1] >= len(self.files[path])
            return self.reply({"count": len(data), "buf-b64": base64.b64encode(data).decode(), "eof": eof})
        if name == "guest-file-write":
            data = base64.b64decode(args["buf-b64"])
            self.files[self.handles[args["handle"]][0]] += data
            return self.reply({"count": len(data), "eof": False})
        if name == "guest-file-close":
            return self.reply({})
        if name == "guest-network-get-interfaces":
            lo = {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}
            return self.reply([{"name": "lo", "ip-addresses": [lo]},
                               {"name": "eth0\x1b[2J", "hardware-address": "00:16:3e:00:00:01",
                                "ip-addresses": [{"ip-address": "10.0.0.5", "prefix": 24}, "junk"]}])
        if name == "guest-shutdown":
            return None
        return json.dumps({"error": {"class": "CommandNotFound", "desc": name}}).encode() + b"\n"

    def _run(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            if b"\xff" in buf:
                buf = buf[buf.rfind(b"\xff") + 1:]
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                self.commands.append(cmd["execute"])
                out = self.handler(cmd)
                if out:
                    self.sock.sendall(out)


def connect(handler: Handler | None = None) -> tuple[AgentClient, FakeAgent, socket.socket]:
    host, guest = socket.socketpair()
    client = AgentClient(host.sendall)
    agent = FakeAgent(guest, handler)

    def pump() -> None:
        while True:
            try:
                data = host.recv(65536)
            except OSError:
                return
            if not data:
                return
            client.feed(data)
    threading.Thread(target=pump, daemon=True).start()
    return client, agent, host


@pytest.fixture
def pair() -> Iterator[tuple[AgentClient, FakeAgent]]:
    client, agent, host = connect()
    yield client, agent
    host.close()
    agent.sock.close()


def test_sync_then_command(pair: tuple[AgentClient, FakeAgent]) -> None:
    client, agent = pair
    assert client.ping()
    assert agent.commands == ["guest-sync-delimited", "guest-ping"]
    assert client.ping()  # synchronised once per session
    assert agent.commands[-1] == "guest-ping" and agent.commands.count("guest-sync-delimited") == 1


def test_stale_replies_before_the_sync_are_dropped(pair: tuple[AgentClient, FakeAgent]) -> None:
    client, agent = pair
    agent.stale = b'{"return": {"pid": 666}}\n{"return": 12345}\n{"retu'
    assert client.exec(["/bin/true"]).exitcode == 3  # not the stale pid 666


def test_exec_file_and_interfaces(pair: tuple[AgentClient, FakeAgent]) -> None:
    client, agent = pair
    r = client.exec(["/bin/sh", "-c", "echo hi; exit 3"])
    assert (r.exitcode, r.out, r.err) == (3, b"hi\n", b"")
    big = bytes(range(256)) * 9000  # > FILE_CHUNK: several writes and reads
    client.write_file("/tmp/x", big)
    assert agent.files["/tmp/x"] == big
    assert client.read_file("/tmp/x", limit=len(big)) == big
    with pytest.raises(AgentError, match="larger than"):
        client.read_file("/tmp/x", limit=1000)
    with pytest.raises(AgentError, match="No such file"):
        client.read_file("/nope", limit=10)
    ifs = client.interfaces()
    assert [i.addresses for i in ifs] == [["127.0.0.1/8"], ["10.0.0.5/24"]]
    assert ifs[1].name == "eth0?[2J" and ifs[1].mac == "00:16:3e:00:00:01"  # no escape sequences


def test_shutdown_expects_no_reply(pair: tuple[AgentClient, FakeAgent]) -> None:
    client, agent = pair
    t0 = time.monotonic()
    client.shutdown()
    assert time.monotonic() - t0 < 2
    deadline = time.monotonic() + 5
    while "guest-shutdown" not in agent.commands and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "guest-shutdown" in agent.commands


def test_silent_agent_times_out() -> None:
    client, agent, host = connect(lambda cmd: None)
    t0 = time.monotonic()
    with pytest.raises(AgentTimeout):
        client.call("guest-ping", timeout=0.5)
    assert time.monotonic() - t0 < 2
    assert not client.ping(timeout=0.3)
    host.close()


def test_garbage_and_wrong_ids_are_skipped_until_the_deadline() -> None:
    def handler(cmd: dict[str, Any]) -> bytes | None:
        return b"\xff{not json\n[[[[[[[[" * 1000 + b"\n" + b'{"return": 7}\n"str"\n'
    client, agent, host = connect(handler)
    with pytest.raises(AgentTimeout):  # never the id we sent
        client.call("guest-ping", timeout=0.5)
    host.close()


def test_deep_nesting_does_not_crash() -> None:
    def handler(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"
        return b"[" * 200000 + b"\n" + b'{"return": "ok"}\n'
    client, agent, host = connect(handler)
    assert client.call("guest-ping", timeout=5) == "ok"
    host.close()


def test_oversized_reply_is_an_error_then_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ga, "MAX_LINE", 4096)
    monkeypatch.setattr(ga, "MAX_BUFFER", 8192)
    huge = {"n": 0}

    def handler(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"
        huge["n"] += 1
        if huge["n"] == 1:
            return b'{"return": "' + b"A" * 100000 + b'"}\n'
        return b'{"return": "small"}\n'
    client, agent, host = connect(handler)
    with pytest.raises(AgentError):
        client.call("guest-ping", timeout=3)
    time.sleep(0.2)  # the rest of the flood arrives
    assert client.call("guest-ping", timeout=3) == "small"  # resynchronised: the flood is gone
    assert agent.commands.count("guest-sync-delimited") == 2
    host.close()


def test_hostile_exec_status() -> None:
    def handler(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"
        if cmd["execute"] == "guest-exec":
            return b'{"return": {"pid": true}}\n'
        return b'{"return": {}}\n'
    client, agent, host = connect(handler)
    with pytest.raises(AgentError, match="no pid"):
        client.exec(["/bin/true"], timeout=3)
    host.close()


def test_exec_that_never_exits_times_out() -> None:
    def handler(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"
        if cmd["execute"] == "guest-exec":
            return b'{"return": {"pid": 5}}\n'
        return b'{"return": {"exited": false}}\n'
    client, agent, host = connect(handler)
    with pytest.raises(AgentTimeout, match="still running"):
        client.exec(["/bin/sleep", "100"], timeout=0.6)
    host.close()


def test_bad_base64_is_an_error() -> None:
    def handler(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"
        if cmd["execute"] == "guest-exec":
            return b'{"return": {"pid": 5}}\n'
        return b'{"return": {"exited": true, "exitcode": 0, "out-data": "!!!"}}\n'
    client, agent, host = connect(handler)
    with pytest.raises(AgentError, match="base64"):
        client.exec(["/bin/true"], timeout=3)
    host.close()
