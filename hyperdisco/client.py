"""A typed Python client of the daemon's control API (docs/control-api.md), in libvirt-python's shape: a
`Connection` to a daemon's socket, `Domain` objects for its domains.

    from hyperdisco.client import Connection

    with Connection() as conn:                        # $HYPERDISCO_SOCKET or /run/hyperdisco/control.sock
        web = conn.create_file("web.cfg")             # or conn.create({"name": "web", "memory": 128})
        print(web.exec("uname -r").text)
        for dom in conn.domains():
            print(dom.name, dom.domid, dom.info().state)
        conn.xenstore.write("/tool/web/ready", "1")
        web.shutdown(wait=True)

Every refusal raises `Error` (a HyperdiscoError: one line; `errno` is Xen's error name when a xenstore
request was refused). A Connection is one socket, answered in order; it may be shared between threads
(calls are serialised). Streams (`Domain.console()`, `Connection.watch()`, `Connection.events()`) open a
connection of their own.
"""

from __future__ import annotations

import base64
import builtins
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .toolstack.protocol import Client, encode
from .toolstack.protocol import DaemonError as Error

__all__ = ["Connection", "Console", "Domain", "DomainEvent", "DomainInfo", "Error", "EventStream",
           "ExecResult", "Xenstore"]


@dataclass(frozen=True)
class DomainInfo:
    """A row of `list`: xl's columns and what the daemon knows of the domain's end."""
    name: str
    domid: int
    mem: int  # MiB
    vcpus: int
    state: str  # xl's six letters: r b p s c d
    time: float  # CPU seconds
    outcome: str | None = None  # why it stopped (poweroff, reboot, crash...) if it did
    restarts: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DomainInfo:
        return cls(name=str(row["name"]), domid=int(row["domid"]), mem=int(row["mem"]),
                   vcpus=int(row["vcpus"]), state=str(row["state"]), time=float(row["time"]),
                   outcome=row.get("outcome"), restarts=int(row.get("restarts") or 0))


@dataclass(frozen=True)
class DomainEvent:
    """A domain state change (the `events` stream): `event` is created, paused, unpaused, shutdown,
    crashed, destroyed or restarted; `outcome` why it stopped (poweroff, reboot, crash, destroyed...) for
    shutdown, crashed, destroyed and restarted, else None; `time` in seconds since the Unix epoch."""
    domain: str
    domid: int
    event: str
    outcome: str | None
    time: float

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DomainEvent:
        outcome = obj.get("outcome")
        return cls(domain=str(obj["domain"]), domid=int(obj["domid"]), event=str(obj["event"]),
                   outcome=None if outcome is None else str(outcome), time=float(obj["time"]))


@dataclass(frozen=True)
class ExecResult:
    status: int
    output: bytes

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class Connection:
    """A connection to a hyperdisco daemon (libvirt's virConnect)."""

    def __init__(self, socket_path: str | None = None) -> None:
        self._client = Client(socket_path)
        self.socket_path = str(self._client.path)
        self._lock = threading.Lock()
        self.xenstore = Xenstore(self)

    # -- the raw protocol ----------------------------------------------------------------------------
    def call(self, op: str, **args: Any) -> Any:
        """One request (docs/control-api.md) and its result; Error if refused."""
        with self._lock:
            return self._client.call(op, **args)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- domains ---------------------------------------------------------------------------------------
    def domains(self, include_dom0: bool = False) -> builtins.list[Domain]:
        """The domains, by ID (domain 0 only when asked)."""
        rows = self.list()
        return [Domain(self, r.domid, r.name) for r in rows if include_dom0 or r.domid != 0]

    def list(self) -> builtins.list[DomainInfo]:
        """`xl list`'s rows, Domain-0 first."""
        return [DomainInfo.from_row(r) for r in self.call("list")]

    def lookup(self, dom: str | int) -> Domain:
        """A domain by name or ID (Error if there is none)."""
        domid = int(self.call("domid", dom=dom))
        return Domain(self, domid, str(self.call("domname", dom=domid)))

    def create(self, config: Mapping[str, Any]) -> Domain:
        """A domain from a parsed xl.cfg: {name, memory?, vcpus?, kernel?, ramdisk?, cmdline?,
        on_poweroff?, on_reboot?, on_crash?, disks?, vifs?} (docs/control-api.md, `create`)."""
        res = self.call("create", config=dict(config))
        return Domain(self, int(res["domid"]), str(res["name"]))

    def create_file(self, path: str | Path, overrides: Sequence[str] = ()) -> Domain:
        """A domain from an xl.cfg file, with `KEY=VALUE` overrides as `xl create` takes them."""
        return self.create(config_of_file(path, overrides))

    def info(self) -> dict[str, Any]:
        """Host and hypervisor facts (`xl info`)."""
        return dict(self.call("info"))

    def dmesg(self, clear: bool = False) -> builtins.list[str]:
        return list(self.call("dmesg", clear=clear))

    def watch(self, *paths: str) -> Iterator[tuple[str, str]]:
        """xenstore watch events as (path, watched path), on a connection of its own, until the caller
        stops iterating (each watch fires once when set, as xenstored's do)."""
        c = Client(self.socket_path)
        try:
            c.sock.sendall(encode({"op": "watch", "path": list(paths)}))
            _check(c.file.readline())
            for line in c.file:
                event = json.loads(line)
                yield str(event["path"]), str(event.get("watch", ""))
        finally:
            c.close()

    def events(self, timeout: float | None = None) -> EventStream:
        """Domain state changes from now on, as DomainEvents, on a connection of its own (subscribed
        when this returns): iterate it, close it (or use it as a context manager) to stop. With
        `timeout`, waiting longer than that for an event raises TimeoutError (then close the stream)."""
        return EventStream(self.socket_path, timeout)


class EventStream:
    """The `events` stream: an iterator of DomainEvent until closed (or the daemon goes away)."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self._c = Client(socket_path)
        try:
            self._c.sock.sendall(encode({"op": "events"}))
            _check(self._c.file.readline())
            self._c.sock.settimeout(timeout)
        except BaseException:
            self._c.close()
            raise

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> DomainEvent:
        try:
            line = self._c.file.readline()
        except TimeoutError:
            raise TimeoutError("hyperdisco: no domain event in time") from None
        if not line:
            raise StopIteration
        return DomainEvent.from_json(json.loads(line))

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Domain:
    """One domain (libvirt's virDomain): its ID and name, and what can be done to it."""

    def __init__(self, conn: Connection, domid: int, name: str) -> None:
        self.conn = conn
        self.domid = domid
        self.name = name

    def __repr__(self) -> str:
        return f"Domain({self.name!r}, domid={self.domid})"

    def info(self) -> DomainInfo:
        for row in self.conn.list():
            if row.domid == self.domid:
                return row
        raise Error(f"hyperdisco: domain {self.domid} ({self.name}) is gone")

    def pause(self) -> None:
        self.conn.call("pause", dom=self.domid)

    def unpause(self) -> None:
        self.conn.call("unpause", dom=self.domid)

    def mem_set(self, mib: int) -> None:
        """xl mem-set: the balloon target (the guest gives memory back or takes it again)."""
        self.conn.call("mem_set", dom=self.domid, memory=mib)

    def mem_max(self, mib: int) -> None:
        """xl mem-max: the most memory the domain may hold."""
        self.conn.call("mem_max", dom=self.domid, memory=mib)

    def destroy(self) -> None:
        self.conn.call("destroy", dom=self.domid)

    def shutdown(self, reason: str = "poweroff", wait: bool = False, timeout: float = 120.0) -> bool:
        """Ask the guest to power off (or reboot, halt, suspend) through control/shutdown; with `wait`,
        True once it is gone (False if it was not within `timeout` seconds)."""
        self.conn.call("shutdown", dom=self.domid, reason=reason)
        return self.wait(timeout) if wait else True

    def reboot(self) -> None:
        self.conn.call("shutdown", dom=self.domid, reason="reboot")

    def wait(self, timeout: float = 60.0) -> bool:
        """True once the domain is gone."""
        return bool(self.conn.call("wait", dom=self.domid, timeout=timeout))

    def exec(self, command: str, timeout: float = 120.0) -> ExecResult:
        """Run a shell command through the guest agent when it answers, else the domain's console: its
        exit status and output."""
        res = self.conn.call("exec", dom=self.domid, command=command, timeout=timeout)
        return ExecResult(int(res["status"]), base64.b64decode(res["output"]))

    def read_file(self, path: str, timeout: float = 300.0) -> bytes:
        """A file of the guest, through its guest agent (docs/guest-agent.md)."""
        res = self.conn.call("file_read", dom=self.domid, path=path, timeout=timeout)
        return base64.b64decode(res["data"])

    def write_file(self, path: str, data: bytes, timeout: float = 300.0) -> None:
        """Create or replace a file of the guest through its guest agent, in requests of 512 KiB."""
        chunk = 512 << 10
        for off in range(0, max(len(data), 1), chunk):
            self.conn.call("file_write", dom=self.domid, path=path, append=off > 0, timeout=timeout,
                           data=base64.b64encode(data[off:off + chunk]).decode())

    def console(self) -> Console:
        """The console as a stream of bytes both ways, on a connection of its own."""
        return Console(self.conn.socket_path, self.domid)

    def block_attach(self, disk: Mapping[str, Any] | Any) -> int:
        """A disk (an xlcfg.DiskSpec or its fields as a mapping); its devid."""
        spec = dict(disk) if isinstance(disk, Mapping) else asdict(disk)
        return int(self.conn.call("block_attach", dom=self.domid, disk=spec))

    def block_detach(self, vdev: str, timeout: float = 10.0) -> bool:
        return bool(self.conn.call("block_detach", dom=self.domid, vdev=vdev, timeout=timeout))

    def block_list(self) -> builtins.list[dict[str, Any]]:
        return list(self.conn.call("block_list", dom=self.domid))

    def network_attach(self, **params: str) -> int:
        """A vif from xl's vif parameters (bridge="lan0", ip="10.0.0.2/24"...); its devid."""
        return int(self.conn.call("network_attach", dom=self.domid, vif=params))

    def network_detach(self, dev: int | str, timeout: float = 10.0) -> bool:
        return bool(self.conn.call("network_detach", dom=self.domid, dev=dev, timeout=timeout))

    def network_list(self) -> builtins.list[dict[str, Any]]:
        return list(self.conn.call("network_list", dom=self.domid))

    def vcpu_set(self, vcpus: int) -> None:
        """Online vCPUs from now on (xl vcpu-set): the guest takes CPUs down or makes them present."""
        self.conn.call("vcpu_set", dom=self.domid, vcpus=vcpus)

    def vcpu_list(self) -> builtins.list[dict[str, Any]]:
        return list(self.conn.call("vcpu_list", dom=self.domid))

    def vcpu_pin(self, vcpu: int | str, cpus: str) -> None:
        """Hard affinity of vCPU `vcpu` ("all": every one) to host CPUs `cpus` ("0-1,3", "all")."""
        self.conn.call("vcpu_pin", dom=self.domid, vcpu=vcpu, cpus=cpus)


class Console:
    """A domain's console: read() what the guest writes, write() keystrokes; close() detaches."""

    def __init__(self, socket_path: str, domid: int) -> None:
        self._c = Client(socket_path)
        try:
            self._c.sock.sendall(encode({"op": "console", "dom": domid}))
            _check(self._c.file.readline())
        except BaseException:
            self._c.close()
            raise

    def read(self, n: int = 4096) -> bytes:
        """Up to n bytes, waiting for at least one; b"" when the console closed."""
        return bytes(self._c.file.read1(n))

    def write(self, data: bytes) -> None:
        self._c.sock.sendall(data)

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Xenstore:
    """The store as domain 0 sees it (docs/control-api.md, `xenstore`); values are bytes or str (UTF-8)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _call(self, cmd: str, path: str, **args: Any) -> Any:
        return self._conn.call("xenstore", cmd=cmd, path=path, **args)

    def read(self, path: str) -> bytes:
        return base64.b64decode(self._call("read", path, base64=True))

    def write(self, path: str, value: bytes | str) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._call("write", path, value=base64.b64encode(data).decode(), base64=True)

    def exists(self, path: str) -> bool:
        return bool(self._call("exists", path))

    def mkdir(self, path: str) -> None:
        self._call("mkdir", path)

    def rm(self, path: str, tidy: bool = False) -> None:
        self._call("rm", path, **({"tidy": True} if tidy else {}))

    def list(self, path: str) -> builtins.list[str]:
        return list(self._call("list", path))

    def get_perms(self, path: str) -> builtins.list[str]:
        return list(self._call("getperms", path))

    def set_perms(self, path: str, perms: Sequence[str], recurse: bool = False) -> None:
        self._call("chmod", path, perms=list(perms), **({"recurse": True} if recurse else {}))

    def ls(self, path: str = "/", with_perms: bool = False) -> builtins.list[dict[str, Any]]:
        """Every node below `path`, depth first: {path, name, depth, value (bytes or None), perms?}."""
        rows = self._call("ls", path, base64=True, with_perms=with_perms)
        for r in rows:
            r["value"] = None if r.get("value") is None else base64.b64decode(r["value"])
        return list(rows)

    def transaction(self, ops: Sequence[Mapping[str, Any]]) -> builtins.list[Any]:
        """Several requests ({"cmd": "write", "path": ..., "value": ...}, ...) in one transaction: their
        results, or Error for the first that failed (then nothing was changed)."""
        results = self._conn.call("xenstore_tx", ops=[dict(o) for o in ops])
        out = []
        for r in results:
            if not r["ok"]:
                raise Error(str(r["error"]), r.get("errno"))
            out.append(r.get("result"))
        return out


def config_of_file(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """An xl.cfg file parsed into `create`'s config (as `hyperdisco create` sends it)."""
    from .toolstack.xlcfg import parse_file

    spec = parse_file(str(path), list(overrides))
    config = {k: v for k, v in asdict(spec).items() if k not in ("vifs", "source")}
    config["vifs"] = [v.params for v in spec.vifs]
    return config


def _check(first: bytes) -> None:
    """The answer before a stream starts."""
    try:
        reply = json.loads(first) if first else {"ok": False, "error": "the daemon closed the connection"}
    except ValueError:
        reply = {"ok": False, "error": "the daemon answered something that is not JSON"}
    if not reply.get("ok"):
        err = str(reply.get("error", "refused"))
        errno = reply.get("errno")
        raise Error(err if err.startswith("hyperdisco:") else f"hyperdisco: {err}",
                    errno if isinstance(errno, str) else None)
