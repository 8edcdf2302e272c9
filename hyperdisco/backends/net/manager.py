"""The toolstack's side of virtual network interfaces (domain 0): pick each vif's device ID and MAC,
write the xenstore nodes libxl writes for a vif, give the domain's netback (in its domain process,
backends/netback/) one end of a ``SOCK_SEQPACKET`` pair and plug the other end into the vif's network
(backends/net/switch.py), start uplinks (backends/net/uplink.py) when a vif asks for one, detach the
way libxl does, and tidy up when a domain goes.

Uplinks: ``uplink=passt`` gives *that vif* its own passt (with that vif's ``hostfwd=``), owned by the vif's
switch port and started and stopped with it, as podman runs one passt per container: passt serves exactly
one guest (one DHCP address for everyone, replies to whichever guest it heard last), so vifs on one network
each get their own. Two vifs cannot forward the same host port. ``uplink=tap:IFNAME`` is the network's (a
tap is a real L2 segment): started by the first vif that asks, stopped when no vif of the network is left;
a network has either a tap or its vifs' passts, not both.

Nodes (libxl's libxl__device_nic_add / libxl__device_generic_add), written in one transaction: the
backend directory /local/domain/0/backend/vif/<domid>/<devid> is owned by domain 0 and readable by the
guest (frontend, frontend-id, online, state, mac, bridge, handle, type, mtu, and ip, rate, vifname when
given); the frontend directory /local/domain/<domid>/device/vif/<devid> is owned by the guest and
readable by domain 0 (backend, backend-id, state, handle, mac). Both start in state 1 (Initialising);
the netback does the rest of the xenbus handshake.

The domain object given to attach/detach provides ``domid``, ``name``, ``attach_vif(devid, args, fd)``
(the descriptor is handed over: the call closes domain 0's copy) and ``detach_vif(devid, wait_s)``
(dom0/handle.py over the channel; tests in process).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...errors import ConfigError, HyperdiscoError
from ..xenbus_backend import remove_device_nodes, write_device_nodes
from . import frame

DETACH_TIMEOUT_S = 10.0  # libxl waits LIBXL_DESTROY_TIMEOUT (10 s) for the frontend, then forces removal
DEFAULT_NETWORK = "xenbr0"  # xl's default bridge
XEN_OUI = bytes((0x00, 0x16, 0x3E))
MAX_VIFS = 64  # per domain
DEFAULT_PREFIX = 24  # the prefix the guest's ip= gets when the config gave an address without one
STATE_INITIALISING, STATE_CLOSING = 1, 5  # XenbusState*
NETWORK_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")  # IFNAMSIZ - 1
STAT_KEYS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drop_spoof", "drop_full", "drop_bad")


@dataclass(frozen=True)
class VifConfig:
    """One vif as the toolstack checked it (toolstack/xlcfg.py parses xl's syntax into this). ``mac``
    and ``devid`` None: chosen at attach. ``ips``: IPv4 addresses with an optional /prefix, as written.
    ``rate``: (bytes per interval, interval in microseconds), as libxl writes it. ``uplink``: "passt" (this
    vif's own) or "tap:IFNAME" (given to the network when it is first used). ``hostfwd``: (tcp|udp, host
    port, guest port) for this vif's passt."""

    network: str = DEFAULT_NETWORK
    mac: str | None = None
    devid: int | None = None
    ips: tuple[str, ...] = ()
    rate: tuple[int, int] | None = None
    uplink: str | None = None
    hostfwd: tuple[tuple[str, int, int], ...] = ()
    vifname: str | None = None

    @property
    def addresses(self) -> frozenset[str] | None:
        """The addresses the switch lets this vif send from (None: any, anti-spoofing by MAC only)."""
        return frozenset(ip.partition("/")[0] for ip in self.ips) if self.ips else None

    def to_record(self) -> dict[str, Any]:
        """What domain 0's record of the domain keeps of this vif (for a successor domain 0)."""
        return {"network": self.network, "mac": self.mac, "devid": self.devid, "ips": list(self.ips),
                "rate": list(self.rate) if self.rate else None, "uplink": self.uplink,
                "hostfwd": [list(f) for f in self.hostfwd], "vifname": self.vifname}

    @classmethod
    def from_record(cls, rec: Any) -> VifConfig:
        """The inverse of to_record, every field checked (ValueError when something is off)."""
        if not isinstance(rec, dict):
            raise ValueError("not an object")

        def opt_str(key: str) -> str | None:
            v = rec.get(key)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{key} is not a string")
            return v

        def items(key: str) -> list[Any]:
            v = rec.get(key) or []
            if not isinstance(v, list):
                raise ValueError(f"{key} is not a list")
            return v

        rate = rec.get("rate")
        if rate is not None and not (isinstance(rate, list) and len(rate) == 2):
            raise ValueError("bad rate")
        fwds = items("hostfwd")
        if not all(isinstance(f, list) and len(f) == 3 for f in fwds):
            raise ValueError("bad hostfwd")
        cfg = cls(network=opt_str("network") or DEFAULT_NETWORK, mac=opt_str("mac"), devid=rec.get("devid"),
                  ips=tuple(items("ips")), rate=(rate[0], rate[1]) if rate is not None else None,
                  uplink=opt_str("uplink"), hostfwd=tuple((f[0], f[1], f[2]) for f in fwds),
                  vifname=opt_str("vifname"))
        check_config(cfg)
        return cfg


def check_config(cfg: VifConfig) -> None:
    """ValueError naming what is wrong (the parser's messages are better; this guards the records)."""
    if not NETWORK_RE.fullmatch(cfg.network):
        raise ValueError(f"bad network name {cfg.network!r}"[:120])
    if cfg.mac is not None:
        mac = frame.mac_bytes(cfg.mac)
        if mac[0] & 1 or mac == bytes(6):
            raise ValueError(f"{cfg.mac} is not a unicast address")
    if cfg.devid is not None and (not isinstance(cfg.devid, int) or isinstance(cfg.devid, bool)
                                  or not 0 <= cfg.devid < 1 << 16):
        raise ValueError("bad devid")
    for ip in cfg.ips:
        if not isinstance(ip, str):
            raise ValueError("bad ip")
        ipaddress.IPv4Interface(ip)
    if cfg.rate is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                        for v in cfg.rate):
        raise ValueError("bad rate")
    if cfg.uplink is not None and cfg.uplink != "passt" and not (
            cfg.uplink.startswith("tap:") and IFNAME_RE.fullmatch(cfg.uplink[4:])):
        raise ValueError(f"bad uplink {cfg.uplink!r}"[:120])
    for fwd in cfg.hostfwd:
        if (len(fwd) != 3 or fwd[0] not in ("tcp", "udp")
                or not all(isinstance(p, int) and 0 < p < 1 << 16 for p in fwd[1:])):
            raise ValueError("bad hostfwd")
    if cfg.vifname is not None and not IFNAME_RE.fullmatch(cfg.vifname):
        raise ValueError("bad vifname")


def derive_mac(domain: str, index: int, attempt: int = 0) -> str:
    """A stable Xen-style address (00:16:3e, then 23 bits of a hash of the domain's name and the vif's
    index: libxl also clears the top bit of the fourth byte). ``attempt`` > 0 after a collision."""
    salt = f"/{attempt}" if attempt else ""
    h = hashlib.sha256(f"hyperdisco-vif:{domain}/{index}{salt}".encode()).digest()
    return frame.mac_text(XEN_OUI + bytes((h[0] & 0x7F, h[1], h[2])))


def guest_cmdline(cmdline: str, vifs: Sequence[VifConfig]) -> str:
    """The kernel command line with the guest's address for its first vif: ``ip=A.B.C.D/NN`` when the vif
    has ip= (the first address; /24 unless written), ``ip=dhcp`` when it has its own passt (uplink=passt:
    another vif's passt on the same network never answers this one), unchanged when it already has an ip=
    token."""
    if not vifs or any(w.startswith("ip=") for w in cmdline.split()):
        return cmdline
    first = vifs[0]
    if first.ips:
        addr, slash, prefix = first.ips[0].partition("/")
        arg = f"ip={addr}/{prefix if slash else DEFAULT_PREFIX}"
    elif first.uplink == "passt":
        arg = "ip=dhcp"
    else:
        return cmdline
    return f"{cmdline} {arg}".strip()


@dataclass
class _Vif:
    """One attached vif: its configuration (devid and mac chosen) and domain 0's end of it."""

    cfg: VifConfig
    port: Any = None  # the switch's Port
    uplink: Any = None  # its own passt (backends/net/uplink.PasstUplink) with uplink=passt, when it runs

    @property
    def devid(self) -> int:
        assert self.cfg.devid is not None
        return self.cfg.devid

    @property
    def mac(self) -> str:
        assert self.cfg.mac is not None
        return self.cfg.mac


@dataclass
class _Uplink:
    """A network's own uplink (a tap)."""

    kind: str
    uplink: Any = None  # backends/net/uplink.Uplink, or None when it could not start
    users: set[tuple[int, int]] = field(default_factory=set)  # (domid, devid) of the network's vifs


class NetworkDevices:
    """Every domain's vifs, domain 0's side. `host` gives the dom0 xenstore connection (host.xs), log,
    and optionally run_dir (where uplinks keep their sockets)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._lock = threading.RLock()
        self._devices: dict[int, dict[int, _Vif]] = {}  # domid -> devid -> vif
        self._uplinks: dict[str, _Uplink] = {}  # network name -> its own uplink (a tap)
        self._switches: Any = None
        self._uplink_dir: Path | None = None

    # -- the switches, created on first use ------------------------------------------------------------
    @property
    def switches(self) -> Any:
        """backends/net/switch.Switches: started with the first vif (a host without vifs runs no thread)."""
        with self._lock:
            if self._switches is None:
                from .switch import Switches

                self._switches = Switches(self.host.log)
            return self._switches

    # -- choosing devids and MACs ----------------------------------------------------------------------
    def prepare(self, domain: str, configs: Sequence[VifConfig], domid: int | None = None) -> list[VifConfig]:
        """Device IDs (0, 1, 2... in order, as xl) and MACs (the given ones, else derive_mac's) for the
        vifs of a domain about to be created (or of `domid`, for a vif added to it), checked against
        every vif on the host: a MAC in use, an uplink that contradicts its network's or a host port another
        vif forwards is one line."""
        with self._lock:
            taken = {v.mac for devs in self._devices.values() for v in devs.values()}
            mine = self._devices.get(domid, {}) if domid is not None else {}
            used_ids = set(mine)
            out: list[VifConfig] = []
            if len(configs) + len(mine) > MAX_VIFS:
                raise ConfigError(f"hyperdisco: {domain}: more than {MAX_VIFS} vifs")
            for cfg in configs:
                devid = cfg.devid
                if devid is None:  # libxl__device_nextid: one more than the highest in use
                    devid = max(used_ids, default=-1) + 1
                elif devid in used_ids:
                    raise ConfigError(f"hyperdisco: {domain} already has a vif {devid}")
                used_ids.add(devid)
                mac = cfg.mac.lower() if cfg.mac is not None else None
                if mac is not None and mac in taken:
                    raise ConfigError(f"hyperdisco: {domain}: mac {mac} is already used by another vif")
                if mac is None:
                    attempt = 0
                    mac = derive_mac(domain, devid)
                    while mac in taken:
                        attempt += 1
                        mac = derive_mac(domain, devid, attempt)
                taken.add(mac)
                self._check_uplink(cfg)
                out.append(replace(cfg, devid=devid, mac=mac))
            # the uplinks these vifs ask for must agree with each other too
            asked: dict[str, str] = {}
            for cfg in out:
                if cfg.uplink is not None:
                    prev = asked.setdefault(cfg.network, cfg.uplink)
                    if prev != cfg.uplink:
                        raise ConfigError(f"hyperdisco: {domain}: two vifs give network {cfg.network} "
                                          f"different uplinks ({prev}, {cfg.uplink})")
            self._check_forwards(domain, out)
            return out

    def _network_uplink(self, network: str) -> str | None:
        """What the network's uplinks are now: its tap's kind, "passt" when vifs on it have their own."""
        up = self._uplinks.get(network)
        if up is not None:
            return up.kind
        for devs in self._devices.values():
            for vif in devs.values():
                if vif.cfg.network == network and vif.cfg.uplink == "passt":
                    return "passt"
        return None

    def _check_uplink(self, cfg: VifConfig) -> None:
        have = self._network_uplink(cfg.network)
        if have is None or cfg.uplink is None or have == cfg.uplink:
            return
        if "passt" in (have, cfg.uplink):
            raise ConfigError(f"hyperdisco: network {cfg.network} already has uplink {have} (not "
                              f"{cfg.uplink}): a tap is the network's, passts are their vifs' own")
        raise ConfigError(f"hyperdisco: network {cfg.network} already has uplink {have} (not {cfg.uplink})")

    def _check_forwards(self, domain: str, configs: Sequence[VifConfig]) -> None:
        """ConfigError when one of these vifs' hostfwd asks for a host port another vif (already attached,
        or earlier in `configs`) forwards."""
        taken: dict[tuple[str, int], str] = {}
        for domid, devs in self._devices.items():
            for vif in devs.values():
                if vif.cfg.uplink == "passt":
                    for proto, hp, _gp in vif.cfg.hostfwd:
                        taken[(proto, hp)] = f"d{domid} vif {vif.devid}"
        for cfg in configs:
            if cfg.uplink != "passt":
                continue
            for proto, hp, gp in cfg.hostfwd:
                who = taken.get((proto, hp))
                if who is not None:
                    raise ConfigError(f"hyperdisco: {domain}: hostfwd {proto}:{hp}:{gp}: host port "
                                      f"{proto} {hp} is already forwarded (to {who})")
                taken[(proto, hp)] = f"{domain} vif {cfg.devid}"

    # -- attach ----------------------------------------------------------------------------------------
    def attach(self, dom: Any, cfg: VifConfig) -> int:
        """Attach one vif to a running (or just built) domain; returns its devid. A cfg without devid or
        mac gets them here (prepare). Undone entirely on failure (a one-line HyperdiscoError)."""
        if cfg.devid is None or cfg.mac is None:
            cfg = self.prepare(dom.name, [cfg], dom.domid)[0]
        vif = _Vif(cfg)
        with self._lock:  # checked again with the vif registered at once: two attaches cannot both pass
            if vif.devid in self._devices.get(dom.domid, {}):
                raise ConfigError(f"hyperdisco: {dom.name} already has a vif {vif.devid}")
            self._check_uplink(cfg)
            self._check_forwards(dom.name, [cfg])
            self._devices.setdefault(dom.domid, {})[vif.devid] = vif
        try:
            self._ensure_uplink(dom.domid, cfg)
            self._write_nodes(dom.domid, cfg)
            self._plug(dom, vif)
            self._start_passt(dom.domid, vif)
        except BaseException:
            self._forget(dom.domid, vif.devid)
            self._remove_nodes(dom.domid, vif.devid)
            raise
        self.host.log(f"d{dom.domid}: vif {vif.devid} {vif.mac} on network {cfg.network}"
                      f"{' ip ' + ' '.join(cfg.ips) if cfg.ips else ''}")
        return vif.devid

    def _plug(self, dom: Any, vif: _Vif) -> None:
        """A new socket pair: our end on the switch, the other handed to the domain's netback."""
        old, vif.port = vif.port, None
        if old is not None:
            old.network.remove_port(old)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        port = None
        try:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    theirs.setsockopt(socket.SOL_SOCKET, opt, frame.SOCKET_BUFFER)
                except OSError:
                    pass
            net = self.switches.get(vif.cfg.network)
            port = net.add_port(f"d{dom.domid}.{vif.devid}", ours, frame.mac_bytes(vif.mac),
                                vif.cfg.addresses)  # the switch owns `ours` from here on
        except BaseException:
            if port is None:
                ours.close()
            theirs.close()
            raise
        try:
            dom.attach_vif(vif.devid, {"mac": vif.mac, "handle": vif.devid}, theirs.detach())
        except BaseException:
            net.remove_port(port)
            raise
        vif.port = port

    def _start_passt(self, domid: int, vif: _Vif) -> None:
        """The vif's own passt (uplink=passt), owned by its switch port: its frames reach this vif alone.
        One that cannot run is one log line (from the uplink), and the vif works without it."""
        if vif.cfg.uplink != "passt" or vif.port is None:
            return
        from .uplink import make_uplink

        what = f"d{domid}: vif {vif.devid}"
        try:
            uplink = make_uplink("passt", vif.port.network, self._run_dir(), list(vif.cfg.hostfwd),
                                 self.host.log, owner=vif.port)
            if uplink is None:
                return
            if not uplink.start():
                uplink.close()
                return
        except (OSError, HyperdiscoError, ValueError) as exc:
            self.host.log(f"{what}: uplink passt not started: {exc}")
            return
        vif.uplink = uplink
        fwds = ";".join(f"{p}:{h}:{g}" for p, h, g in vif.cfg.hostfwd)
        self.host.log(f"{what}: uplink passt{' hostfwd ' + fwds if fwds else ''}")

    def _stop_passt(self, domid: int, vif: _Vif) -> None:
        uplink, vif.uplink = vif.uplink, None
        if uplink is None:
            return
        try:
            uplink.close()
        except Exception as exc:
            self.host.log(f"d{domid}: vif {vif.devid}: closing its passt: {type(exc).__name__}: {exc}")

    def _ensure_uplink(self, domid: int, cfg: VifConfig) -> None:
        """The network's own uplink (a tap): started by the first vif that asks for it."""
        with self._lock:
            up = self._uplinks.get(cfg.network)
            if up is None:
                if cfg.uplink is None or cfg.uplink == "passt":
                    return
                up = self._uplinks[cfg.network] = _Uplink(cfg.uplink)
                start = True
            else:
                start = False
            up.users.add((domid, cfg.devid or 0))
        if start:
            up.uplink = self._start_uplink(cfg.network, up)

    def _start_uplink(self, network: str, up: _Uplink) -> Any:
        """make_uplink + start; None (and one log line from the uplink) when it cannot run."""
        from .uplink import make_uplink

        try:
            uplink = make_uplink(up.kind, self.switches.get(network), self._run_dir(), [], self.host.log)
            if uplink is None:
                return None
            if not uplink.start():
                uplink.close()
                return None
            self.host.log(f"network {network}: uplink {up.kind}")
            return uplink
        except (OSError, HyperdiscoError, ValueError) as exc:
            self.host.log(f"network {network}: uplink {up.kind} not started: {exc}")
            return None

    def _run_dir(self) -> Path:
        """Where uplinks keep their sockets: <run_dir>/net when domain 0 may write there, else a private
        temporary directory."""
        if self._uplink_dir is None:
            base = getattr(self.host, "run_dir", None)
            path: Path | None = None
            if base is not None:
                try:
                    path = Path(base) / f"net.{os.getpid()}"
                    path.mkdir(mode=0o700, exist_ok=True)
                except OSError:
                    path = None
            self._uplink_dir = path or Path(tempfile.mkdtemp(prefix="hyperdisco-net-"))
        return self._uplink_dir

    def _release_uplink(self, domid: int, devid: int, network: str) -> None:
        """The vif left its network: an uplink nobody uses any more is stopped (its forwards freed)."""
        with self._lock:
            up = self._uplinks.get(network)
            if up is None:
                return
            up.users.discard((domid, devid))
            if up.users:
                return
            del self._uplinks[network]
        if up.uplink is not None:
            try:
                up.uplink.close()
            except Exception as exc:
                self.host.log(f"network {network}: closing its uplink: {type(exc).__name__}: {exc}")
            self.host.log(f"network {network}: uplink {up.kind} stopped (no vif uses it)")

    def _write_nodes(self, domid: int, cfg: VifConfig) -> None:
        assert cfg.devid is not None and cfg.mac is not None
        xs = self.host.xs
        n, devid = domid, cfg.devid
        be, fe = backend_path(n, devid), frontend_path(n, devid)
        back = [("frontend", fe), ("frontend-id", str(n)), ("online", "1"),
                ("state", str(STATE_INITIALISING)), ("mac", cfg.mac), ("bridge", cfg.network),
                ("handle", str(devid)), ("type", "vif"), ("mtu", "1500")]
        if cfg.ips:
            back.append(("ip", " ".join(cfg.ips)))
        if cfg.rate is not None:
            back.append(("rate", f"{cfg.rate[0]},{cfg.rate[1]}"))
        if cfg.vifname is not None:
            back.append(("vifname", cfg.vifname))
        front = [("backend", be), ("backend-id", "0"), ("state", str(STATE_INITIALISING)),
                 ("handle", str(devid)), ("mac", cfg.mac)]
        write_device_nodes(xs, n, be, fe, back, front)

    # -- detach ----------------------------------------------------------------------------------------
    def find(self, dom: Any, which: int | str) -> int:
        """A vif of `dom` by devid (an int, or a string of digits) or MAC: its devid (ConfigError if none)."""
        with self._lock:
            devs = dict(self._devices.get(dom.domid, {}))
        if isinstance(which, int) or (which.isascii() and which.isdigit() and len(which) <= 5):
            devid = int(which)
            if devid in devs:
                return devid
        else:
            mac = which.lower().replace("-", ":")
            for devid, vif in devs.items():
                if vif.mac == mac:
                    return devid
        raise ConfigError(f"hyperdisco: {dom.name} has no vif {str(which)[:40]!r}")

    def detach(self, dom: Any, which: int | str, timeout: float = DETACH_TIMEOUT_S) -> bool:
        """As libxl: online=0 and state Closing in the backend, wait for the frontend to close, then take
        the port off its switch and remove both directories. False if the guest did not close in time
        (removed anyway)."""
        devid = self.find(dom, which)
        xs = self.host.xs
        be = backend_path(dom.domid, devid)
        try:
            xs.write(f"{be}/online", "0")
            xs.write(f"{be}/state", str(STATE_CLOSING))
        except Exception:
            pass
        clean = dom.detach_vif(devid, timeout)
        if not clean:
            self.host.log(f"d{dom.domid}: vif {devid}: frontend did not close in {timeout:.0f}s, removing it")
        self._forget(dom.domid, devid)
        self._remove_nodes(dom.domid, devid)
        return clean

    def _forget(self, domid: int, devid: int) -> None:
        with self._lock:
            devs = self._devices.get(domid, {})
            vif = devs.pop(devid, None)
            if not devs:
                self._devices.pop(domid, None)
        if vif is None:
            return
        self._stop_passt(domid, vif)
        if vif.port is not None:
            vif.port.network.remove_port(vif.port)
            vif.port = None
        self._release_uplink(domid, devid, vif.cfg.network)

    def _remove_nodes(self, domid: int, devid: int) -> None:
        remove_device_nodes(self.host.xs, "vif", domid, devid)

    def close_domain(self, domid: int) -> None:
        """The domain is going (its process stops its netbacks): ports off the switches, nodes removed."""
        with self._lock:
            devids = list(self._devices.get(domid, {}))
        for devid in devids:
            self._forget(domid, devid)
        if devids:
            try:
                self.host.xs.rm(f"/local/domain/0/backend/vif/{domid}")
            except Exception:
                pass

    # -- a domain adopted from a previous domain 0 -----------------------------------------------------
    def adopt(self, dom: Any, records: Any) -> None:
        """Re-plug the vifs domain 0's record of the domain lists (VifConfig.to_record each): a new socket
        pair per vif, handed to the netback with attach_vif again, the port back on its switch. Nodes
        the restored store still holds are left as they are (the frontend may be connected)."""
        for rec in records if isinstance(records, list) else []:
            try:
                cfg = VifConfig.from_record(rec)
                if cfg.devid is None or cfg.mac is None:
                    raise ValueError("no devid or mac")
            except (ValueError, TypeError) as exc:
                self.host.log(f"d{dom.domid}: a vif in its record is not usable ({exc})"[:300])
                continue
            vif = _Vif(cfg)
            with self._lock:
                self._devices.setdefault(dom.domid, {})[vif.devid] = vif
            try:
                self._ensure_uplink(dom.domid, cfg)
                if self.host.xs.read(f"{backend_path(dom.domid, vif.devid)}/state") is None:
                    self._write_nodes(dom.domid, cfg)
                self._plug(dom, vif)
                self._start_passt(dom.domid, vif)
            except Exception as exc:
                self.host.log(f"d{dom.domid}: vif {vif.devid} not adopted: {exc}"[:300])
                self._forget(dom.domid, vif.devid)

    def configs(self, domid: int) -> list[VifConfig]:
        """The domain's vifs as attached (devid and mac chosen): what its restart or record needs."""
        with self._lock:
            return [v.cfg for _d, v in sorted(self._devices.get(domid, {}).items())]

    def close(self) -> None:
        """Domain 0 stops: every uplink (the vifs' passts, the networks' taps), then the switches."""
        with self._lock:
            ups = list(self._uplinks.items())
            self._uplinks.clear()
            switches, self._switches = self._switches, None
            vifs = [(domid, v) for domid, devs in self._devices.items() for v in devs.values()]
        for domid, vif in vifs:
            self._stop_passt(domid, vif)
        for network, up in ups:
            if up.uplink is not None:
                try:
                    up.uplink.close()
                except Exception as exc:
                    self.host.log(f"network {network}: closing its uplink: {type(exc).__name__}: {exc}")
        if switches is not None:
            switches.close()
        if self._uplink_dir is not None:  # this domain 0's own (net.<pid> or a temporary directory)
            shutil.rmtree(self._uplink_dir, ignore_errors=True)
            self._uplink_dir = None

    # -- listing ---------------------------------------------------------------------------------------
    def stats(self, domid: int) -> list[dict[str, Any]]:
        """Per vif: devid, mac, network and the switch port's counters (tx: frames the guest sent,
        rx: frames delivered to it; drops by kind)."""
        with self._lock:
            vifs = sorted(self._devices.get(domid, {}).items())
        out = []
        for devid, vif in vifs:
            counters = dict.fromkeys(STAT_KEYS, 0)
            if vif.port is not None:
                counters.update({k: int(v) for k, v in vif.port.stats().items() if k in counters})
            out.append({"devid": devid, "mac": vif.mac, "network": vif.cfg.network, **counters})
        return out

    def rows(self, dom: Any) -> list[dict[str, Any]]:
        """xl network-list's columns: Idx BE Mac-Addr handle state evt-ch tx-ring-ref rx-ring-ref BE-path
        (state, event channel and ring refs as the frontend published them, -1 when absent; a frontend
        with queues publishes them under queue-0), plus network, ips and the counters of stats()."""
        xs = self.host.xs

        def num(*paths: str) -> int:
            for path in paths:
                v = xs.read(path)
                if v is not None and v.isascii() and v.isdigit() and len(v) < 12:
                    return int(v)
            return -1

        rows = []
        ips = {v.devid: list(v.cfg.ips) for v in self._devices.get(dom.domid, {}).values()}
        for st in self.stats(dom.domid):
            devid = st["devid"]
            fe, be = frontend_path(dom.domid, devid), backend_path(dom.domid, devid)
            q = f"{fe}/queue-0"
            rows.append({"idx": devid, "be": 0, "mac": st["mac"], "handle": devid,
                         "state": num(f"{fe}/state"),
                         "evtch": num(f"{fe}/event-channel", f"{fe}/event-channel-tx",
                                      f"{q}/event-channel", f"{q}/event-channel-tx"),
                         "tx_ring_ref": num(f"{fe}/tx-ring-ref", f"{q}/tx-ring-ref"),
                         "rx_ring_ref": num(f"{fe}/rx-ring-ref", f"{q}/rx-ring-ref"),
                         "bepath": be, "backend_state": num(f"{be}/state"), "ips": ips.get(devid, []),
                         **{k: v for k, v in st.items() if k not in ("devid", "mac")}})
        return rows


def backend_path(domid: int, devid: int) -> str:
    return f"/local/domain/0/backend/vif/{domid}/{devid}"


def frontend_path(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/vif/{devid}"
