"""Domain 0's learning switches: one per named network, all served by one selector thread.

Each port is one end of a vif's ``SOCK_SEQPACKET`` pair (the other end is in the domain's netback) or a
:class:`FrameDevice` (an uplink whose transport is not one message per frame). A device is either the
network's (a tap: a real L2 segment, a port like any other) or *owned* by one vif port (that vif's own
passt, which serves exactly one guest):

- frames from an owned device go to its owner only, and are never learned (every passt uses the same
  gateway MAC: learning it would send one guest's replies to another guest's passt);
- the owner's unicast to an address that is no port of the network (passt's gateway MAC) goes to its own
  devices only, its broadcasts and multicasts to the network's other ports as usual plus its own devices;
- frames from any other port never reach an owned device.

A unicast destination is a known port when the MAC table has learned it or when it is a vif port's own
MAC (the switch enforces that MAC as the port's source, so it needs no learning and never ages out).

A message is a frame in the format of :mod:`frame` (8-byte header, then the Ethernet frame); the switch
looks at the 14 bytes of the Ethernet header only, plus the source address of IPv4/IPv6/ARP when the port
is restricted to addresses.

What a guest can do here is send frames, quickly, with any bytes in them. So:

- every frame is checked: its header (``frame.parse``: else ``drop_bad``), its source MAC against the
  port's (else ``drop_spoof``), and with ``ips`` its IP or ARP sender address (``drop_spoof``);
- nothing blocks: every socket is non-blocking, a receiver whose queue is full loses that frame
  (``drop_full`` on the receiver), a port whose peer is gone is removed;
- a round drains at most :data:`DRAIN` messages of each readable port, so a chatty port cannot starve
  the others; the MAC table is bounded and its entries age out;
- the lines a guest can cause go through a :class:`RateLimiter`; an exception while serving one port
  removes that port, never the thread.

Threads: ``add_port``/``add_device``/``remove_port``/``close`` may be called from any thread. The port
lists are immutable tuples replaced under a lock (the selector thread reads them without one); selector
registrations and closes happen on the selector thread, which a wakeup socket pair brings round at once.
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from hyperdisco.backends.net import frame as F
from hyperdisco.backends.net.frame import Meta
from hyperdisco.core.ratelimit import RateLimiter

DRAIN = 64                  # messages taken from one readable port per round (fairness)
MAC_AGE = 300.0             # seconds a learned MAC stays in the table without being seen again
MAC_TABLE_MAX = 4096        # learned MACs per network; beyond that unknown sources are flooded to
SWEEP_EVERY = 30.0          # seconds between removals of aged MAC entries
_H = F.HEADER.size          # the Ethernet frame starts here in a message
_DST, _SRC, _TYPE = _H, _H + 6, _H + 12
_L3 = _H + F.ETH_HLEN
_ETH_IPV4, _ETH_ARP, _ETH_IPV6 = b"\x08\x00", b"\x08\x06", b"\x86\xdd"
_ETH_VLAN = (b"\x81\x00", b"\x88\xa8", b"\x91\x00")  # tagged frames would hide the addresses behind the tag
_IPV4_ANY = bytes(4)
_IPV6_ANY = bytes(16)
_FULL_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EMSGSIZE)


class FrameDevice(Protocol):
    """An uplink whose transport is not one message per frame (passt's stream, a tap device)."""

    def fileno(self) -> int: ...

    def read_frames(self) -> list[tuple[Meta, bytes]]:
        """Everything readable now, without blocking; OSError or EOFError when the device is dead."""
        ...

    def write_frame(self, meta: Meta, frame: bytes) -> bool:
        """Queue or send one frame without blocking; False when it was dropped."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BufferedFrameDevice(FrameDevice, Protocol):
    """A device that may hold output it could not write at once (a stream must never be left with half a
    frame): the switch also waits for it to become writable while ``wants_write()``, then calls
    ``flush()``."""

    def wants_write(self) -> bool: ...

    def flush(self) -> None: ...


class Port:
    """One attachment to a network: a vif's socket or an uplink device."""

    __slots__ = ("name", "mac", "ips", "network", "sock", "device", "buffered", "alive", "fd",
                 "owner", "owned", "_ip4", "_ip6", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes",
                 "drop_spoof", "drop_full", "drop_bad", "_write_events")

    def __init__(self, network: Network, name: str, sock: socket.socket | None, device: FrameDevice | None,
                 mac: bytes | None, ips: frozenset[str] | None, owner: Port | None = None) -> None:
        self.name = name
        self.owner = owner                      # an owned device: the vif port it serves alone
        self.owned: tuple[Port, ...] = ()       # a vif port: its own devices (replaced under switches._lock)
        self.mac = mac
        self.ips = ips
        self.network = network
        self.sock = sock
        self.device = device
        self.buffered: BufferedFrameDevice | None = (
            device if isinstance(device, BufferedFrameDevice) else None)
        self.alive = True
        self.fd = sock.fileno() if sock is not None else device.fileno() if device is not None else -1
        self._ip4: frozenset[bytes] = frozenset()
        self._ip6: frozenset[bytes] = frozenset()
        if ips is not None:
            addrs = [ipaddress.ip_address(a) for a in ips]      # ValueError for a bad address
            self._ip4 = frozenset(a.packed for a in addrs if a.version == 4)
            self._ip6 = frozenset(a.packed for a in addrs if a.version == 6)
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.drop_spoof = self.drop_full = self.drop_bad = 0
        self._write_events = False

    def stats(self) -> dict[str, int]:
        """tx: frames this port sent into the switch; rx: frames the switch delivered to it."""
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
                "drop_spoof": self.drop_spoof, "drop_full": self.drop_full, "drop_bad": self.drop_bad}

    def __repr__(self) -> str:
        return f"Port({self.name!r} on {self.network.name!r})"

    def source_ok(self, msg: bytes) -> bool:
        """The anti-spoofing check of one message (header already checked)."""
        mac = self.mac
        if mac is not None and msg[_SRC:_SRC + 6] != mac:
            return False
        if self.ips is None:
            return True
        etype = msg[_TYPE:_TYPE + 2]
        if etype == _ETH_IPV4:
            src = msg[_L3 + 12:_L3 + 16]
            return len(src) == 4 and (src in self._ip4 or src == _IPV4_ANY)
        if etype == _ETH_ARP:
            # htype(2) ptype(2) hlen(1) plen(1) oper(2) sha(6) spa(4): an Ethernet/IPv4 ARP only
            if msg[_L3:_L3 + 6] != b"\x00\x01\x08\x00\x06\x04":
                return False
            if mac is not None and msg[_L3 + 8:_L3 + 14] != mac:
                return False
            spa = msg[_L3 + 14:_L3 + 18]
            return len(spa) == 4 and (spa in self._ip4 or spa == _IPV4_ANY)
        if etype == _ETH_IPV6:
            src = msg[_L3 + 8:_L3 + 24]
            if len(src) != 16:
                return False
            # link-local (fe80::/10) and the unspecified address (duplicate address detection) are fine
            return src in self._ip6 or (src[0] == 0xFE and src[1] & 0xC0 == 0x80) or src == _IPV6_ANY
        return etype not in _ETH_VLAN


class Network:
    """One learning switch. Create it through :meth:`Switches.get`."""

    def __init__(self, switches: Switches, name: str) -> None:
        self.name = name
        self._switches = switches
        self._ports: tuple[Port, ...] = ()         # replaced whole under switches._lock
        self._macs: dict[bytes, Port] = {}         # vif ports by their own MAC (replaced whole, as _ports)
        self._table: dict[bytes, tuple[Port, float]] = {}   # selector thread only

    def add_port(self, name: str, sock: socket.socket, mac: bytes | None,
                 ips: frozenset[str] | None = None) -> Port:
        """Attach one end of a SOCK_SEQPACKET pair; the switch owns the socket from now on."""
        if mac is not None and len(mac) != 6:
            raise ValueError(f"port {name}: a MAC address is 6 bytes, not {len(mac)}")
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, F.SOCKET_BUFFER)
            except OSError:
                pass
        port = Port(self, name, sock, None, mac, ips)
        self._switches._attach(port)
        return port

    def add_device(self, name: str, device: FrameDevice, owner: Port | None = None) -> Port:
        """Attach an uplink device (any source MAC and address); the switch closes it on removal.
        ``owner``: a vif port of this network that the device serves alone (see the module's notes);
        None: the network's device, flooded to and learned like a vif."""
        if owner is not None and (owner.network is not self or owner.sock is None):
            raise ValueError(f"port {name}: its owner {owner.name} is not a vif port of network {self.name}")
        port = Port(self, name, None, device, None, None, owner)
        self._switches._attach(port)
        return port

    def remove_port(self, port: Port) -> None:
        """Detach the port and close its socket or device (at once; also for a port already gone)."""
        self._switches._detach(port)

    def ports(self) -> list[Port]:
        return list(self._ports)


class Switches:
    """Every named network of this domain 0, and the one thread that moves their frames."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self.limiter = RateLimiter()
        self._lock = threading.Lock()
        self._networks: dict[str, Network] = {}
        self._ops: list[tuple[str, Port, threading.Event | None]] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._buf = bytearray(F.MAX_MESSAGE + 1)   # one byte more: a longer message shows as too long
        self._view = memoryview(self._buf)
        self._buffered: list[Port] = []            # ports of buffered devices (selector thread only)
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="net-switch", daemon=True)
        self._thread.start()

    # -- the toolstack's side --------------------------------------------------------------------------

    def get(self, name: str) -> Network:
        with self._lock:
            net = self._networks.get(name)
            if net is None:
                net = self._networks[name] = Network(self, name)
            return net

    def networks(self) -> list[Network]:
        with self._lock:
            return list(self._networks.values())

    def close(self) -> None:
        """Stop the thread and close every port."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        with self._lock:
            ports = [p for net in self._networks.values() for p in net._ports]
            for net in self._networks.values():
                net._ports = ()
                net._macs = {}
                net._table.clear()
            ops, self._ops = self._ops, []
        for port in ports + [port for op, port, _done in ops if op == "remove"]:
            port.alive = False
            self._close_port(port)
        for _op, _port, done in ops:
            if done is not None:
                done.set()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _attach(self, port: Port) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the switches are closed")
            net = port.network
            net._ports = net._ports + (port,)
            if port.mac is not None and port.sock is not None:
                net._macs = {**net._macs, port.mac: port}
            if port.owner is not None:
                port.owner.owned = port.owner.owned + (port,)
            self._ops.append(("add", port, None))
        self._wake()

    def _detach(self, port: Port) -> None:
        done = threading.Event()
        with self._lock:
            self._unlist(port)
            closed = self._closed
            if not closed:
                self._ops.append(("remove", port, done))
        if closed:
            self._close_port(port)
            return
        if threading.current_thread() is self._thread:
            self._apply_ops()
            return
        self._wake()
        done.wait(5.0)

    @staticmethod
    def _unlist(port: Port) -> None:
        """Take the port off its network's lists (with the switches' lock held); it is dead from now on."""
        net = port.network
        if port in net._ports:
            net._ports = tuple(p for p in net._ports if p is not port)
        if port.mac is not None and net._macs.get(port.mac) is port:
            net._macs = {m: p for m, p in net._macs.items() if p is not port}
        owner = port.owner
        if owner is not None and port in owner.owned:
            owner.owned = tuple(p for p in owner.owned if p is not port)
        port.alive = False

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass    # full (a wakeup is pending anyway) or closed

    # -- the selector thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopping:
            try:
                self._apply_ops()
                events = self._sel.select(1.0)
                now = time.monotonic()
                for key, mask in events:
                    port = key.data
                    if port is None:
                        self._drain_wakeup()
                        continue
                    if not port.alive:
                        continue
                    try:
                        if mask & selectors.EVENT_WRITE and port.buffered is not None:
                            port.buffered.flush()
                        if mask & selectors.EVENT_READ:
                            if port.sock is not None:
                                self._serve_socket(port, port.sock, now)
                            else:
                                self._serve_device(port, now)
                    except Exception as e:  # noqa: BLE001 - one port must never take the thread down
                        self._drop(port, f"failed: {type(e).__name__}: {e}")
                self._update_write_interest()
                if now - last_sweep > SWEEP_EVERY:
                    last_sweep = now
                    self._sweep(now)
            except Exception as e:  # noqa: BLE001
                self.limiter.log(self._log, "switch-error", f"network switch: {type(e).__name__}: {e}")
                time.sleep(0.01)
        self._apply_ops()

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _apply_ops(self) -> None:
        with self._lock:
            ops, self._ops = self._ops, []
        for op, port, done in ops:
            if op == "add":
                if port.alive:
                    try:
                        self._sel.register(port.fd, selectors.EVENT_READ, port)
                    except (OSError, ValueError, KeyError) as e:
                        self._drop(port, f"cannot be served: {e}")
                        continue
                    if port.buffered is not None:
                        self._buffered.append(port)
            else:
                self._unregister(port)
                self._forget(port)
                self._close_port(port)
                if done is not None:
                    done.set()

    def _unregister(self, port: Port) -> None:
        try:
            key = self._sel.get_key(port.fd)
        except (KeyError, ValueError):
            return
        if key.data is port:
            self._sel.unregister(port.fd)

    def _forget(self, port: Port) -> None:
        if port in self._buffered:
            self._buffered.remove(port)
        table = port.network._table
        for mac in [m for m, (p, _t) in table.items() if p is port]:
            del table[mac]

    def _close_port(self, port: Port) -> None:
        try:
            if port.sock is not None:
                port.sock.close()
            elif port.device is not None:
                port.device.close()
        except Exception as e:  # noqa: BLE001
            self.limiter.log(self._log, "port-close", f"network {port.network.name}: port {port.name}: "
                             f"close failed: {e}")

    def _drop(self, port: Port, why: str) -> None:
        """Remove a port from the selector thread (its peer is gone, or it failed): one log line."""
        if port.alive:
            self.limiter.log(self._log, "port-gone",
                             f"network {port.network.name}: port {port.name} removed: {why}")
        with self._lock:
            self._unlist(port)
        self._unregister(port)
        self._forget(port)
        self._close_port(port)

    def _serve_socket(self, port: Port, sock: socket.socket, now: float) -> None:
        buf, view = self._buf, self._view
        for _ in range(DRAIN):
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._drop(port, f"receive failed: {e.strerror or e}")
                return
            if n == 0 and self._hung_up(sock):
                self._drop(port, "its peer closed the socket")
                return
            msg = bytes(view[:n])
            try:
                meta = F.parse(msg)[0]
            except F.FrameError:
                port.drop_bad += 1
                continue
            self._forward(port, msg, meta, now)
            if not port.alive:
                return

    @staticmethod
    def _hung_up(sock: socket.socket) -> bool:
        """After a zero-length receive: EOF, or only an empty message?"""
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _serve_device(self, port: Port, now: float) -> None:
        device = port.device
        assert device is not None
        try:
            frames = device.read_frames()
        except (OSError, EOFError) as e:
            self._drop(port, f"device failed: {e}")
            return
        header = F.HEADER
        for meta, data in frames:
            n = len(data)
            if n < F.ETH_MIN or n > F.MAX_FRAME:
                port.drop_bad += 1
                continue
            msg = header.pack(meta.flags, meta.gso_type, meta.gso_size, 0) + data
            self._forward(port, msg, meta, now)

    def _forward(self, src: Port, msg: bytes, meta: Meta, now: float) -> None:
        """One checked message from ``src``: learn, then deliver to one port or flood the network."""
        if not src.source_ok(msg):
            src.drop_spoof += 1
            return
        size = len(msg) - _H
        src.tx_packets += 1
        src.tx_bytes += size
        owner = src.owner
        if owner is not None:                     # an owned device: to its owner alone, never learned
            if owner.alive:
                self._deliver(owner, msg, meta, size)
            return
        net = src.network
        table = net._table
        smac = msg[_SRC:_SRC + 6]
        if not smac[0] & 1:                       # a multicast source is never learned
            entry = table.get(smac)
            if entry is None or entry[0] is not src or now - entry[1] > 1.0:
                if entry is not None or len(table) < MAC_TABLE_MAX:
                    table[smac] = (src, now)
        dmac = msg[_DST:_DST + 6]
        if not dmac[0] & 1:
            entry = table.get(dmac)
            if entry is not None and now - entry[1] <= MAC_AGE and entry[0].alive:
                dst = entry[0]
                if dst is not src:
                    self._deliver(dst, msg, meta, size)
                return
            known = net._macs.get(dmac)
            if known is not None and known.alive:
                if known is not src:
                    self._deliver(known, msg, meta, size)
                return
            if src.owned:                         # unknown unicast from an owner: its own devices only
                frame = msg[_H:]
                for dst in src.owned:
                    self._deliver_device(dst, meta, frame, size)
                return
        frame_bytes: bytes | None = None
        for dst in net._ports:
            if dst is src or (dst.owner is not None and dst.owner is not src):
                continue
            if dst.sock is not None:
                self._deliver(dst, msg, meta, size)
            else:
                if frame_bytes is None:
                    frame_bytes = msg[_H:]
                self._deliver_device(dst, meta, frame_bytes, size)

    def _deliver(self, dst: Port, msg: bytes, meta: Meta, size: int) -> None:
        sock = dst.sock
        if sock is None:
            self._deliver_device(dst, meta, msg[_H:], size)
            return
        try:
            sock.send(msg)
        except (BlockingIOError, InterruptedError):
            dst.drop_full += 1
            return
        except OSError as e:
            if e.errno in _FULL_ERRNOS:
                dst.drop_full += 1
            else:
                self._drop(dst, f"send failed: {e.strerror or e}")
            return
        dst.rx_packets += 1
        dst.rx_bytes += size

    def _deliver_device(self, dst: Port, meta: Meta, frame: bytes, size: int) -> None:
        assert dst.device is not None
        try:
            ok = dst.device.write_frame(meta, frame)
        except (OSError, EOFError) as e:
            self._drop(dst, f"device failed: {e}")
            return
        if ok:
            dst.rx_packets += 1
            dst.rx_bytes += size
        else:
            dst.drop_full += 1

    def _update_write_interest(self) -> None:
        """Wait for writability only on the buffered devices that hold output."""
        for port in self._buffered:
            dev = port.buffered
            if dev is None or not port.alive:
                continue
            want = dev.wants_write()
            if want != port._write_events:
                try:
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
                    self._sel.modify(port.fd, events, port)
                    port._write_events = want
                except (KeyError, ValueError, OSError):
                    pass

    def _sweep(self, now: float) -> None:
        with self._lock:
            nets = list(self._networks.values())
        for net in nets:
            table = net._table
            for mac in [m for m, (p, t) in table.items() if now - t > MAC_AGE or not p.alive]:
                del table[mac]
