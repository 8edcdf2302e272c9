"""xl migrate between two hyperdisco daemons (docs/migration.md; the domain processes' side:
vmm/migration.py, the stream: core/migstream.py).

Source (`migrate DOM DEST`): connect to DEST (another daemon's control socket path, or HOST:PORT where a
daemon runs with --migrate-listen), ask it to receive the domain (its configuration, the kernel's
identity, this hyperdisco's version), and when it agreed hand the connection to the domain's process,
which pre-copies memory while the guest runs. When it says "precopied", the guest is asked to suspend (as
save does) and its process sends the rest; the domain ends here only once the destination said its copy
runs. Anything else (refused, connection lost, the destination killed) leaves it running here.

Destination (`migrate_receive`, on the control socket or the TCP listener, which serves nothing else):
the header is checked as a save file's is (version, configuration validated as a create request's,
kernel identity), a domain is built without a kernel, and the connection goes to its process, which
reads the stream into its memory before its vCPUs run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..core.domain import DomainConfig
from ..dom0 import vcpus as dom0_vcpus
from ..dom0.handle import DomainHandle
from ..dom0.host import Host
from ..errors import HyperdiscoError
from .protocol import encode
from .requests import RequestError
from .saved_record import record_with_vcpus, record_with_vifs, saved_vifs
from .snapshot_ops import SUSPEND_TIMEOUT_S, kernel_identity

CONNECT_TIMEOUT_S = 10.0
MAX_REPLY = 64 << 10
MIN_KEY_BYTES = 16
HELLO = "hyperdisco-migrate"


def read_key(path: str) -> bytes:
    """`--migrate-key FILE`: the secret both daemons share (its bytes, whitespace stripped). It must be a
    regular file no one but its owner may read, of at least MIN_KEY_BYTES bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise HyperdiscoError(f"hyperdisco: --migrate-key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise HyperdiscoError(f"hyperdisco: --migrate-key {path}: must be a regular file only its owner "
                                  "may read (chmod 600)")
        key = f.read(4096).strip()
    if len(key) < MIN_KEY_BYTES:
        raise HyperdiscoError(f"hyperdisco: --migrate-key {path}: at least {MIN_KEY_BYTES} bytes of secret")
    return key


def _proof(key: bytes, nonce: str) -> str:
    return hmac.new(key, b"hyperdisco-migrate:" + nonce.encode(), hashlib.sha256).hexdigest()


def server_handshake(conn: socket.socket, key: bytes) -> bool:
    """The TCP listener's side: a fresh nonce out, HMAC-SHA256(key, nonce) back; False (and one line of
    error to the peer) if the proof is wrong or does not come within CONNECT_TIMEOUT_S."""
    nonce = secrets.token_hex(32)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.sendall(encode({HELLO: 1, "nonce": nonce}))
        line = _read_line(conn, 1024)
        try:
            got = json.loads(line).get("proof")
        except (ValueError, AttributeError):
            got = None
        if not isinstance(got, str) or not hmac.compare_digest(got, _proof(key, nonce)):
            conn.sendall(encode({"ok": False, "error": "hyperdisco: migrate: not the migration key"}))
            return False
        conn.settimeout(None)
        return True
    except OSError:
        return False


def _client_handshake(sock: socket.socket, dest: str, key: bytes | None) -> None:
    if key is None:
        raise RequestError(f"hyperdisco: migrate: {dest[:100]} is a TCP destination: this daemon needs the "
                           "migration key both share (daemon --migrate-key FILE)")
    try:
        hello = json.loads(_read_line(sock, 1024))
        nonce = hello.get("nonce") if isinstance(hello, dict) and hello.get(HELLO) == 1 else None
    except (ValueError, OSError):
        nonce = None
    if not isinstance(nonce, str) or not 32 <= len(nonce) <= 128:
        raise RequestError(f"hyperdisco: migrate: {dest[:100]} is not a hyperdisco migration listener")
    sock.sendall(encode({"proof": _proof(key, nonce)}))


def connect(dest: str, key: bytes | None = None) -> socket.socket:
    """DEST: a path (a daemon's control socket on this host) or HOST:PORT (a --migrate-listen)."""
    if "/" in dest or ":" not in dest:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr: Any = dest
    else:
        host, _, port = dest.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise RequestError(f"hyperdisco: migrate: {dest[:100]!r} is neither a socket path nor HOST:PORT")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        addr = (host.strip("[]"), int(port))
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise RequestError(f"hyperdisco: migrate: cannot reach {dest[:100]}: "
                           f"{exc.strerror or 'timed out'}") from None
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            _client_handshake(sock, dest, key)
        except BaseException:
            sock.close()
            raise
    return sock


def _read_line(sock: socket.socket, limit: int = MAX_REPLY) -> bytes:
    """One line, read a byte at a time up to `limit` (what follows it stays in the socket)."""
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        got = sock.recv(1)
        if not got:
            break
        line += got
    return line


def migrate(host: Host, dom: DomainHandle, dest: str, timeout: float = SUSPEND_TIMEOUT_S,
            rate_mib: float | None = None, key: bytes | None = None) -> dict[str, Any]:
    """`rate_mib`: the pre-copy's bandwidth cap in MiB/s (the stop-and-copy is never capped)."""
    if dom.finished:
        raise RequestError(f"hyperdisco: migrate: domain {dom.name} is not running")
    for disk in dom.config.disks:
        if not disk.readonly and disk.format != "raw":
            raise RequestError(f"hyperdisco: migrate: {dom.name}'s disk {disk.vdev} is a read-write "
                               f"{disk.format} image: only raw images change hands yet (docs/migration.md)")
    started = time.monotonic()
    # its vifs as attached now (devid, MAC, network...), as save keeps them (toolstack/saved_record.py)
    record = record_with_vifs(dom.config.record, host.net.configs(dom.domid))
    possible = dom0_vcpus.max_vcpus(dom)  # and its vCPUs as vcpu-set left them, as save keeps them
    record = record_with_vcpus(record, dom0_vcpus.available(host.xs, dom.domid, possible), possible)
    header = {"hyperdisco": __version__, "kernel": kernel_identity(dom.config.kernel),
              "record": record, "name": dom.name, "guest_up": dom.guest_up}
    sock = connect(dest, key)
    try:
        sock.sendall(encode({"op": "migrate_receive", "header": header}))
        line = _read_line(sock)
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise RequestError(f"hyperdisco: migrate: {dest[:100]} did not answer as a hyperdisco daemon")
        if not reply["ok"]:
            raise RequestError(f"hyperdisco: migrate: {dest[:100]} refused: "
                               f"{str(reply.get('error'))[:300]}".replace("\n", " "))
        sock.settimeout(None)
        while not dom.migration.empty():
            dom.migration.get_nowait()
        answer = dom.call({"t": "migrate-to", "rate": (rate_mib or 0) * 1048576}, [sock.fileno()],
                          timeout=10.0)
    except OSError as exc:
        raise RequestError(f"hyperdisco: migrate: {dest[:100]}: {exc.strerror or exc}") from None
    finally:
        sock.close()  # the domain process has its own
    if answer is None or not answer.get("ok"):
        why = str(answer.get("error"))[:200] if answer else "no answer"
        raise RequestError(f"hyperdisco: migrate: domain {dom.name} cannot be migrated: {why}")
    msg = _next(dom, timeout + 600.0)
    if msg.get("phase") != "precopied":
        raise _failed(dom, msg)
    precopy = time.monotonic() - started
    asked = time.monotonic()
    host.request_shutdown(dom, "suspend")
    msg = _next(dom, timeout)
    if msg.get("phase") != "done":
        raise _failed(dom, msg)
    return {"dest": dest, "rounds": msg.get("rounds"), "round_pages": msg.get("round_pages"),
            "pages": msg.get("pages"), "bytes": msg.get("bytes"), "downtime_s": msg.get("downtime_s"),
            "precopy_s": round(precopy, 3), "suspend_to_running_s": round(time.monotonic() - asked, 3),
            "seconds": round(time.monotonic() - started, 3)}


def _next(dom: DomainHandle, timeout: float) -> dict[str, Any]:
    """The domain process's next "migrate" message; a made-up failure if none comes or the domain ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return dom.migration.get(timeout=0.5)
        except queue.Empty:
            if dom.finished:
                return {"phase": "failed", "detail": f"the domain ended ({dom.outcome})"}
    return {"phase": "failed", "detail": f"no progress within {timeout:.0f} s"}


def _failed(dom: DomainHandle, msg: dict[str, Any]) -> RequestError:
    # whatever is left of it in the process goes (a pre-copy that is slow, a suspend that never came:
    # vmm/migration.py Precopy.cancel); the guest runs on here
    dom.send({"t": "migrate-cancel"})
    where = "it was destroyed" if dom.finished else "it still runs here"
    detail = str(msg.get("detail", "failed"))[:300].replace("\n", " ")
    return RequestError(f"hyperdisco: migrate: {dom.name}: {detail}; {where}")


def receive(host: Host, header: dict[str, Any], conn: socket.socket,
            configure: Callable[[dict[str, Any]], DomainConfig]) -> dict[str, Any]:
    """The destination's side: a domain built from `header` whose process takes `conn`'s stream."""
    record = header.get("record")
    if not isinstance(record, dict):
        raise RequestError("hyperdisco: migrate: no domain configuration in the request")
    if header.get("hyperdisco") != __version__:
        raise RequestError(f"hyperdisco: migrate: the source runs hyperdisco "
                           f"{str(header.get('hyperdisco'))[:40]}, this is {__version__}")
    config = configure(record)
    if kernel_identity(config.kernel) != header.get("kernel"):
        raise RequestError(f"hyperdisco: migrate: the domain runs another kernel than "
                           f"{str(record.get('kernel') or 'the default one')[:200]} is here")
    # the vifs with the same devids and MACs: the guest's netfront reads "mac" again when it reconnects
    vifs = saved_vifs(record, "the migration request")
    dom = host.create(config, vifs=vifs, incoming=conn.fileno())
    dom.guest_up = header.get("guest_up") is True
    threading.Thread(target=_attach_disks_when_asked, args=(host, dom), name="hd-migrate-disks",
                     daemon=True).start()
    return {"domid": dom.domid, "name": dom.name}


def _attach_disks_when_asked(host: Host, dom: DomainHandle) -> None:
    """The incoming domain's disks, when its process has the whole stream (the source flushed them and
    let go of their locks just before): opened and attached before its vCPU runs, so the guest finds
    its block devices' nodes when it reconnects its frontends. The process waits for the answer."""
    while not dom.finished:
        try:
            msg = dom.migration.get(timeout=1.0)
        except queue.Empty:
            continue
        if msg.get("phase") != "disks":
            continue
        try:
            for spec, image in host.blk.open_images(dom.config.disks):
                host.blk.attach(dom, spec, image)
            answer: dict[str, Any] = {"ok": True}
        except HyperdiscoError as exc:
            answer = {"ok": False, "error": str(exc)[:300]}
        dom.send({"t": "migrate-disks", "id": msg.get("id"), **answer})
        return
