"""A network's way out to the host: passt (user-mode, NAT-like, the default) or a host tap device.

Both attach to their :class:`~hyperdisco.backends.net.switch.Network` as a ``FrameDevice`` port. Frames
from guests may arrive with their TCP/UDP checksum left to the receiver (``CSUM_BLANK``) and as TCP
super-frames (GSO); the host side wants finished frames, so :func:`prepare_for_host` completes the
checksum and, where the host cannot take the frame whole, cuts it into segments of ``gso_size``. Frames
from the host go to the network as ``DATA_VALIDATED``.

**passt** (Debian package ``passt``, version 0.0~git20230309 checked): started in the foreground as a
child with ``-F FD``, one end of a ``socketpair(AF_UNIX, SOCK_STREAM)`` we made (passt then serves that one
connection and exits when it closes, so domain 0 dying also ends passt; no socket file exists that another
local process could connect to first). On that stream each frame is preceded by its length as a 4-byte
big-endian integer (as with QEMU's ``-netdev stream``). passt ignores frames from the guest side longer
than 65535 bytes (ETH_MAX_MTU, the whole Ethernet frame), so longer GSO frames are segmented; it
advertises an MTU of 65520 and answers ARP, DHCP, NDP and DHCPv6 itself, handing out the host's own
address. Port forwards ``("tcp", host, guest)`` become ``-t 127.0.0.1/HOST:GUEST`` (``-u`` for UDP;
``-u none`` when there is none, since passt would otherwise forward the UDP twins of the TCP ports).
When passt exits it is started again with a backoff (at most :data:`RESTARTS_PER_MINUTE` a minute).

passt serves exactly one guest: it hands every DHCP client the same address and sends everything back to
the guest MAC/IP it saw last. So a passt is started per vif (``owner``: the vif's switch port, which the
switch gives this passt's frames to alone, and whose frames alone reach it), never per network. One more
thing keeps guests on one network apart from their passts: passt answers an ARP request for *any* address
but the guest's own (it is the way out to everything), so it would answer, faster than the guest asked for,
when a guest looks for another guest on the network. :class:`PasstDevice` therefore reads the lease passt
hands out (DHCP OFFER/ACK: address, subnet mask, routers) and, once it knows one, keeps from passt the ARP
requests for addresses outside that subnet (and not a router): those are the network's business.

**tap** (``tap:IFNAME``): /dev/net/tun with ``TUNSETIFF`` and ``IFF_TAP | IFF_NO_PI``, non-blocking; one
read or write per frame. Bringing the interface up, addressing or bridging it is the host's business.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hyperdisco.backends.net import frame as F
from hyperdisco.backends.net.frame import Meta
from hyperdisco.backends.net.switch import Network, Port

Log = Callable[[str], None]
FROM_HOST = Meta(F.DATA_VALIDATED)
PASST_MAX_FRAME = 65535          # passt drops longer frames from the guest side (ETH_MAX_MTU)
STREAM_BUFFER = F.SOCKET_BUFFER  # bound of what we hold for passt beyond the socket's own buffer
READ_CHUNK = 256 << 10
READ_ROUNDS = 4                  # recv()s per read_frames() call: the switch serves others in between
RESTARTS_PER_MINUTE = 4
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0

# linux/if_tun.h: #define TUNSETIFF _IOW('T', 202, int); IFF_TAP 0x0002; IFF_NO_PI 0x1000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16

_IPV4, _IPV6, _ARP = 0x0800, 0x86DD, 0x0806
_DHCP_COOKIE = b"\x63\x82\x53\x63"
_DHCP_OFFER, _DHCP_ACK = 2, 5
_TCP, _UDP = 6, 17
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80


class Uplink(Protocol):
    """What the toolstack holds of a network's uplink."""

    def start(self) -> bool:
        """Attach to the network; False (after one log line) when the uplink cannot work here."""
        ...

    def close(self) -> None: ...


# -- checksums and segmentation ---------------------------------------------------------------------------

def _csum(total: int) -> int:
    """The Internet checksum of data whose big-endian 16-bit words sum (as integers) to ``total``
    modulo 0xFFFF: 2**16 is 1 modulo 0xFFFF, so int.from_bytes(data) % 0xFFFF is the ones'-complement sum
    of its words (0 standing for 0xFFFF when the data is not all zero, which the checksum's complement
    maps to 0 either way)."""
    r = total % 0xFFFF
    return 0xFFFF - r if r else 0


def _words(data: bytes | bytearray | memoryview) -> int:
    n = int.from_bytes(data, "big")
    return n << 8 if len(data) & 1 else n     # an odd length is padded with one zero byte


def _l4(frame: bytes | bytearray) -> tuple[int, int, int, int] | None:
    """(l4 offset, l4 end, protocol, pseudo-header sum) of an untagged IPv4/IPv6 frame, or None."""
    if len(frame) < 34:
        return None
    etype = (frame[12] << 8) | frame[13]
    if etype == _IPV4:
        ihl = (frame[14] & 0x0F) * 4
        if frame[14] >> 4 != 4 or ihl < 20 or frame[20] & 0x3F or frame[21]:   # no fragments
            return None
        end = 14 + ((frame[16] << 8) | frame[17])
        start = 14 + ihl
        if end > len(frame) or end < start:
            return None
        proto = frame[23]
        pseudo = _words(frame[26:34]) + proto + (end - start)
        return start, end, proto, pseudo
    if etype == _IPV6:
        if len(frame) < 54 or frame[14] >> 4 != 6:
            return None
        end = 54 + ((frame[18] << 8) | frame[19])
        if end > len(frame):
            return None
        proto, start = frame[20], 54
        while proto in (0, 43, 60):           # hop-by-hop, routing, destination options
            if start + 8 > end:
                return None
            proto, start = frame[start], start + (frame[start + 1] + 1) * 8
        if start > end:
            return None
        pseudo = _words(frame[22:54]) + proto + (end - start)
        return start, end, proto, pseudo
    return None


def finish_checksum(frame: bytearray) -> bool:
    """Write the TCP or UDP checksum of ``frame`` (IPv4 or IPv6) in place, whatever its field held;
    False when the frame is not one of those (left as it was)."""
    where = _l4(frame)
    if where is None:
        return False
    start, end, proto, pseudo = where
    if proto == _TCP:
        field = start + 16
    elif proto == _UDP:
        field = start + 6
    else:
        return False
    if field + 2 > end:
        return False
    frame[field] = frame[field + 1] = 0
    csum = _csum(pseudo + _words(memoryview(frame)[start:end]))
    if proto == _UDP and csum == 0:
        csum = 0xFFFF                          # 0 means "no checksum" in UDP
    frame[field] = csum >> 8
    frame[field + 1] = csum & 0xFF
    return True


def segment_tcp(frame: bytes | bytearray, mss: int) -> list[bytearray] | None:
    """Cut a TCP super-frame into frames of at most ``mss`` payload bytes each, with their IP lengths,
    IPv4 identifications and header checksums, sequence numbers, flags and TCP checksums; None when it
    is not a TCP frame."""
    where = _l4(frame)
    if where is None or where[2] != _TCP or mss <= 0:
        return None
    start, end, _proto, _pseudo = where
    if start + 20 > end:
        return None
    data_at = start + (frame[start + 12] >> 4) * 4
    if data_at > end or data_at < start + 20:
        return None
    v4 = frame[12] == 0x08
    head = bytes(frame[:data_at])
    payload = memoryview(frame)[data_at:end]
    seq = int.from_bytes(head[start + 4:start + 8], "big")
    flags = head[start + 13]
    ident = int.from_bytes(head[18:20], "big")
    out: list[bytearray] = []
    total = len(payload)
    offsets = range(0, total, mss) if total else range(1)
    for i, off in enumerate(offsets):
        seg = bytearray(head)
        seg += payload[off:off + mss]
        f = flags
        if off + mss < total:
            f &= ~(_TCP_FIN | _TCP_PSH)
        if i:
            f &= ~_TCP_CWR
        seg[start + 13] = f
        seg[start + 4:start + 8] = ((seq + off) & 0xFFFFFFFF).to_bytes(4, "big")
        if v4:
            seg[16:18] = (len(seg) - 14).to_bytes(2, "big")
            seg[18:20] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
            seg[24:26] = b"\0\0"
            seg[24:26] = _csum(_words(memoryview(seg)[14:start])).to_bytes(2, "big")
        else:
            seg[18:20] = (len(seg) - 54).to_bytes(2, "big")
        finish_checksum(seg)
        out.append(seg)
    return out


def prepare_for_host(meta: Meta, frame: bytes, max_frame: int, segment_gso: bool) -> list[bytes | bytearray]:
    """What to hand the host for one frame from a guest: finished checksums, and a GSO frame cut into
    segments when ``segment_gso`` or when it is longer than ``max_frame``. [] when it cannot go."""
    if meta.gso_type != F.GSO_NONE and (segment_gso or len(frame) > max_frame):
        segs = segment_tcp(frame, meta.gso_size)
        if segs is None:
            return []
        out: list[bytes | bytearray] = [s for s in segs if len(s) <= max_frame]
        return out
    if len(frame) > max_frame:
        return []
    if meta.flags & F.CSUM_BLANK:
        buf = bytearray(frame)
        finish_checksum(buf)
        return [buf]
    return [frame]


# -- passt's stream ---------------------------------------------------------------------------------------

class FrameStream:
    """Frames each preceded by a 4-byte big-endian length on a non-blocking stream socket (passt's).

    Input: what recv() returns is appended to a buffer and whole frames are cut from it; a length beyond
    :data:`~frame.MAX_FRAME` means the stream is out of step (EOFError). Output: frames are sent whole or
    the rest is kept until the socket takes it (a stream must never stop in the middle of a frame), at most
    :data:`STREAM_BUFFER` bytes; beyond that new frames are dropped."""

    def __init__(self, sock: socket.socket, max_out: int = STREAM_BUFFER) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._in = bytearray()
        self._chunk = bytearray(READ_CHUNK)
        self._out = bytearray()
        self._max_out = max_out
        self.bad = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; the whole frames they complete."""
        buf = self._in
        buf += data
        frames: list[bytes] = []
        pos, n = 0, len(buf)
        while n - pos >= 4:
            length = int.from_bytes(buf[pos:pos + 4], "big")
            if length > F.MAX_FRAME:
                raise EOFError(f"a frame of {length} bytes: the stream is out of step")
            if n - pos - 4 < length:
                break
            if length >= F.ETH_MIN:
                frames.append(bytes(buf[pos + 4:pos + 4 + length]))
            else:
                self.bad += 1
            pos += 4 + length
        if pos:
            del buf[:pos]
        return frames

    def read_frames(self) -> list[tuple[Meta, bytes]]:
        frames: list[bytes] = []
        for _ in range(READ_ROUNDS):
            try:
                n = self.sock.recv_into(self._chunk)
            except (BlockingIOError, InterruptedError):
                break
            if n == 0:
                raise EOFError("the stream was closed")
            frames += self.feed(memoryview(self._chunk)[:n])
            if n < len(self._chunk):
                break
        return [(FROM_HOST, f) for f in frames]

    def write(self, frame: bytes | bytearray) -> bool:
        record = len(frame).to_bytes(4, "big") + frame
        if self._out:
            if len(self._out) + len(record) > self._max_out:
                return False
            self._out += record
            self.flush()
            return True
        try:
            sent = self.sock.send(record)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(record):
            self._out += record[sent:]
        return True

    def wants_write(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            if sent <= 0:
                return
            del self._out[:sent]

    def close(self) -> None:
        self.sock.close()


def dhcp_lease(frame: bytes | bytearray) -> tuple[ipaddress.IPv4Network, frozenset[bytes]] | None:
    """(the subnet, the routers' addresses) of a DHCP OFFER or ACK from a server, or None for any other
    frame. Without a subnet mask option the subnet is the leased address alone."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != _UDP:     # IPv4, UDP
        return None
    l4 = 14 + (frame[14] & 0x0F) * 4
    if frame[l4:l4 + 4] != b"\x00\x43\x00\x44":                                   # port 67 to 68
        return None
    bootp = frame[l4 + 8:]
    if len(bootp) < 240 or bootp[0] != 2 or bootp[236:240] != _DHCP_COOKIE:
        return None
    kind, mask, routers = 0, 32, b""
    i, n = 240, len(bootp)
    while i < n:
        code = bootp[i]
        if code == 0xFF:
            break
        if code == 0:
            i += 1
            continue
        if i + 2 > n or i + 2 + bootp[i + 1] > n:
            return None
        val = bytes(bootp[i + 2:i + 2 + bootp[i + 1]])
        if code == 53 and len(val) == 1:
            kind = val[0]
        elif code == 1 and len(val) == 4:
            bits = int.from_bytes(val, "big")
            mask = 32 - ((~bits & 0xFFFFFFFF).bit_length())
        elif code == 3:
            routers = val
        i += 2 + len(val)
    if kind not in (_DHCP_OFFER, _DHCP_ACK):
        return None
    subnet = ipaddress.IPv4Network((bytes(bootp[16:20]), mask), strict=False)
    return subnet, frozenset(routers[j:j + 4] for j in range(0, len(routers) - 3, 4))


def arp_request_target(frame: bytes | bytearray) -> bytes | None:
    """The address an Ethernet/IPv4 ARP request asks for, or None when the frame is no such request."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[14:22] != b"\x00\x01\x08\x00\x06\x04\x00\x01":
        return None
    return bytes(frame[38:42])


class PasstDevice(FrameStream):
    """The switch's view of passt: guests' frames made ready for it, its frames DATA_VALIDATED; the ARP
    requests for addresses outside passt's lease kept from it (``held_back``: see the module's notes)."""

    def __init__(self, sock: socket.socket, max_out: int = STREAM_BUFFER) -> None:
        super().__init__(sock, max_out)
        self.lease: tuple[ipaddress.IPv4Network, frozenset[bytes]] | None = None
        self.held_back = 0

    def read_frames(self) -> list[tuple[Meta, bytes]]:
        frames = super().read_frames()
        for _meta, data in frames:
            if data[12:14] == b"\x08\x00":
                lease = dhcp_lease(data)
                if lease is not None:
                    self.lease = lease
        return frames

    def for_passt(self, frame: bytes | bytearray) -> bool:
        """False for an ARP request passt must not answer: one for an address outside its lease."""
        lease = self.lease
        if lease is None:
            return True
        target = arp_request_target(frame)
        if target is None or target in lease[1]:
            return True
        return ipaddress.IPv4Address(target) in lease[0]

    def write_frame(self, meta: Meta, frame: bytes) -> bool:
        if not self.for_passt(frame):
            self.held_back += 1
            return True
        ok = True
        for piece in prepare_for_host(meta, frame, PASST_MAX_FRAME, segment_gso=False):
            ok = self.write(piece) and ok
        return ok


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "net"


class PasstUplink:
    """A passt child serving one vif (``owner``, its switch port) or, without an owner, the whole network
    (right only for a network of one guest), restarted when it exits."""

    def __init__(self, network: Network, run_dir: Path, forwards: list[tuple[str, int, int]],
                 log: Log, owner: Port | None = None) -> None:
        self.network = network
        self.owner = owner
        self.run_dir = Path(run_dir)
        self.log = log
        self.what = f"network {network.name}" + (f": {owner.name}" if owner is not None else "")
        self.port_name = "uplink:passt" + (f":{owner.name}" if owner is not None else "")
        self.options: list[str] = []
        tcp = [f"127.0.0.1/{h}:{g}" for proto, h, g in forwards if proto == "tcp"]
        udp = [f"127.0.0.1/{h}:{g}" for proto, h, g in forwards if proto == "udp"]
        for proto, host, guest in forwards:
            if proto not in ("tcp", "udp") or not (0 < host < 65536 and 0 < guest < 65536):
                raise ValueError(f"{self.what}: bad port forward {proto}:{host}:{guest}")
        self.options += [a for spec in tcp for a in ("-t", spec)]
        self.options += [a for spec in udp for a in ("-u", spec)] if udp else ["-u", "none"]
        suffix = f"-{owner.name}" if owner is not None else ""
        self.log_path = self.run_dir / f"passt-{_safe_name(network.name + suffix)}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: Port | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._starts: list[float] = []

    def start(self) -> bool:
        binary = shutil.which("passt")
        if binary is None:
            self.log(f"{self.what}: no uplink: passt is not installed (apt-get install passt)")
            return False
        why = self._spawn(binary)
        if why is not None:
            self.log(f"{self.what}: no uplink: passt did not start: {why}")
            return False
        self._thread = threading.Thread(target=self._supervise, args=(binary,), daemon=True,
                                        name=f"passt-{self.port_name}")
        self._thread.start()
        return True

    def _spawn(self, binary: str) -> str | None:
        """Start passt on a fresh socket pair and attach it; why not, or None."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"{self.run_dir}: {e.strerror}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (ours, theirs):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, F.SOCKET_BUFFER)
                except OSError:
                    pass
        cmd = [binary, "--foreground", "--quiet", "--fd", str(theirs.fileno()),
               "--log-file", str(self.log_path), *self.options]
        try:
            with open(self.log_path.with_suffix(".err"), "wb") as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                        pass_fds=[theirs.fileno()], start_new_session=True)
        except OSError as e:
            ours.close()
            return e.strerror or str(e)
        finally:
            theirs.close()
        # passt checks its options and sets itself up at once; one that will not run exits at once
        try:
            proc.wait(0.3)
        except subprocess.TimeoutExpired:
            pass
        if proc.returncode is not None:
            ours.close()
            return f"it exited with status {proc.returncode}: {self._last_words()}"
        with self._lock:
            if self._closing.is_set():
                ours.close()
                _stop(proc)
                return "closing"
            self.proc = proc
            self._starts.append(time.monotonic())
            try:
                self.port = self.network.add_device(self.port_name, PasstDevice(ours), owner=self.owner)
            except (RuntimeError, ValueError) as e:   # the switches are closed, or a bad owner
                ours.close()
                _stop(proc)
                self.proc = None
                return str(e)
        return None

    def _last_words(self) -> str:
        for path in (self.log_path.with_suffix(".err"), self.log_path):
            try:
                lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                         if ln.strip() and "syslog" not in ln]
            except OSError:
                continue
            if lines:
                return lines[-1][:200]
        return "no message"

    def _supervise(self, binary: str) -> None:
        backoff = BACKOFF_FIRST
        while not self._closing.is_set():
            proc = self.proc
            if proc is not None:
                status = proc.wait()
                if self._closing.is_set():
                    return
                with self._lock:
                    port, self.port, self.proc = self.port, None, None
                if port is not None:
                    self.network.remove_port(port)
                self.log(f"{self.what}: passt exited (status {status}): "
                         f"{self._last_words()}; restarting it")
            now = time.monotonic()
            self._starts = [t for t in self._starts if now - t < 60.0]
            if len(self._starts) >= RESTARTS_PER_MINUTE:
                delay = max(backoff, 60.0 - (now - self._starts[0]))
            else:
                delay = backoff
            if self._closing.wait(delay):
                return
            why = self._spawn(binary)
            if why is None:
                backoff = BACKOFF_FIRST
            else:
                backoff = min(BACKOFF_MAX, backoff * 2)
                self.log(f"{self.what}: passt did not start again: {why}")

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            proc, port = self.proc, self.port
            self.proc = self.port = None
        if port is not None:
            self.network.remove_port(port)       # closes our end: passt --fd exits on its own
        if proc is not None:
            _stop(proc)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- tap --------------------------------------------------------------------------------------------------

class TapDevice:
    """One tap file descriptor: one read() or write() per frame, never blocking."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def read_frames(self) -> list[tuple[Meta, bytes]]:
        out: list[tuple[Meta, bytes]] = []
        for _ in range(64):
            try:
                data = os.read(self.fd, F.MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                raise EOFError("the tap device was closed")
            out.append((FROM_HOST, data))
        return out

    def write_frame(self, meta: Meta, frame: bytes) -> bool:
        ok = True
        for piece in prepare_for_host(meta, frame, F.MAX_FRAME, segment_gso=True):
            try:
                os.write(self.fd, piece)
            except (BlockingIOError, InterruptedError):
                ok = False
            except OSError as e:
                if e.errno != errno.EIO:          # EIO: the interface is down, not a dead device
                    raise
                ok = False
        return ok

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class TapUplink:
    """A host tap interface as a network's uplink (the host bridges or routes it)."""

    def __init__(self, network: Network, ifname: str, log: Log) -> None:
        self.network = network
        self.ifname = ifname
        self.log = log
        self.port: Port | None = None

    def start(self) -> bool:
        name = self.ifname.encode()
        if not name or len(name) >= IFNAMSIZ or b"/" in name or b"\0" in name:
            self.log(f"network {self.network.name}: no uplink: {self.ifname!r} is not an interface name")
            return False
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self.log(f"network {self.network.name}: no uplink: /dev/net/tun: {e.strerror}")
            return False
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name, IFF_TAP | IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            self.log(f"network {self.network.name}: no uplink: tap {self.ifname}: {e.strerror}")
            return False
        try:
            self.port = self.network.add_device(f"uplink:tap:{self.ifname}", TapDevice(fd))
        except RuntimeError as e:
            os.close(fd)
            self.log(f"network {self.network.name}: no uplink: {e}")
            return False
        return True

    def close(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            self.network.remove_port(port)


def make_uplink(kind: str, network: Network, run_dir: Path, forwards: list[tuple[str, int, int]],
                log: Log, owner: Port | None = None) -> Uplink | None:
    """The uplink a configuration names (not started): "passt" (for the vif port ``owner``; see
    PasstUplink), "tap:IFNAME" (the network's: a tap has no owner), or none for "" and "none". ValueError
    for anything else."""
    if kind in ("", "none"):
        return None
    if kind == "passt":
        return PasstUplink(network, run_dir, forwards, log, owner)
    if kind.startswith("tap:"):
        if owner is not None:
            raise ValueError(f"network {network.name}: a tap uplink is the network's, not one vif's")
        if forwards:
            log(f"network {network.name}: port forwards need the passt uplink; ignored for {kind}")
        return TapUplink(network, kind[4:], log)
    raise ValueError(f"network {network.name}: unknown uplink {kind!r} (passt or tap:IFNAME)")
