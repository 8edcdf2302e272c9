#!/usr/bin/env python3
"""Network benchmark: hyperdisco's split network driver (xen-netfront, netback, domain 0's switch, the
passt uplink) vs QEMU TCG's virtio-net, same kernel and initramfs.

Each run boots, per hypervisor, two guests on one private network and then one guest with an uplink to
the host, and measures:

1. TCP guest->guest: ``sleep 100000 | nc -l -p PORT > /dev/null`` in one guest (its stdin must stay
   open), ``dd if=/dev/zero bs=64k | nc PEER PORT`` in the other, timed inside the sender with
   /proc/uptime (10 ms steps; busybox's date has no %N) around dd|nc: MiB/s.
2. TCP guest->host: the guest sends to a listener of this script on the host's 127.0.0.1 through its
   gateway (QEMU ``-netdev user``: 10.0.2.2; hyperdisco ``uplink=passt``: passt maps the gateway to the
   host's loopback), timed in the guest and by the host receiver.
3. Ping round trip guest->guest: ``ping -c 20 -i 0.2``, median of the ``time=`` lines.
4. Host CPU seconds per GiB moved, over each transfer: utime+stime of the processes involved (QEMU: its
   processes; hyperdisco: the daemon and all its descendants, domain processes and passt included).

The two peers alternate (A B A B); medians over the runs, ratio = hyperdisco / QEMU. QEMU guests get the
default initramfs plus a second cpio archive with virtio_pci and virtio_net (the default initramfs has
no virtio NIC driver; the guest's /etc/rc loads them quietly where present); hyperdisco guests use the
default initramfs as it is. The QEMU pair is joined by ``-netdev socket`` (listen/connect on 127.0.0.1).

    python bench/net.py [--only qemu|hyperdisco] [--runs 3] [--mib 64] [--out bench/results/net-<ts>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import harness
from harness import KINDS, REPO, TAIL_LINES

# (key in a run's metrics, label, unit)
METRICS = (
    ("g2g_mibps", "TCP guest->guest (guest clock)", "MiB/s"),
    ("g2g_host_mibps", "TCP guest->guest (host wall around the command)", "MiB/s"),
    ("g2g_cpu_s_per_gib", "host CPU per GiB guest->guest", "s/GiB"),
    ("ping_ms", "ping RTT guest->guest (median)", "ms"),
    ("g2h_mibps", "TCP guest->host (guest clock)", "MiB/s"),
    ("g2h_host_mibps", "TCP guest->host (host receiver clock)", "MiB/s"),
    ("g2h_cpu_s_per_gib", "host CPU per GiB guest->host", "s/GiB"),
    ("pair_ready_s", "start -> both guests configured", "s"),
    ("uplink_ready_s", "start -> uplink guest has a lease", "s"),
)
LOWER_IS_BETTER = {"g2g_cpu_s_per_gib", "ping_ms", "g2h_cpu_s_per_gib", "pair_ready_s", "uplink_ready_s"}
MIB = 1 << 20
GIB = 1 << 30
BLOCK = 64 * 1024
PORT = 5001
PING_COUNT = 20
XFER_RE = re.compile(r"NETXFER ([0-9.]+) ([0-9.]+) (\d+)")
RTT_RE = re.compile(r"time=([0-9.]+) ms")
DEFAULT_TIMEOUT = 600.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    harness.say(msg, "net")


@dataclasses.dataclass
class RunResult(harness.Run):
    ping_rtts_ms: list[float] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


# -- host-side probes ----------------------------------------------------------------------------------


def proc_ticks(pid: int) -> int:
    """utime + stime of a live process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


class CpuMeter:
    """CPU seconds the processes under some roots spent between start() and stop() (processes that
    appear in between count from zero; those that exit in between lose their last ticks)."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self.roots = roots
        self.before: dict[int, int] = {}

    def _snapshot(self) -> dict[int, int]:
        return {p: proc_ticks(p) for root in self.roots() for p in process_tree(root)}

    def start(self) -> None:
        self.before = self._snapshot()

    def stop(self) -> float:
        after = self._snapshot()
        return sum(max(0, t - self.before.get(p, 0)) for p, t in after.items()) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """A TCP listener on the host's 127.0.0.1 that reads one connection to its end: bytes, first-byte
    and end times."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = int(self.sock.getsockname()[1])
        self.nbytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self.accepted: float | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.accepted = time.monotonic()
        with conn:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                if self.first is None:
                    self.first = time.monotonic()
                self.nbytes += len(data)
            self.last = time.monotonic()

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)

    def close(self) -> None:
        self.sock.close()


# -- guest-side commands (identical on both hypervisors) -------------------------------------------------


def listen_cmd(port: int) -> str:
    # busybox nc ends when its stdin does, and a background job's stdin is /dev/null: give it a pipe that
    # stays open, so it ends when the sender closes the connection
    return f"(sleep 100000 | nc -l -p {port} > /dev/null) > /dev/null 2>&1 &"


def wait_listening_cmd(port: int) -> str:
    return (f"i=0; while ! netstat -ltn 2>/dev/null | grep -q ':{port} ' && [ $i -lt 100 ]; do sleep 0.1; "
            f"i=$((i + 1)); done")


def send_cmd(peer: str, port: int, mib: int) -> str:
    count = mib * MIB // BLOCK
    # busybox's date has no %N: the guest's uptime clock, in 10 ms steps
    return (f"read s x < /proc/uptime; dd if=/dev/zero bs={BLOCK} count={count} 2>/dev/null "
            f"| nc {peer} {port}; r=$?; read e x < /proc/uptime; echo NETXFER $s $e $r")


def rx_bytes(guest: Serial | Domain) -> int:
    """Bytes the guest's eth0 has received so far."""
    out = guest.run("echo RXBYTES $(cat /sys/class/net/eth0/statistics/rx_bytes)")
    m = re.search(r"RXBYTES (\d+)", out)
    if m is None:
        raise RuntimeError(f"cannot read eth0's rx_bytes: {out.strip()[-200:]!r}")
    return int(m.group(1))


GATEWAY = "$(ip route | awk '/^default/ {print $3; exit}')"


def parse_xfer(out: str, mib: int) -> float:
    """MiB/s from the sender's NETXFER line; raises RuntimeError when it is missing or nc failed."""
    m = XFER_RE.search(out)
    if m is None:
        raise RuntimeError(f"no NETXFER line in the sender's output: {out.strip()[-300:]!r}")
    start, end, status = float(m.group(1)), float(m.group(2)), int(m.group(3))
    if status != 0:
        raise RuntimeError(f"nc exited with status {status}")
    if end <= start:
        raise RuntimeError(f"the guest clock did not advance ({start} -> {end})")
    return mib / (end - start)


# -- QEMU ------------------------------------------------------------------------------------------------


class Serial:
    """A child whose serial console is its stdin/stdout (``-nographic``): a reader thread keeps all output;
    commands are framed by markers the shell's echo of the command line cannot contain."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0, cwd=REPO, start_new_session=True)
        self.buf = ""
        self.cond = threading.Condition()
        self.seq = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            data = self.proc.stdout.read(65536)
            with self.cond:
                if not data:
                    self.cond.notify_all()
                    return
                self.buf += data.decode(errors="replace").replace("\r", "")
                self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, pattern: re.Pattern[str], timeout: float, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = pattern.search(self.buf, start)
                if m is not None:
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"{self.name}: no {pattern.pattern!r} within {timeout:.0f} s")
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: exited with status {self.proc.returncode}")
                self.cond.wait(min(remaining, 0.5))

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, cmd: str, timeout: float = 60.0) -> str:
        """Run ``cmd`` in the guest shell; its output (the shell's status is not checked)."""
        self.seq += 1
        n = self.seq
        with self.cond:
            start = len(self.buf)
        self.send(f"echo '@@'BEGIN{n}\n{cmd}\necho '@@'END{n}\n")  # lines: ``cmd`` may end in '&'
        m = self.expect(re.compile(rf"@@BEGIN{n}\n(.*?)@@END{n}\n", re.S), timeout, start)
        return m.group(1)

    def wait_shell(self, timeout: float) -> None:
        """Until the shell answers (keystrokes before it starts may be lost: ask again every 2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            self.seq += 1
            n = self.seq
            with self.cond:
                start = len(self.buf)
            self.send(f"echo '@@'READY{n}\n")
            try:
                self.expect(re.compile(rf"@@READY{n}\n"), min(2.0, max(0.1, deadline - time.monotonic())),
                            start)
                return
            except RuntimeError:
                if time.monotonic() >= deadline or self.proc.poll() is not None:
                    raise

    def tail(self, n: int = TAIL_LINES) -> list[str]:
        with self.cond:
            return self.buf.splitlines()[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("poweroff -f\n")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)


def build_qemu_initrd(base_initrd: Path, modules_dir: Path, out: Path) -> list[str]:
    """``out`` = the default initramfs + a second cpio with virtio_pci, virtio_net and their dependencies,
    and modules.dep/modules.alias covering them and the default modules (so rc's modprobe finds them)."""
    from hyperdisco.images.cpio import CpioWriter
    from hyperdisco.images.initramfs import GUEST_MODULES
    from hyperdisco.images.kmod import ModuleTree

    tree = ModuleTree(modules_dir)
    mods = tree.load_order([*GUEST_MODULES, "virtio_pci", "virtio_net"])
    w = CpioWriter()
    base = f"lib/modules/{modules_dir.name}"
    dirs: set[str] = set()
    for m in mods:
        parts = f"{base}/{m.relpath}".split("/")[:-1]
        for i in range(1, len(parts) + 1):  # the kernel's unpacker creates no parent directories
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                w.directory(d, 0o755)
        w.file(f"{base}/{m.relpath}", (modules_dir / m.relpath).read_bytes(), 0o644)
    w.file(f"{base}/modules.dep", tree.modules_dep(mods).encode(), 0o644)
    w.file(f"{base}/modules.alias", tree.modules_alias(mods).encode(), 0o644)
    out.write_bytes(base_initrd.read_bytes() + w.finish())
    return [m.relpath for m in mods]


class QemuSide:
    kind = "qemu"

    def __init__(self, qemu: str, bzimage: Path, initrd: Path, memory: int) -> None:
        self.qemu, self.bzimage, self.initrd, self.memory = qemu, bzimage, initrd, memory
        self.guests: list[Serial] = []

    def argv(self, ip: str, netdev: str, mac: str) -> list[str]:
        return [self.qemu, "-accel", "tcg", "-m", str(self.memory), "-nographic", "-no-reboot",
                "-kernel", str(self.bzimage), "-initrd", str(self.initrd),
                "-append", f"console=ttyS0 quiet ip={ip}",
                "-netdev", f"{netdev},id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]

    @contextmanager
    def pair(self, timeout: float) -> Iterator[tuple[Serial, Serial, CpuMeter]]:
        port = free_port()
        a = Serial("qemu-a", self.argv("10.0.0.1/24", f"socket,listen=127.0.0.1:{port}", "52:54:00:00:00:01"))
        self.guests = [a]
        try:
            deadline = time.monotonic() + 10
            while not _listening(port) and time.monotonic() < deadline:
                time.sleep(0.05)
            b = Serial("qemu-b", self.argv("10.0.0.2/24", f"socket,connect=127.0.0.1:{port}",
                                           "52:54:00:00:00:02"))
            self.guests.append(b)
            for g, ip in ((a, "10.0.0.1"), (b, "10.0.0.2")):
                g.expect(re.compile(rf"hyperdisco-guest: eth0 {re.escape(ip)}/24"), timeout)
                g.wait_shell(timeout)
            yield a, b, CpuMeter(lambda: [a.pid, b.pid])
        finally:
            self.teardown()

    @contextmanager
    def uplink(self, timeout: float) -> Iterator[tuple[Serial, CpuMeter]]:
        g = Serial("qemu-up", self.argv("dhcp", "user", "52:54:00:00:00:03"))
        self.guests = [g]
        try:
            g.expect(re.compile(r"hyperdisco-guest: eth0 \d+\.\d+\.\d+\.\d+/\d+"), timeout)
            g.wait_shell(timeout)
            yield g, CpuMeter(lambda: [g.pid])
        finally:
            self.teardown()

    def teardown(self) -> None:
        for g in self.guests:
            g.stop()

    def tails(self) -> list[str]:
        return [f"[{g.name}] {ln}" for g in self.guests for ln in g.tail(10)]


def _listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` (from /proc/net/tcp: connecting would take QEMU's one
    socket-netdev connection)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


# -- hyperdisco ------------------------------------------------------------------------------------------


class Daemon:
    """One ``hyperdisco daemon`` on a private socket, in its own session."""

    def __init__(self, workdir: Path) -> None:
        self.socket = workdir / "control.sock"
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket",
                                          str(self.socket), "-v"], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.proc.returncode}")
            if self.socket.exists() and self.verb("list", timeout=30).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the daemon did not answer on {self.socket} within {timeout:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def verb(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hyperdisco", *args]
        env = {**os.environ, "HYPERDISCO_SOCKET": str(self.socket)}
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=REPO,
                                  env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, -1, "", f"timed out after {timeout:.0f} s")

    def log_tail(self, n: int = TAIL_LINES) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Domain:
    """A domain driven through ``hyperdisco exec`` (which goes through its console)."""

    def __init__(self, daemon: Daemon, name: str) -> None:
        self.daemon, self.name = daemon, name

    def run(self, cmd: str, timeout: float = 60.0) -> str:
        res = self.daemon.verb("exec", self.name, cmd, "--timeout", str(timeout), timeout=timeout + 30)
        if res.returncode < 0 or (res.returncode != 0 and not res.stdout):
            raise RuntimeError(f"exec {self.name}: status {res.returncode}: {res.stderr.strip()[-300:]}")
        return res.stdout

    def wait_for(self, cmd: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            res = self.daemon.verb("exec", self.name, f"{cmd} && echo @@YES", "--timeout", "30", timeout=60)
            if "@@YES" in res.stdout:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name}: {cmd!r} not true within {timeout:.0f} s")
            time.sleep(0.5)


class HyperdiscoSide:
    kind = "hyperdisco"

    def __init__(self, workdir: Path, memory: int) -> None:
        self.workdir, self.memory = workdir, memory
        self.daemon = Daemon(workdir)
        self.created: list[str] = []
        self.seq = 0

    def ensure_daemon(self) -> None:
        if not self.daemon.alive():
            self.daemon.start()

    def create(self, name: str, vif: str) -> Domain:
        cfg = self.workdir / f"{name}.cfg"
        cfg.write_text(f'name = "{name}"\nmemory = {self.memory}\nvif = [ \'{vif}\' ]\n')
        res = self.daemon.verb("create", str(cfg), timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"create {name}: {res.stderr.strip()[-300:]}")
        self.created.append(name)
        return Domain(self.daemon, name)

    @contextmanager
    def pair(self, timeout: float) -> Iterator[tuple[Domain, Domain, CpuMeter]]:
        self.ensure_daemon()
        self.seq += 1
        net = f"benchnet{self.seq}"
        try:
            a = self.create(f"net{self.seq}a", f"mac=00:16:3e:00:00:01, bridge={net}, ip=10.0.0.1/24")
            b = self.create(f"net{self.seq}b", f"mac=00:16:3e:00:00:02, bridge={net}, ip=10.0.0.2/24")
            for d, ip in ((a, "10.0.0.1"), (b, "10.0.0.2")):
                d.wait_for(f"ip -4 addr show eth0 | grep -q {ip}/24", timeout)
            yield a, b, CpuMeter(lambda: [self.daemon.pid])
        finally:
            self.teardown()

    @contextmanager
    def uplink(self, timeout: float) -> Iterator[tuple[Domain, CpuMeter]]:
        self.ensure_daemon()
        self.seq += 1
        try:
            d = self.create(f"net{self.seq}up",
                            f"mac=00:16:3e:00:00:03, bridge=benchup{self.seq}, uplink=passt")
            d.wait_for("ip -4 addr show eth0 | grep -q 'inet '", timeout)
            yield d, CpuMeter(lambda: [self.daemon.pid])
        finally:
            self.teardown()

    def teardown(self) -> None:
        for name in self.created:
            self.daemon.verb("destroy", name, timeout=60)
        self.created = []

    def tails(self) -> list[str]:
        return [f"[daemon] {ln}" for ln in self.daemon.log_tail(20)]

    def stop(self) -> None:
        self.teardown()
        self.daemon.stop()


# -- one run ---------------------------------------------------------------------------------------------


Side = QemuSide | HyperdiscoSide


def measure_pair(side: Side, res: RunResult, mib: int, timeout: float) -> None:
    t0 = time.monotonic()
    with side.pair(timeout) as (a, b, cpu):
        res.metrics["pair_ready_s"] = time.monotonic() - t0
        res.marks["pair_ready"] = res.metrics["pair_ready_s"]
        b.run(listen_cmd(PORT))
        b.run(wait_listening_cmd(PORT), timeout=30)
        a.run("ping -c 1 -W 5 10.0.0.2 > /dev/null 2>&1", timeout=30)  # ARP first
        out = a.run(f"ping -c {PING_COUNT} -i 0.2 10.0.0.2", timeout=60)
        rtts = [float(x) for x in RTT_RE.findall(out)]
        if len(rtts) < PING_COUNT // 2:
            raise RuntimeError(f"ping: {len(rtts)} of {PING_COUNT} replies: {out.strip()[-300:]!r}")
        res.ping_rtts_ms = rtts
        res.metrics["ping_ms"] = statistics.median(rtts)
        rx0 = rx_bytes(b)
        cpu.start()
        t = time.monotonic()
        out = a.run(send_cmd("10.0.0.2", PORT, mib), timeout=timeout)
        wall = time.monotonic() - t
        cpu_s = cpu.stop()
        # nc also ends with status 0 when the connection breaks: the receiver's eth0 must have seen it all
        received = rx_bytes(b) - rx0
        res.details["g2g_receiver_eth0_rx_bytes"] = received
        if received < mib * MIB:
            raise RuntimeError(f"guest->guest: the receiver's eth0 got {received} bytes, less than the "
                               f"{mib * MIB} sent (the connection broke; sender: {out.strip()[-200:]!r})")
        res.metrics["g2g_mibps"] = parse_xfer(out, mib)
        res.metrics["g2g_host_mibps"] = mib / wall
        res.metrics["g2g_cpu_s_per_gib"] = cpu_s / (mib * MIB / GIB)
        res.details["g2g_cpu_s"] = cpu_s


def measure_uplink(side: Side, res: RunResult, mib: int, timeout: float) -> None:
    t0 = time.monotonic()
    with side.uplink(timeout) as (g, cpu):
        res.metrics["uplink_ready_s"] = time.monotonic() - t0
        sink = Sink()
        try:
            cpu.start()
            out = g.run(send_cmd(GATEWAY, sink.port, mib), timeout=timeout)
            cpu_s = cpu.stop()
            sink.wait(10)
        finally:
            sink.close()
        res.metrics["g2h_mibps"] = parse_xfer(out, mib)
        if sink.nbytes != mib * MIB:
            raise RuntimeError(f"the host received {sink.nbytes} bytes of {mib * MIB}")
        if sink.accepted is not None and sink.last is not None and sink.last > sink.accepted:
            res.metrics["g2h_host_mibps"] = mib / (sink.last - sink.accepted)
        res.metrics["g2h_cpu_s_per_gib"] = cpu_s / (mib * MIB / GIB)
        res.details["g2h_cpu_s"] = cpu_s


def one_run(side: Side, index: int, mib: int, timeout: float) -> RunResult:
    res = RunResult(kind=side.kind, index=index, argv=[])
    if isinstance(side, QemuSide):
        res.argv = side.argv("10.0.0.1/24", "socket,listen=127.0.0.1:PORT", "52:54:00:00:00:01")
    failures = []
    for part, measure in (("pair", measure_pair), ("uplink", measure_uplink)):  # each on its own
        try:
            measure(side, res, mib, timeout)
        except (RuntimeError, OSError) as exc:
            failures.append(f"{part}: {exc}")
            res.stdout_tail += side.tails()
    res.failure = "; ".join(failures) or None
    res.ok = not failures
    return res


# -- summarising -------------------------------------------------------------------------------------------


def medians(runs: list[RunResult]) -> dict[str, float]:
    """Per metric, the median over the runs that have it: a metric is recorded only once checked, so a
    run whose other part failed (say, guest->guest) still counts for the part that worked."""
    out: dict[str, float] = {}
    for key, _, _ in METRICS:
        vals = [r.metrics[key] for r in runs if key in r.metrics]
        if vals:
            out[key] = statistics.median(vals)
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} {unit}" if unit in ("ms", "s") else f"{value:.2f} {unit}"


def print_table(results: dict[str, list[RunResult]], med: dict[str, dict[str, float]],
                ratios: dict[str, float]) -> None:
    lines = harness.table_lines(harness.comparison_rows(results, med, ratios, METRICS, _fmt))
    print("medians (ratio = hyperdisco / QEMU; throughput: higher is better, "
          f"{', '.join(sorted(LOWER_IS_BETTER))}: lower is better)")
    print("\n".join(lines))


def print_failures(results: dict[str, list[RunResult]]) -> None:
    for r in (r for k in KINDS for r in results[k] if not r.ok):
        print(f"\nFAILED {r.kind} run {r.index}: {r.failure}")
        harness.print_tails(r)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Network benchmark: hyperdisco vs QEMU TCG")
    p.add_argument("--runs", type=int, default=3, help="runs per hypervisor (default 3)")
    p.add_argument("--mib", type=int, default=64, help="MiB per TCP transfer (default 64)")
    p.add_argument("--memory", type=int, default=256, metavar="MiB", help="guest memory (default 256)")
    p.add_argument("--only", choices=KINDS, help="run only this hypervisor")
    p.add_argument("--out", type=Path, help="JSON results file (default bench/results/net-<timestamp>.json)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="give up on a boot or a transfer after this many seconds (default 600)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.mib < 1:
        p.error("--runs and --mib must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = harness.default_images(say)
    kinds = [args.only] if args.only else list(KINDS)
    qemu = shutil.which("qemu-system-x86_64")
    if "qemu" in kinds and qemu is None:
        say("qemu-system-x86_64 is MISSING: skipping the QEMU peer (apt-get install qemu-system-x86)")
        kinds.remove("qemu")
    if "hyperdisco" in kinds and shutil.which("passt") is None:
        say("passt is missing: the hyperdisco uplink (guest->host) will fail (apt-get install passt)")
    if not kinds:
        return 1

    stamp = harness.timestamp()
    out_path = harness.results_path(args.out, "net", stamp)
    results: dict[str, list[RunResult]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="hyperdisco-netbench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the jailed domain processes open nothing here, but the daemon's socket is
        sides: dict[str, Side] = {}
        qemu_modules: list[str] = []
        if "qemu" in kinds:
            assert qemu is not None
            initrd = work / "initrd-virtio-net.cpio"
            modules_dir = images.bzimage.parent.parent / "lib" / "modules" / images.kernel_release
            qemu_modules = build_qemu_initrd(images.initrd, modules_dir, initrd)
            sides["qemu"] = QemuSide(qemu, images.bzimage, initrd, args.memory)
        if "hyperdisco" in kinds:
            sides["hyperdisco"] = HyperdiscoSide(work, args.memory)
        try:
            for kind, i, label in harness.schedule(args.runs, kinds):
                say(f"{label} ...")
                r = one_run(sides[kind], i, args.mib, args.timeout)
                results[kind].append(r)
                if r.ok:
                    m = r.metrics
                    say(f"{label} ok: guest->guest {m['g2g_mibps']:.1f} MiB/s, ping {m['ping_ms']:.3f} ms, "
                        f"guest->host {m['g2h_mibps']:.1f} MiB/s, CPU {m['g2g_cpu_s_per_gib']:.1f} / "
                        f"{m['g2h_cpu_s_per_gib']:.1f} s/GiB")
                else:
                    say(f"{label} FAILED: {r.failure}")
        finally:
            hd = sides.get("hyperdisco")
            if isinstance(hd, HyperdiscoSide):
                hd.stop()

    med = {k: medians(results[k]) for k in KINDS}
    ratios = harness.ratios(med)
    print_table(results, med, ratios)
    print_failures(results)
    doc = {
        "benchmark": "net",
        "started": stamp,
        "config": {"runs": args.runs, "mib": args.mib, "memory_mib": args.memory, "timeout_s": args.timeout,
                   "kinds": kinds, "block_bytes": BLOCK, "ping_count": PING_COUNT,
                   "kernel_release": images.kernel_release, "kernel_elf": str(images.kernel),
                   "bzimage": str(images.bzimage), "initrd": str(images.initrd),
                   "qemu_extra_modules": qemu_modules},
        "host": {"cpu_model": harness.cpu_model(), "nproc": os.cpu_count(),
                 "loadavg_at_start": os.getloadavg(),
                 "python": sys.version.split()[0], "unicorn": harness.unicorn_version(),
                 "qemu": harness.first_line([qemu, "--version"]) if qemu else None,
                 "passt": shutil.which("passt"), "hyperdisco_commit": harness.hyperdisco_commit()},
        "metric_units": {key: unit for key, _, unit in METRICS},
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "runs": {k: [dataclasses.asdict(r) for r in results[k]] for k in kinds},
        "medians": {k: med[k] for k in kinds},
        "ratios_hyperdisco_over_qemu": ratios,
    }
    harness.write_json(out_path, doc, say)
    return 0 if all(r.ok for k in kinds for r in results[k]) else 1


if __name__ == "__main__":
    sys.exit(main())
