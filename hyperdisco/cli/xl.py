"""The xl-style verbs: thin clients of the daemon's control socket (toolstack/protocol.py)."""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import termios
import time
import tty
from dataclasses import asdict
from typing import Any

from ..client import Connection, Domain, config_of_file
from ..errors import HyperdiscoError
from ..toolstack.protocol import Client, encode

DETACH = b"\x1d"


def _stream_ok(first: bytes) -> bool:
    """The daemon's answer before a stream starts; its one-line error goes to stderr."""
    try:
        reply = json.loads(first)
    except ValueError:
        reply = {"ok": False, "error": "hyperdisco: the daemon closed the connection"}
    if not reply.get("ok"):
        print(reply.get("error", "hyperdisco: refused"), file=sys.stderr)
        return False
    return True


def _answer_line(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """The daemon's one-line answer before a stream, read a byte at a time so that nothing of the stream
    after it is left in a buffer select cannot see."""
    line = bytearray()
    while not line.endswith(b"\n") and len(line) < limit:
        b = sock.recv(1)
        if not b:
            break
        line += b
    return bytes(line)


def _client(args: argparse.Namespace) -> Client:
    return Client(getattr(args, "socket", None))


def _conn(args: argparse.Namespace) -> Connection:
    return Connection(getattr(args, "socket", None))


def cmd_create(args: argparse.Namespace) -> int:
    print(f"Parsing config from {args.config}", file=sys.stderr)
    config, conn = config_of_file(args.config, args.overrides), _conn(args)
    if config.get("restore") is None:
        dom = conn.create(config)
    else:  # a clone: say whether its random generator was reseeded, as restore does
        r = conn.call("create", config=dict(config))
        print(f"Random: {r.get('reseed', 'NOT reseeded')}", file=sys.stderr)
        dom = Domain(conn, int(r["domid"]), str(r["name"]))
    if args.console:
        return console(args, str(dom.domid), dom.name)
    return 0


def cmd_block_attach(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..toolstack.xlcfg import parse_disk

    spec = parse_disk(args.spec, "block-attach", Path.cwd())
    _client(args).call("block_attach", dom=args.dom, disk=asdict(spec))
    return 0


def cmd_block_detach(args: argparse.Namespace) -> int:
    if not _client(args).call("block_detach", dom=args.dom, vdev=args.vdev, timeout=args.timeout):
        print(f"hyperdisco: {args.vdev}: the guest did not release it in time; removed anyway",
              file=sys.stderr)
    return 0


def cmd_block_list(args: argparse.Namespace) -> int:
    print(f"{'Vdev':<6}{'BE':<4}{'handle':<7}{'state':<6}{'evt-ch':<7}{'ring-ref':<9}BE-path")
    for r in _client(args).call("block_list", dom=args.dom):
        print(f"{r['vdev']:<6}{r['be']:<4}{r['handle']:<7}{r['state']:<6}{r['evtch']:<7}{r['ringref']:<9}"
              f"{r['bepath']}")
    return 0


def cmd_network_attach(args: argparse.Namespace) -> int:
    from ..toolstack.xlcfg import parse_vif

    spec = parse_vif(",".join(args.params), "network-attach")
    _client(args).call("network_attach", dom=args.dom, vif=spec.params)
    return 0


def cmd_network_detach(args: argparse.Namespace) -> int:
    if not _client(args).call("network_detach", dom=args.dom, dev=args.dev, timeout=args.timeout):
        print(f"hyperdisco: vif {args.dev}: the guest did not release it in time; removed anyway",
              file=sys.stderr)
    return 0


def _size(n: int) -> str:
    """A byte count in 5 characters or fewer: 999, 1.2K, 34M, 5.6G."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return str(n)


def _drops(v: dict[str, Any]) -> int:
    return int(v.get("drop_spoof", 0)) + int(v.get("drop_full", 0)) + int(v.get("drop_bad", 0))


def _vif_counters(v: dict[str, Any]) -> str:
    """A vif's counters as the guest sees them (tx: it sent; rx: delivered to it) and its drops by kind."""
    return (f"tx {v['tx_packets']} pkts {_size(v['tx_bytes'])}B  rx {v['rx_packets']} pkts "
            f"{_size(v['rx_bytes'])}B  drops {_drops(v)} (spoof {v['drop_spoof']}, full {v['drop_full']}, "
            f"bad {v['drop_bad']})")


def cmd_network_list(args: argparse.Namespace) -> int:
    c = _client(args)
    print(f"{'Idx':<4}{'BE':<3}{'Mac Addr.':<18}{'handle':<7}{'state':<6}{'evt-ch':<7}{'tx-ring-ref':<12}"
          f"{'rx-ring-ref':<12}BE-path")
    for dom in args.doms:
        for r in c.call("network_list", dom=dom):
            print(f"{r['idx']:<4}{r['be']:<3}{r['mac']:<18}{r['handle']:<7}{r['state']:<6}{r['evtch']:<7}"
                  f"{r['tx_ring_ref']:<12}{r['rx_ring_ref']:<12}{r['bepath']}")
            ips = f"  ip {' '.join(r['ips'])}" if r.get("ips") else ""
            print(f"    network {r['network']}{ips}  {_vif_counters(r)}")
    return 0


def cmd_vcpu_set(args: argparse.Namespace) -> int:
    _client(args).call("vcpu_set", dom=args.dom, vcpus=args.vcpus)
    return 0


def cmd_vcpu_list(args: argparse.Namespace) -> int:
    """xl vcpu-list's table (tools/xl/xl_vcpu.c, print_vcpuinfo)."""
    c = _client(args)
    print(f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} Affinity (Hard / Soft)")
    rows = [r for d in args.doms for r in c.call("vcpu_list", dom=d)] if args.doms else c.call("vcpu_list")
    for r in rows:
        if r["online"]:
            cpu = "-" if r["cpu"] is None else str(r["cpu"])
            state = f"{'r' if r['running'] else '-'}{'b' if r['blocked'] else '-'}-"
        else:
            cpu, state = "-", "--p"
        print(f"{r['name']:<32} {r['domid']:>5} {r['vcpu']:>5}{cpu:>5} {state:>5} {r['time']:>9.1f}  "
              f"{r['affinity_text']} / {r['soft']}")
    return 0


def cmd_vcpu_pin(args: argparse.Namespace) -> int:
    vcpu: int | str = int(args.vcpu) if args.vcpu.isdigit() else args.vcpu
    if vcpu != "all" and not isinstance(vcpu, int):
        raise HyperdiscoError(f"hyperdisco: vcpu-pin: invalid argument {args.vcpu!r} as VCPU")
    _client(args).call("vcpu_pin", dom=args.dom, vcpu=vcpu, cpus=args.cpus)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = _client(args).call("list", long=args.long)
    print(f"{'Name':<40}{'ID':>5}{'Mem':>6}{'VCPUs':>6}\tState\tTime(s)")
    for r in rows:
        print(f"{r['name']:<40}{r['domid']:>5}{r['mem']:>6}{r['vcpus']:>6}\t{r['state']}\t{r['time']:>7.1f}")
        if args.long and "cmdline" in r:
            print(f"    cmdline: {r['cmdline']}")
            print(f"    on_crash: {r['on_crash']}  restarts: {r['restarts']}")
            for v in r.get("vifs", []):
                print(f"    vif{v['devid']}: {v['mac']} on {v['network']}  {_vif_counters(v)}")
            if r.get("ips"):
                print(f"    ip: {' '.join(r['ips'])}")
    return 0


def _simple(op: str) -> Any:
    """pause, unpause, destroy; domid and domname print the answer."""
    def fn(args: argparse.Namespace) -> int:
        dom = _conn(args).lookup(args.dom)
        if op in ("domid", "domname"):
            print(dom.domid if op == "domid" else dom.name)
        else:
            getattr(dom, op)()
        return 0
    return fn


def parse_mem_mib(text: str) -> int:
    """xl's memory argument (xl_utils.c parse_mem_size_kb): a number, MiB unless it ends in b, k, m, g or
    t; whole MiB here."""
    t = text.strip().lower()
    shift = {"b": -20, "k": -10, "m": 0, "g": 10, "t": 20}.get(t[-1:], None) if t else None
    digits = t[:-1] if shift is not None else t
    if not digits.isascii() or not digits.isdigit() or len(digits) > 15:
        raise HyperdiscoError(f"hyperdisco: invalid memory size {text[:40]!r} (MiB, or with b/k/m/g/t)")
    value = int(digits)
    mib = value << (shift or 0) if (shift or 0) >= 0 else value >> -(shift or 0)
    if mib <= 0 or mib > 1 << 20:
        raise HyperdiscoError(f"hyperdisco: invalid memory size {text[:40]!r}: 1 MiB to 1 TiB")
    return mib


def cmd_mem(args: argparse.Namespace) -> int:
    """mem-set / mem-max DOM MEM."""
    dom = _conn(args).lookup(args.dom)
    mib = parse_mem_mib(args.memory)
    if args.verb == "mem-set":
        dom.mem_set(mib)
    else:
        dom.mem_max(mib)
    return 0


def cmd_shutdown(args: argparse.Namespace, reason: str = "poweroff") -> int:
    dom = _conn(args).lookup(args.dom)
    if not dom.shutdown(reason, wait=getattr(args, "wait", False), timeout=getattr(args, "timeout", 120.0)):
        print(f"hyperdisco: {args.dom} did not shut down within {args.timeout:.0f}s", file=sys.stderr)
        return 1
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    """save DOM FILE: the guest suspends itself, its state goes to FILE, the domain ends."""
    path = os.path.abspath(args.file)
    print(f"Saving domain {args.dom} to {path} (the guest suspends itself)...", file=sys.stderr, flush=True)
    r = _conn(args).call("save", dom=args.dom, file=path, timeout=args.timeout, keep=args.keep)
    if r.get("fsfreeze"):  # only for a domain with the guest agent's channel (docs/guest-agent.md)
        print(f"Filesystems: {r['fsfreeze']}", file=sys.stderr)
    print(f"Saved: {r['detail']}, {r['bytes'] / 1048576:.1f} MiB, {r['seconds']:.2f} s in all",
          file=sys.stderr)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """migrate DOM DEST: live migration to another daemon (its socket path, or HOST:PORT)."""
    dest = args.dest if ":" in args.dest and "/" not in args.dest else os.path.abspath(args.dest)
    print(f"Migrating domain {args.dom} to {dest}...", file=sys.stderr, flush=True)
    r = _conn(args).call("migrate", dom=args.dom, dest=dest, timeout=args.timeout, rate=args.rate)
    print(f"Migrated: {r['rounds']} rounds (pages {'+'.join(str(p) for p in r['round_pages'])}), "
          f"{r['pages']} pages sent ({r['bytes'] / 1048576:.1f} MiB), {r['seconds']:.2f} s in all, "
          f"downtime {r['downtime_s'] * 1000:.0f} ms (suspend asked to running there: "
          f"{r['suspend_to_running_s']:.2f} s)", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """restore FILE: a new domain that carries on where the saved one was."""
    path = os.path.abspath(args.file)
    print(f"Loading new save file {path}...", file=sys.stderr, flush=True)
    r = _conn(args).call("restore", file=path, **({"name": args.name} if args.name else {}),
                         **({"reseed": False} if args.no_reseed else {}))
    print(f"Restored domain {r['name']} (id {r['domid']}) in {r['seconds']:.2f} s", file=sys.stderr)
    print(f"Random: {r.get('reseed', 'NOT reseeded')}", file=sys.stderr)
    return 0


def cmd_reboot(args: argparse.Namespace) -> int:
    return cmd_shutdown(args, "reboot")


def cmd_info(args: argparse.Namespace) -> int:
    for k, v in _conn(args).info().items():
        print(f"{k:<22}: {v}")
    return 0


def cmd_dmesg(args: argparse.Namespace) -> int:
    for line in _conn(args).dmesg(clear=args.clear):
        print(line)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    res = _conn(args).lookup(args.dom).exec(args.command, timeout=args.timeout)
    sys.stdout.buffer.write(res.output)
    sys.stdout.flush()
    return res.status


CP_MAX = 64 << 20  # the daemon's file_read bound (toolstack/agent_ops.py FILE_READ_MAX)


def _cp_side(text: str) -> tuple[str | None, str]:
    """DOM:PATH (a guest path, absolute) or a local path."""
    dom, sep, path = text.partition(":")
    if sep and dom and "/" not in dom and path.startswith("/"):
        return dom, path
    return None, text


def cmd_cp(args: argparse.Namespace) -> int:
    (src_dom, src), (dst_dom, dst) = _cp_side(args.src), _cp_side(args.dst)
    if (src_dom is None) == (dst_dom is None):
        raise HyperdiscoError("hyperdisco: cp: exactly one of SRC and DST must be DOM:/PATH")
    conn = _conn(args)
    if src_dom is not None:
        data = conn.lookup(src_dom).read_file(src, timeout=args.timeout)
        if dst == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            try:
                with open(dst, "wb") as f:
                    f.write(data)
            except OSError as e:
                raise HyperdiscoError(f"hyperdisco: cp: {dst}: {e.strerror}") from e
        return 0
    assert dst_dom is not None
    try:
        with open(src, "rb") as f:
            data = f.read(CP_MAX + 1) if src != "-" else sys.stdin.buffer.read(CP_MAX + 1)
    except OSError as e:
        raise HyperdiscoError(f"hyperdisco: cp: {src}: {e.strerror}") from e
    if len(data) > CP_MAX:
        raise HyperdiscoError("hyperdisco: cp: files up to 64 MiB")
    conn.lookup(dst_dom).write_file(dst, data, timeout=args.timeout)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    c = _client(args)
    prev = c.call("top")
    n = 0
    while args.iterations is None or n < args.iterations:
        time.sleep(args.delay)
        cur = c.call("top")
        dt = max(1e-6, cur["time"] - prev["time"])
        before = {d["domid"]: d for d in prev["domains"]}
        granted = [d["granted_s"] - before.get(d["domid"], d)["granted_s"] for d in cur["domains"]
                   if d.get("granted_s") is not None]
        total = sum(granted) or 1e-9  # the shares of the cores BVT granted over this interval
        lines = [f"{'NAME':<16}{'STATE':>7}{'CPU(sec)':>10}{'CPU(%)':>8}{'SHARE(%)':>9}{'MEM(k)':>10}"
                 f"{'VCPUS':>6}"
                 f"{'TRAPS/s':>10}{'EVENTS/s':>10}{'NETS':>5}{'NETTX(k)':>10}{'NETRX(k)':>10}{'DROPS':>7}"]
        host = 100.0 * (cur["host_cpu_s"] - prev["host_cpu_s"]) / dt
        lines.append(f"{'Domain-0':<16}{'r-----':>7}{cur['host_cpu_s']:>10.0f}{host:>8.1f}{'-':>9}"
                     f"{cur.get('dom0_mem_kib', 0):>10}"
                     f"{os.cpu_count() or 1:>6}{0:>10}{0:>10}{0:>5}{0:>10}{0:>10}{0:>7}")
        for d in cur["domains"]:
            b = before.get(d["domid"], d)
            cpu = 100.0 * (d["cpu_s"] - b["cpu_s"]) / dt
            vifs = d.get("vifs", [])
            tx_k = sum(v["tx_bytes"] for v in vifs) >> 10
            rx_k = sum(v["rx_bytes"] for v in vifs) >> 10
            g = d.get("granted_s")
            was = b.get("granted_s")
            share = "-" if g is None or was is None else f"{100.0 * (g - was) / total:.1f}"
            lines.append(f"{d['name'][:16]:<16}{d['state']:>7}{d['cpu_s']:>10.0f}{cpu:>8.1f}{share:>9}"
                         f"{d['mem_kib']:>10}"
                         f"{d['vcpus']:>6}{(d['traps'] - b['traps']) / dt:>10.0f}"
                         f"{(d['events'] - b['events']) / dt:>10.0f}{len(vifs):>5}{tx_k:>10}{rx_k:>10}"
                         f"{sum(_drops(v) for v in vifs):>7}")
            if args.networks:  # as xentop -n: a line per vif
                old = {v["devid"]: v for v in b.get("vifs", [])}
                for v in vifs:
                    o = old.get(v["devid"], v)
                    tx_rate = (v["tx_bytes"] - o["tx_bytes"]) / dt / 1024
                    rx_rate = (v["rx_bytes"] - o["rx_bytes"]) / dt / 1024
                    tx = f"TX {v['tx_packets']:>9} pkts {_size(v['tx_bytes']):>6}B {tx_rate:>8.1f}k/s"
                    rx = f"RX {v['rx_packets']:>9} pkts {_size(v['rx_bytes']):>6}B {rx_rate:>8.1f}k/s"
                    lines.append(f"    vif{v['devid']} {v['network'][:12]:<12} {tx}  {rx}  drops {_drops(v)}")
        if not args.batch:
            sys.stdout.write("\x1b[H\x1b[2J")
        print("\n".join(lines), flush=True)
        prev = cur
        n += 1
    return 0


def cmd_sched_bvt(args: argparse.Namespace) -> int:
    """xl's Xen 2 verb: without settings a table; with them, set a domain's BVT parameters (or C)."""
    def us(ms: float | None) -> int | None:
        return None if ms is None else round(ms * 1000)
    if args.dom is None and any(v is not None for v in (args.weight, args.warp, args.warpl, args.warpu)):
        raise HyperdiscoError("hyperdisco: sched-bvt: -w/--warp/--warpl/--warpu need a domain")
    r = _client(args).call("sched_bvt", dom=args.dom, weight=args.weight, warp_us=us(args.warp),
                           warpl_us=us(args.warpl), warpu_us=us(args.warpu), ctx_allow_us=us(args.ctx_allow))
    cores = ",".join(map(str, r["cores"]))
    print(f"context switch allowance {r['ctx_allow_us'] / 1000:g} ms, cores {cores}"
          f"{' (pinned)' if r['pinned'] else ''}")
    print(f"{'Name':<32}{'ID':>5}{'Weight':>8}{'Warp(ms)':>10}{'WarpL(ms)':>11}{'WarpU(ms)':>11}{'CPU(s)':>10}")
    for d in r["domains"]:
        print(f"{d['name'][:32]:<32}{d['domid']:>5}{d['weight']:>8}{d['warp_us'] / 1000:>10g}"
              f"{d['warpl_us'] / 1000:>11g}{d['warpu_us'] / 1000:>11g}{d['granted_s']:>10.1f}")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    return console(args, args.dom)


# how a console's last line puts a domain's end (its outcome, as the events stream gives it)
ENDINGS = {"poweroff": "powered off", "reboot": "rebooted (on_reboot does not restart it)",
           "crash": "crashed", "destroyed": "destroyed", "suspend": "suspended",
           "watchdog": "was stopped by its watchdog", "soft_reset": "asked for a soft reset",
           "timeout": "timed out"}
RESTARTS = {"reboot": "rebooted", "crash": "crashed and was restarted"}
LAST_EVENTS_S = 2.0  # after the console closes: how long its domain's last events may take to arrive


class _DomainEvents:
    """The daemon's `events` stream read alongside a console, for one domain: how it ended, and the new
    ID when it restarts. Events are JSON lines; they are read as the socket has them (select), never
    through a buffered reader that select cannot see into."""

    def __init__(self, args: argparse.Namespace, domid: int, name: str) -> None:
        self.domid, self.name = domid, name
        self.ending: tuple[str, str] | None = None  # (event, outcome) of its stop
        self.gone = False  # "destroyed" seen: nothing more will come for it
        self._buf = b""
        self.sock: socket.socket | None = None
        try:
            sock = _client(args).sock
            sock.sendall(encode({"op": "events"}))
            if json.loads(_answer_line(sock)).get("ok"):
                self.sock = sock
            else:
                sock.close()
        except (OSError, ValueError, HyperdiscoError):
            self.sock = None  # no events: the console still works, its last line is vaguer

    def read(self) -> list[str]:
        """Take what arrived; the lines to show now (a restart). sock is None once the daemon hung up."""
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.sock = None
            return []
        self._buf += data
        return self._lines()

    def _lines(self) -> list[str]:
        notes = []
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            event, domid, outcome = ev.get("event"), ev.get("domid"), ev.get("outcome")
            if domid == self.domid and event in ("shutdown", "crashed", "destroyed"):
                if self.ending is None or event != "destroyed":  # "destroyed" repeats why it stopped
                    self.ending = (str(event), str(outcome or event))
                self.gone = self.gone or event == "destroyed"
            elif event == "restarted" and ev.get("domain") == self.name and isinstance(domid, int):
                how = RESTARTS.get(str(outcome), "was restarted")
                notes.append(f"hyperdisco: domain {self.name} {how}; now domain {domid}")
                self.domid, self.ending, self.gone = domid, None, False
        return notes

    def settle(self) -> list[str]:
        """After the console closed: wait (briefly) for the domain's last events."""
        notes: list[str] = []
        deadline = time.monotonic() + LAST_EVENTS_S
        while self.sock is not None and not self.gone:
            left = deadline - time.monotonic()
            if self.ending is not None:
                left = min(left, 0.3)  # stopped and preserved: no "destroyed" will follow
            if left <= 0:
                break
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                break
            notes += self.read()
        return notes

    def last_line(self, args: argparse.Namespace) -> tuple[str, int]:
        if self.ending is None:  # it had stopped before we listened (preserved): ask how
            try:
                rows = _client(args).call("list")
                self.ending = next(("shutdown", str(r["outcome"])) for r in rows
                                   if r.get("domid") == self.domid and r.get("outcome"))
            except (HyperdiscoError, OSError, StopIteration, KeyError, TypeError):
                return f"hyperdisco: the daemon closed the console of {self.name}", 1
        outcome = self.ending[1]
        return f"hyperdisco: domain {self.name} {ENDINGS.get(outcome, f'stopped ({outcome})')}", 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def console(args: argparse.Namespace, dom: str, name: str | None = None) -> int:
    """Attach the terminal to a domain's console until Ctrl-] (status 0) or the domain's end, said in one
    line (status 0; 1 if the daemon went away). It follows the domain through restarts: one line says
    so, and keystrokes go to the new incarnation."""
    c = _client(args)
    if name is None:
        try:
            name = str(c.call("domname", dom=dom))
        except HyperdiscoError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    events = _DomainEvents(args, -1, name)  # before attaching: no event of its end can be missed
    c.sock.sendall(encode({"op": "console", "dom": dom}))
    first = _answer_line(c.sock)  # unbuffered: the stream that follows is read as select sees it
    if not _stream_ok(first):
        events.close()
        return 1
    events.domid = int(json.loads(first)["result"]["domid"])
    sock: socket.socket = c.sock
    fd = sys.stdin.fileno()
    out = sys.stdout.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    eol = "\r\n" if saved is not None else "\n"
    last = b"\n"  # the last byte shown: a message starts on a line of its own

    def show(data: bytes) -> None:
        nonlocal last
        if data:
            os.write(out, data)
            last = data[-1:]

    def note(line: str) -> None:
        nonlocal last
        if last != b"\n":
            os.write(out, eol.encode())
            last = b"\n"
        cr = "\r" if os.isatty(out) else ""  # at column 0 even after a guest's bare newline
        sys.stderr.write(cr + line + eol)
        sys.stderr.flush()

    if saved is not None:
        tty.setraw(fd)
    try:
        while True:
            watched: list[Any] = [sock, fd] + ([events.sock] if events.sock is not None else [])
            r, _, _ = select.select(watched, [], [])
            if events.sock is not None and events.sock in r:
                for line in events.read():
                    note(line)
            if sock in r:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    break
                show(data)
            if fd in r:
                data = os.read(fd, 1024)
                if not data or DETACH in data:
                    if data:
                        sock.sendall(data[:data.index(DETACH)])
                    events.close()
                    return 0
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    eol = "\n"
    for line in events.settle():
        note(line)
    message, status = events.last_line(args)
    note(message)
    events.close()
    return status


def event_line(ev: Any) -> str:
    """One domain event (a client.DomainEvent) as `hyperdisco events` prints it: local time, event,
    domain ID, name, and why it stopped when it did."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.time)) + f".{int(ev.time % 1 * 1000):03d}"
    return f"{stamp} {ev.event:<9} {ev.domid:>5} {ev.domain}" + (f" ({ev.outcome})" if ev.outcome else "")


def cmd_events(args: argparse.Namespace) -> int:
    """Domain state changes, one line each, until interrupted (or -n N of them)."""
    conn = _conn(args)
    with conn, conn.events() as events:
        for n, ev in enumerate(events, 1):
            print(event_line(ev), flush=True)
            if args.count is not None and n >= args.count:
                break
    return 0


def add_verbs(sub: Any) -> None:
    def verb(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--socket", help="the daemon's control socket (default $HYPERDISCO_SOCKET or "
                                        "/run/hyperdisco/control.sock)")
        p.set_defaults(fn=fn)
        return p

    p = verb("create", cmd_create, "create a domain from an xl.cfg file")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("-c", dest="console", action="store_true", help="attach to its console")
    p = verb("list", cmd_list, "list domains")
    p.add_argument("-l", "--long", action="store_true")
    for name, help in (("pause", "pause a domain"), ("unpause", "unpause a domain"),
                       ("destroy", "destroy a domain at once"), ("domid", "print a domain's ID"),
                       ("domname", "print a domain's name")):
        verb(name, _simple(name), help).add_argument("dom")
    for name, help in (("mem-set", "set a domain's memory target: its balloon driver gives back or takes "
                                   "memory (MiB, or with b/k/m/g)"),
                       ("mem-max", "set the most memory a domain may hold")):
        p = verb(name, cmd_mem, help)
        p.add_argument("dom")
        p.add_argument("memory", metavar="MEM")
    for name, fn, help in (("shutdown", cmd_shutdown, "ask a domain to power off"),
                           ("reboot", cmd_reboot, "ask a domain to reboot")):
        p = verb(name, fn, help)
        p.add_argument("dom")
        p.add_argument("-w", dest="wait", action="store_true", help="wait for it to go")
        p.add_argument("--timeout", type=float, default=120.0)
    p = verb("save", cmd_save, "save a running domain to a file (it suspends itself and ends)")
    p.add_argument("-c", dest="keep", action="store_true", help="checkpoint: the domain carries on")
    p.add_argument("dom")
    p.add_argument("file")
    p.add_argument("--timeout", type=float, default=120.0, help="how long the guest may take to suspend")
    p = verb("migrate", cmd_migrate, "live-migrate a running domain to another daemon")
    p.add_argument("dom")
    p.add_argument("dest", help="the other daemon's control socket path, or HOST:PORT (its --migrate-listen)")
    p.add_argument("--timeout", type=float, default=120.0, help="how long the guest may take to suspend")
    p.add_argument("--rate", type=float, default=None, metavar="MIB_S",
                   help="cap the pre-copy's bandwidth (MiB/s; the stop-and-copy is never capped)")
    p = verb("restore", cmd_restore, "create a domain from a save file (again: a clone, docs/clones.md)")
    p.add_argument("-n", "--name", help="the new domain's name (default: the saved one, or NAME-N if taken)")
    p.add_argument("--no-reseed", action="store_true",
                   help="do not reseed the guest's random generator (clones then share its stream a while)")
    p.add_argument("file")
    verb("info", cmd_info, "host and hypervisor information")
    verb("dmesg", cmd_dmesg, "the hypervisor's log").add_argument("-c", dest="clear", action="store_true")
    p = verb("console", cmd_console, "attach to a domain's console (Ctrl-] detaches)")
    p.add_argument("dom")
    p = verb("exec", cmd_exec, "run a shell command in a domain, print its output, exit with its status")
    p.add_argument("dom")
    p.add_argument("command")
    p.add_argument("--timeout", type=float, default=120.0)
    p = verb("cp", cmd_cp, "copy a file into or out of a domain through its guest agent (DOM:/PATH)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--timeout", type=float, default=300.0)
    p = verb("block-attach", cmd_block_attach, "give a running domain a disk (xl disk syntax)")
    p.add_argument("dom")
    p.add_argument("spec", metavar="DISKSPEC")
    p = verb("block-detach", cmd_block_detach, "take a disk away from a running domain")
    p.add_argument("dom")
    p.add_argument("vdev")
    p.add_argument("--timeout", type=float, default=10.0, help="wait this long for the guest to release it")
    p = verb("block-list", cmd_block_list, "a domain's virtual block devices")
    p.add_argument("dom")
    p = verb("network-attach", cmd_network_attach, "give a running domain a vif (xl vif syntax)")
    p.add_argument("dom")
    p.add_argument("params", nargs="*", metavar="KEY=VALUE", help="e.g. bridge=lan0 ip=10.0.0.2/24")
    p = verb("network-detach", cmd_network_detach, "take a vif away from a running domain")
    p.add_argument("dom")
    p.add_argument("dev", metavar="DEVID|MAC")
    p.add_argument("--timeout", type=float, default=10.0, help="wait this long for the guest to release it")
    p = verb("network-list", cmd_network_list, "domains' virtual network interfaces")
    p.add_argument("doms", nargs="+", metavar="DOMAIN")
    p = verb("vcpu-set", cmd_vcpu_set, "set the number of a domain's online vCPUs (up to maxvcpus)")
    p.add_argument("dom")
    p.add_argument("vcpus", type=int)
    p = verb("vcpu-list", cmd_vcpu_list, "vCPUs: host CPU, state, time, affinity")
    p.add_argument("doms", nargs="*", metavar="DOMAIN")
    p = verb("vcpu-pin", cmd_vcpu_pin, "pin a domain's vCPU (or all) to host CPUs (e.g. 0-1,3 or all)")
    p.add_argument("dom")
    p.add_argument("vcpu", metavar="VCPU|all")
    p.add_argument("cpus", metavar="CPUS")
    p = verb("events", cmd_events, "print domain state changes as they happen (created, paused, unpaused, "
                                   "shutdown, crashed, destroyed, restarted)")
    p.add_argument("-n", dest="count", type=int, default=None, metavar="N", help="stop after N events")
    p = verb("sched-bvt", cmd_sched_bvt, "Borrowed Virtual Time: show (a table) or set a domain's weight "
                                         "and warp, or the context-switch allowance")
    p.add_argument("dom", nargs="?")
    p.add_argument("-w", "--weight", type=int, help="CPU shares in proportion to it (1-65535, default 256)")
    p.add_argument("--warp", type=float, metavar="MS", help="warp value: how far ahead it runs when it wakes")
    p.add_argument("--warpl", type=float, metavar="MS", help="warp limit: how long it may stay warped")
    p.add_argument("--warpu", type=float, metavar="MS", help="unwarp requirement: how long before it may "
                                                             "warp again once its warp ran out")
    p.add_argument("-c", "--ctx-allow", type=float, metavar="MS",
                   help="context-switch allowance C, for all domains")
    p = verb("top", cmd_top, "per-domain CPU, memory, traps and events, refreshed")
    p.add_argument("-d", "--delay", type=float, default=1.0)
    p.add_argument("-i", "--iterations", type=int, default=None)
    p.add_argument("-b", "--batch", action="store_true", help="no screen clearing")
    p.add_argument("-n", "--networks", action="store_true", help="a line per vif (as xentop -n)")
    from .xenstore import add_xenstore, cmd_xenstore

    add_xenstore(verb("xenstore", cmd_xenstore, "the store, as xenstore-utils: ls read write rm list exists "
                                                "chmod mkdir watch"))
