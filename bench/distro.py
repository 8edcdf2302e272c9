#!/usr/bin/env python3
"""Distribution benchmark: one Debian image (systemd, its own cloud kernel) on hyperdisco and QEMU TCG.

The image is built once with ``hyperdisco images debian`` (python3 and gcc added, a root password set)
and cached in ``cache_dir()/bench/distro``; every run boots a fresh copy of it. hyperdisco boots it with
``bootloader = "pygrub"`` through its own daemon (``create CFG -c``: the console on a pipe); QEMU boots
the same kernel and initramfs, taken out of the image with hyperdisco's pygrub, with the image as a
virtio-blk disk and the console on ttyS0. The harness logs in as root on each console and times, from
the spawn: the kernel banner, the login prompt, a first command; then, inside the guest: the kernel's
'crng init done', ``systemd-analyze`` (and its blame), a Python job and a gcc job; and on hyperdisco when
its ``exec`` verb works. See bench/README.md.

    python bench/distro.py [--runs 3] [--only qemu|hyperdisco] [--memory 512] [--rebuild-image]
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from boot import find_qemu, host_info
from density import Daemon
from harness import KINDS, REPO, TAIL_LINES, say

from hyperdisco.cachedir import cache_dir
from hyperdisco.dom0.handle import GUEST_READY as GUEST_READY_BYTES

PASSWORD = "bench"
PACKAGES = ("python3", "gcc", "libc6-dev")  # gcc only Recommends libc6-dev (headers, crt1.o)
SUITE = "bookworm"
SIZE = "4G"
HOSTNAME_PROMPT = rb"login: "
# QEMU has no hvc0: the image's getty on it would wait 90 s for the device and hold back the end of the
# boot (and so systemd-analyze), so QEMU's command line masks it. The getty on ttyS0 comes from
# systemd's getty generator (console=ttyS0), as the one on hvc0 does on hyperdisco.
QEMU_EXTRA = "console=ttyS0 systemd.mask=serial-getty@hvc0.service"
HD_EXTRA = "console=hvc0"
PYTHON_JOB = "python3 -c 'print(sum(i * i for i in range(4000000)))'"
C_SOURCE = (
    "#include <stdio.h>",
    "#include <stdlib.h>",
    "#include <string.h>",
    "static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }",
    "int main(void) {",
    "    static int v[4096]; char s[64];",
    "    for (int i = 0; i < 4096; i++) v[i] = (i * 7919) % 4096;",
    "    qsort(v, 4096, sizeof v[0], cmp);",
    "    snprintf(s, sizeof s, \"%d %d\", v[0], v[4095]); puts(s);",
    "    return strlen(s) == 0;",
    "}",
)
GCC_JOB = "gcc -O2 -o /tmp/job /tmp/job.c && /tmp/job"
BLAME_LINES = 5
GUEST_READY = GUEST_READY_BYTES.decode()  # what the daemon's exec waits for on a domain's console

METRICS = (
    ("linux_banner_s", "wall to 'Linux version'", "s"),
    ("crng_console_s", "wall to 'crng init done'", "s"),
    ("crng_kernel_s", "'crng init done' (kernel clock)", "s"),
    ("login_prompt_s", "wall to 'login:'", "s"),
    ("first_command_s", "wall to a command (console login)", "s"),
    ("exec_call_s", "one exec call (see notes)", "s"),
    ("sd_kernel_s", "systemd-analyze kernel", "s"),
    ("sd_initrd_s", "systemd-analyze initrd", "s"),
    ("sd_userspace_s", "systemd-analyze userspace", "s"),
    ("sd_total_s", "systemd-analyze total", "s"),
    ("python_s", "python3 job (guest clock)", "s"),
    ("python_host_s", "python3 job (host clock)", "s"),
    ("gcc_s", "gcc -O2 job (guest clock)", "s"),
    ("gcc_host_s", "gcc -O2 job (host clock)", "s"),
    ("poweroff_s", "poweroff -> exit", "s"),
)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")
SPAN = re.compile(r"(\d+(?:\.\d+)?)(min|ms|us|h|s)\b")
SPAN_UNITS = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
STARTUP_PARTS = ("firmware", "loader", "kernel", "initrd", "userspace")
KERNEL_TS = re.compile(r"\[\s*(\d+\.\d+)\]")
# Kernel lines timed as they arrive on the console (both peers print the kernel log there)
EVENT_LINES = (("linux_banner", rb"Linux version "), ("crng_console", rb"crng init done"))


class StepFailed(Exception):
    pass


@dataclasses.dataclass
class RunResult(harness.Run):
    system_state: str | None = None
    blame: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    analyze: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    console_log: str | None = None


# -- a console on a pipe -------------------------------------------------------------------------------


class Console:
    """A child whose stdout (and stderr) is a guest console and whose stdin types into it. Every byte's
    arrival time is kept, so a match can be timed after the fact."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.buf = bytearray()
        self.ends: list[int] = []  # end offset of each chunk read ...
        self.times: list[float] = []  # ... and when it arrived (s since the spawn)
        self.pos = 0  # where the next expect() starts looking
        self.eof = False
        self.n = 0
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0, cwd=REPO, env=env,
                                     start_new_session=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def at(self, offset: int) -> float:
        """When the byte at ``offset`` arrived."""
        i = bisect.bisect_right(self.ends, offset)
        return self.times[min(i, len(self.times) - 1)]

    def read(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not r:
            return
        data = os.read(fd, 65536)
        if not data:
            self.eof = True
            return
        self.buf += data
        self.ends.append(len(self.buf))
        self.times.append(self.now())

    def expect(self, pattern: bytes, timeout: float, what: str) -> re.Match[bytes]:
        """The first match of ``pattern`` after the last one; StepFailed after ``timeout`` s or at EOF."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf, self.pos)
            if m is not None:
                self.pos = m.end()
                return m
            if self.eof:
                raise StepFailed(f"console closed while waiting for {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"no {what} within {timeout:.0f} s")
            self.read(min(left, 1.0))

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:
            raise StepFailed("console closed") from None

    def run(self, command: str, timeout: float) -> tuple[int, str, float]:
        """Type ``command`` at the root shell: (exit status, output, host seconds from the begin marker
        to the end marker). The markers are assembled by printf, so the echo of the typed line never
        matches them."""
        self.n += 1
        n = self.n
        # one line: a second line typed while the command runs would be echoed into its output
        self.send(f"printf '@@%s{n}@@\\n' B; {command}; printf '@@%s{n} %d@@\\n' E $?\n".encode())
        b = self.expect(rb"@@B" + str(n).encode() + rb"@@\r?\n", timeout, f"the start of {command!r}")
        e = self.expect(rb"@@E" + str(n).encode() + rb" (\d+)@@", timeout, f"the end of {command!r}")
        body = ANSI.sub(b"", bytes(self.buf[b.end():e.start()])).replace(b"\r", b"")
        return int(e.group(1)), body.decode(errors="replace"), self.at(e.start()) - self.at(b.end() - 1)

    def wait_exit(self, timeout: float) -> float | None:
        """Read until the child exits; when it did (s since the spawn), None if it did not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self.now()
            if self.eof:
                time.sleep(0.05)
            else:
                self.read(0.2)
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def text(self) -> str:
        return ANSI.sub(b"", bytes(self.buf)).replace(b"\r", b"").decode(errors="replace")


# -- parsing what the guest prints ---------------------------------------------------------------------


def timespan(text: str) -> float:
    """A systemd timespan ("1min 2.345s", "812ms") in seconds."""
    return sum(float(v) * SPAN_UNITS[u] for v, u in SPAN.findall(text))


def parse_analyze(text: str) -> dict[str, float]:
    """``Startup finished in 1.2s (kernel) + 3.4s (initrd) + 10s (userspace) = 14.6s``."""
    out: dict[str, float] = {}
    line = next((ln for ln in text.splitlines() if "Startup finished in" in ln), None)
    if line is None:
        return out
    head, _, total = line.partition(" = ")
    for part in head.split("finished in", 1)[1].split(" + "):
        m = re.match(r"\s*(.+?)\s*\((\w+)\)", part)
        if m and m.group(2) in STARTUP_PARTS:
            out[f"sd_{m.group(2)}_s"] = timespan(m.group(1))
    if total:
        out["sd_total_s"] = timespan(total)
    return out


def parse_blame(text: str) -> list[tuple[float, str]]:
    rows = []
    for line in text.splitlines():
        parts = line.strip().rsplit(" ", 1)
        if len(parts) == 2 and parts[1].endswith((".service", ".mount", ".device", ".socket", ".target",
                                                   ".swap", ".timer", ".slice", ".scope", ".path")):
            rows.append((timespan(parts[0]), parts[1]))
    return rows


def job_line(command: str) -> str:
    """``command`` timed by the guest's clock: prints ``JOB <status> <microseconds>``."""
    return (f"a=$(date +%s%N); {{ {command}; }} >/tmp/job.out 2>&1; r=$?; b=$(date +%s%N); "
            "echo JOB $r $(( (b - a) / 1000 ))")


def parse_job(out: str) -> tuple[int, float] | None:
    m = re.search(r"JOB (\d+) (\d+)", out)
    return (int(m.group(1)), int(m.group(2)) / 1e6) if m else None


# -- the image -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Image:
    path: Path
    packages: list[str]
    build_s: float | None  # None: reused from the cache
    kernel: Path  # taken out of the image for QEMU
    initrd: Path
    args: str  # pygrub's arguments for it (root=UUID=... ro)
    kernel_name: str


def image_dir() -> Path:
    return cache_dir() / "bench" / "distro"


def build_image(path: Path, packages: list[str]) -> float:
    argv = [sys.executable, "-m", "hyperdisco", "images", "debian", str(path), "--suite", SUITE, "--size",
            SIZE, "--password", PASSWORD, "--packages", ",".join(packages)]
    say(f"building the image: {' '.join(argv[2:])}")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", cwd=REPO)
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        last = line.rstrip() or last
        if "mmdebstrap: I:" in line or "mkfs" in line or "configuring" in line:
            say(f"image: {line.rstrip().removeprefix('hyperdisco: ')}")
    if proc.wait() != 0:
        raise StepFailed(f"images debian failed (exit {proc.returncode}): {last[-300:]}")
    return time.monotonic() - t0


def ensure_image(rebuild: bool) -> Image:
    """The cached image (built when missing, when built for other packages, or with ``rebuild``) and the
    kernel, initramfs and arguments pygrub finds in it."""
    from hyperdisco.images.pygrub import boot_files

    d = image_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"debian-{SUITE}-{SIZE}.img"
    meta_path = path.with_suffix(".json")
    meta: dict[str, Any] = {}
    if path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
    build_s: float | None = None
    if rebuild or meta.get("wanted") != list(PACKAGES) or meta.get("password") != PASSWORD:
        if shutil.which("mmdebstrap") is None:
            raise StepFailed("mmdebstrap is missing (apt-get install mmdebstrap): cannot build the Debian "
                             "image")
        if os.geteuid() != 0:
            raise StepFailed("building the Debian image needs root (mmdebstrap's root mode)")
        packages = list(PACKAGES)
        try:
            build_s = build_image(path, packages)
        except StepFailed as exc:  # gcc is optional: try once without it
            say(f"{exc}; building again without gcc")
            packages = [p for p in packages if p not in ("gcc", "libc6-dev")]
            build_s = build_image(path, packages)
        meta = {"wanted": list(PACKAGES), "packages": packages, "password": PASSWORD, "suite": SUITE,
                "size": SIZE, "build_s": build_s, "built": harness.timestamp()}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        say(f"image built in {build_s:.1f} s: {path}")
    else:
        say(f"reusing the image {path} (built {meta.get('built')}; --rebuild-image to build it again)")
    boot_dir = d / "qemu-boot"
    boot_dir.mkdir(exist_ok=True)
    with boot_files(path) as bf:
        kernel = boot_dir / "vmlinuz"
        initrd = boot_dir / "initrd.img"
        shutil.copyfile(bf.kernel, kernel)
        if bf.initrd is None:
            raise StepFailed(f"{path}: pygrub found no initramfs")
        shutil.copyfile(bf.initrd, initrd)
        return Image(path, list(meta["packages"]), build_s, kernel, initrd, bf.args, bf.kernel_name)


def fresh_copy(image: Path, dest: Path) -> None:
    """Every run boots an image that has never been booted (first boot on both peers alike)."""
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(image), str(dest)], check=True)


# -- one run -------------------------------------------------------------------------------------------


class Peer:
    """How each hypervisor starts the image, and what it does around the common steps."""

    kind = ""

    def start(self, index: int, img: Path) -> Console:
        raise NotImplementedError

    def exec_trial(self, index: int, con: Console, res: RunResult) -> None:
        pass

    def wait_off(self, index: int, con: Console, timeout: float) -> float | None:
        """After ``poweroff``: when the guest was gone (s since the spawn), None if not in time."""
        return con.wait_exit(timeout)

    def cleanup(self, index: int) -> None:
        pass


class QemuPeer(Peer):
    kind = "qemu"

    def __init__(self, qemu: str, image: Image, memory: int) -> None:
        self.qemu, self.image, self.memory = qemu, image, memory

    def argv(self, img: Path) -> list[str]:
        return [self.qemu, "-accel", "tcg", "-m", str(self.memory), "-nographic", "-no-reboot",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", f"{self.image.args} {QEMU_EXTRA}",
                "-drive", f"file={img},format=raw,if=virtio"]

    def start(self, index: int, img: Path) -> Console:
        return Console(self.argv(img))


class HyperdiscoPeer(Peer):
    kind = "hyperdisco"

    def __init__(self, daemon: Daemon, workdir: Path, memory: int, exec_timeout: float) -> None:
        self.daemon, self.workdir, self.memory, self.exec_timeout = daemon, workdir, memory, exec_timeout
        self.env = {**os.environ, "HYPERDISCO_SOCKET": str(daemon.socket)}

    def name(self, index: int) -> str:
        return f"distro{index}"

    def config(self, index: int, img: Path) -> Path:
        cfg = self.workdir / f"{self.name(index)}.cfg"
        cfg.write_text(f'name = "{self.name(index)}"\nmemory = {self.memory}\nbootloader = "pygrub"\n'
                       f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]\n"
                       f'extra = "{HD_EXTRA}"\n')
        return cfg

    def argv(self, index: int, img: Path) -> list[str]:
        return [sys.executable, "-m", "hyperdisco", "create", str(self.config(index, img)), "-c"]

    def start(self, index: int, img: Path) -> Console:
        return Console(self.argv(index, img), self.env)

    def exec_call(self, index: int, command: str, timeout: float) -> tuple[bool, float, str]:
        t0 = time.monotonic()
        r = self.daemon.verb("exec", self.name(index), command, "--timeout", str(timeout),
                             timeout=timeout + 30)
        out = (r.stdout + r.stderr).strip().replace(f" {self.name(index)}:", " DOMAIN:")
        return r.returncode == 0, time.monotonic() - t0, out

    def exec_trial(self, index: int, con: Console, res: RunResult) -> None:
        # exec types at the console's shell, but on a domain whose console never printed the busybox
        # initramfs's readiness line it waits for that line first: on this guest it never comes ...
        ok, secs, out = self.exec_call(index, "uname -r", self.exec_timeout)
        res.notes.append(f"exec with root logged in on the console: {'answered' if ok else 'no answer'} "
                         f"after {secs:.1f} s" + (f" ({out.splitlines()[-1][:100]})" if out else ""))
        if ok:
            res.metrics["exec_call_s"] = secs
            return
        # ... unless the root shell prints it: then exec types into that shell
        con.run(f"printf '%s\\n' '{GUEST_READY}'", 30)
        ok, secs, out = self.exec_call(index, "uname -r", 60.0)
        if ok:
            res.metrics["exec_call_s"] = secs
            res.notes.append(f"exec after the root shell printed {GUEST_READY!r}: answered")
        else:
            res.notes.append(f"exec failed even after the readiness line ({secs:.1f} s): {out[-160:]}")

    def wait_off(self, index: int, con: Console, timeout: float) -> float | None:
        # the console client stays attached to a domain that has powered off (issue 10): watch the
        # daemon's list for the domain instead, then detach the client (EOF on its stdin)
        from hyperdisco.client import Connection

        deadline = time.monotonic() + timeout
        with Connection(str(self.daemon.socket)) as conn:
            while time.monotonic() < deadline:
                if all(d.name != self.name(index) for d in conn.list()):
                    gone = con.now()
                    if con.proc.stdin is not None:
                        con.proc.stdin.close()
                    con.wait_exit(10)
                    return gone
                con.read(0.1)
        return None

    def cleanup(self, index: int) -> None:
        self.daemon.verb("destroy", self.name(index), timeout=60)


def run_once(peer: Peer, index: int, image: Image, workdir: Path, timeout: float,
             log_dir: Path | None) -> RunResult:
    img = workdir / f"run-{peer.kind}-{index}.img"
    fresh_copy(image.path, img)
    res = RunResult(kind=peer.kind, index=index, argv=[])
    con = peer.start(index, img)
    res.argv = con.argv
    try:
        steps(con, peer, index, res, timeout)
        res.ok = True
    except StepFailed as exc:
        res.failure = str(exc)
    finally:
        if con.proc.poll() is None:
            con.kill()
        res.exit_status = con.proc.returncode
        peer.cleanup(index)
        img.unlink(missing_ok=True)
    text = con.text()
    for name, pattern in EVENT_LINES:
        m = re.search(pattern, con.buf)
        if m:
            res.metrics[f"{name}_s"] = con.at(m.start())
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{peer.kind}-{index}.log"
        log.write_text(text)
        res.console_log = str(log)
    if not res.ok:
        res.stdout_tail = text.splitlines()[-TAIL_LINES:]
    return res


def steps(con: Console, peer: Peer, index: int, res: RunResult, timeout: float) -> None:
    met = res.metrics
    con.expect(HOSTNAME_PROMPT, timeout, "login prompt")
    met["login_prompt_s"] = con.at(con.pos - 1)
    con.send(b"root\n")
    con.expect(rb"[Pp]assword: ", 60, "password prompt")
    con.send(PASSWORD.encode() + b"\n")
    con.expect(rb"# ", 120, "root shell prompt")
    status, _, _ = con.run("true", 60)
    met["first_command_s"] = con.at(con.pos - 1)

    _, out, _ = con.run("systemctl is-system-running --wait", 600)
    res.system_state = out.strip().splitlines()[-1] if out.strip() else None
    if res.system_state != "running":
        _, failed, _ = con.run("systemctl --failed --no-legend --plain --no-pager", 60)
        res.notes.append(f"system state {res.system_state}; failed units: {' '.join(failed.split()) or '-'}")
    _, out, _ = con.run("systemd-analyze --no-pager", 120)
    res.analyze = out.strip()
    met.update(parse_analyze(out))
    _, out, _ = con.run("systemd-analyze blame --no-pager | head -20", 120)
    res.blame = parse_blame(out)
    _, out, _ = con.run("dmesg | grep -m1 'crng init done'", 60)
    m = KERNEL_TS.search(out)
    if m:
        met["crng_kernel_s"] = float(m.group(1))

    _, out, _ = con.run("command -v python3 gcc", 30)
    if "python3" in out:
        status, out2, host = con.run(job_line(PYTHON_JOB), 300)
        job = parse_job(out2)
        if job and job[0] == 0:
            met["python_s"], met["python_host_s"] = job[1], host
        else:
            res.notes.append(f"python3 job failed: {out2.strip()[-200:]}")
    else:
        res.notes.append("no python3 in the image: python job skipped")
    if "gcc" in out:
        source = " ".join("'" + ln.replace("'", "'\\''") + "'" for ln in C_SOURCE)
        con.run(f"printf '%s\\n' {source} > /tmp/job.c", 30)
        status, out2, host = con.run(job_line(GCC_JOB), 300)
        job = parse_job(out2)
        if job and job[0] == 0:
            met["gcc_s"], met["gcc_host_s"] = job[1], host
        else:
            _, log, _ = con.run("tail -3 /tmp/job.out", 30)
            res.notes.append(f"gcc job failed: {log.strip()[-200:]}")
    else:
        res.notes.append("no gcc in the image: gcc job skipped")

    peer.exec_trial(index, con, res)  # last: it must not delay what is timed above
    t_off = con.now()
    con.send(b"poweroff\n")
    t_exit = peer.wait_off(index, con, 120)
    if t_exit is None:
        res.notes.append("the guest was still there 120 s after poweroff")
    else:
        met["poweroff_s"] = t_exit - t_off


# -- summarising ---------------------------------------------------------------------------------------


def blame_medians(runs: list[RunResult]) -> list[tuple[float, str]]:
    """Per unit, the median over the ok runs of its blame time (0 where a run's list does not have it),
    slowest first."""
    ok = [r for r in runs if r.ok and r.blame]
    units = {u for r in ok for _, u in r.blame}
    med = [(statistics.median(dict((u, s) for s, u in r.blame).get(unit, 0.0) for r in ok), unit)
           for unit in units]
    return sorted(med, reverse=True)


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.2f} {unit}"


def blame_lines(blame: dict[str, list[tuple[float, str]]], kinds: list[str]) -> list[str]:
    rows: list[tuple[str, ...]] = [tuple(f"{k} blame (median)" for k in kinds)]
    for i in range(BLAME_LINES):
        rows.append(tuple(f"{blame[k][i][0]:6.2f} s  {blame[k][i][1]}" if i < len(blame[k]) else ""
                          for k in kinds))
    widths = [max(len(r[c]) for r in rows) for c in range(len(kinds))]
    out = ["    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "    ".join("-" * w for w in widths))
    return out


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="A Debian image (systemd, its own kernel) on hyperdisco and QEMU TCG")
    p.add_argument("--runs", type=int, default=3, help="runs per hypervisor (default 3)")
    p.add_argument("--only", choices=KINDS, help="run only this hypervisor")
    p.add_argument("--memory", type=int, default=512, metavar="MiB", help="guest memory (default 512)")
    p.add_argument("--out", type=Path,
                   help="JSON results file (default bench/results/distro-<timestamp>.json)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the login prompt")
    p.add_argument("--exec-timeout", type=float, default=10.0,
                   help="how long the first exec may wait for an answer (default 10 s)")
    p.add_argument("--rebuild-image", action="store_true", help="build the cached image again")
    p.add_argument("--install-qemu", action="store_true",
                   help="apt-get install qemu-system-x86 if qemu-system-x86_64 is missing")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [args.only] if args.only else list(KINDS)
    qemu = None
    if "qemu" in kinds:
        qemu = find_qemu(args.install_qemu)
        if qemu is None:
            say("qemu-system-x86_64 missing (use --install-qemu to apt-get it); skipping the QEMU peer")
            kinds.remove("qemu")
    if not kinds:
        return 1
    try:
        image = ensure_image(args.rebuild_image)
    except StepFailed as exc:
        say(str(exc))
        return 1
    if "gcc" not in image.packages:
        say("the image has no gcc (its build with gcc failed): the gcc job is skipped")

    stamp = harness.timestamp()
    out_path = harness.results_path(args.out, "distro", stamp)
    log_dir = out_path.with_name(out_path.stem + "-consoles")
    info = host_info(qemu)
    results: dict[str, list[RunResult]] = {k: [] for k in KINDS}
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=image_dir()))
    daemon = Daemon(workdir)
    peers: dict[str, Peer] = {}
    interrupted = False
    try:
        if "hyperdisco" in kinds:
            say(f"starting the daemon on {daemon.socket}")
            daemon.start()
            peers["hyperdisco"] = HyperdiscoPeer(daemon, workdir, args.memory, args.exec_timeout)
        if qemu is not None:
            peers["qemu"] = QemuPeer(qemu, image, args.memory)
        for kind, i, label in harness.schedule(args.runs, kinds):
            say(f"{label} ...")
            r = run_once(peers[kind], i, image, workdir, args.timeout, log_dir)
            results[kind].append(r)
            met = r.metrics
            shown = ", ".join(f"{k.removesuffix('_s')} {met[k]:.2f}" for k in
                              ("login_prompt_s", "first_command_s", "sd_total_s", "python_s", "gcc_s",
                               "exec_call_s") if k in met)
            say(f"{label} {'ok' if r.ok else 'FAILED: ' + str(r.failure)}: {shown}")
            for note in r.notes:
                say(f"  {note}")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: the partial results follow")
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    keys = [key for key, _, _ in METRICS]
    med = {k: harness.medians(results[k], keys) for k in KINDS}
    ratios = harness.ratios(med)
    blame = {k: blame_medians(results[k]) for k in KINDS}
    print("medians (ratio = hyperdisco / QEMU, lower is better for hyperdisco)")
    print("\n".join(harness.table_lines(harness.comparison_rows(results, med, ratios, METRICS, _fmt))))
    print()
    print("\n".join(blame_lines(blame, kinds)))
    notes = sorted({n for k in kinds for r in results[k] for n in r.notes
                    })
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  {n}")
    for k in kinds:
        for r in results[k]:
            if not r.ok:
                print(f"\nFAILED {r.kind} run {r.index}: {r.failure}")
                harness.print_tails(r)

    doc = {
        "benchmark": "distro",
        "started": stamp,
        "config": {"runs": args.runs, "memory_mib": args.memory, "kinds": kinds, "suite": SUITE, "size": SIZE,
                   "packages": image.packages, "image": str(image.path), "image_build_s": image.build_s,
                   "kernel": image.kernel_name, "pygrub_args": image.args, "qemu_extra": QEMU_EXTRA,
                   "hyperdisco_extra": HD_EXTRA, "python_job": PYTHON_JOB, "gcc_job": GCC_JOB,
                   "c_source": list(C_SOURCE),
                   "argv": {k: results[k][0].argv for k in kinds if results[k]}},
        "host": info,
        "metric_units": {key: unit for key, _, unit in METRICS},
        "runs": {k: [dataclasses.asdict(r) for r in results[k]] for k in kinds},
        "medians": {k: med[k] for k in kinds},
        "ratios_hyperdisco_over_qemu": ratios,
        "blame_medians": {k: blame[k] for k in kinds},
        "interrupted": interrupted,
    }
    harness.write_json(out_path, doc, say)
    return 0 if not interrupted and all(r.ok for k in kinds for r in results[k]) else 1


if __name__ == "__main__":
    sys.exit(main())
