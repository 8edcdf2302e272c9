"""Integration layer: boots the real default guest (Debian kernel + busybox initramfs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages, ensure_default_images
from hyperdisco.images.cpio import CpioWriter


@pytest.fixture(scope="session")
def images() -> GuestImages:
    return ensure_default_images()


@pytest.fixture(scope="session")
def pvh_kernel() -> Path:
    """The project's PVH test kernel (tests/pvh_kernel/, booted with pvh_kernel.boot_test_kernel), built
    once per source hash; the test is skipped where the host cannot build it."""
    from .pvh_kernel import BuildUnavailable, build_test_kernel

    try:
        return build_test_kernel()
    except BuildUnavailable as exc:
        pytest.skip(str(exc))


def domain_cfg(tmp_path: Path, name: str, *lines: str, memory: int = 128) -> str:
    """An xl.cfg file for domain `name` with the given extra lines; its path."""
    p = tmp_path / f"{name}.cfg"
    p.write_text(f'name = "{name}"\nmemory = {memory}\n' + "\n".join(lines) + "\n")
    return str(p)


def domain_pid(xl: Xl, name: str) -> int:
    """The domain's process, from the control API's long listing."""
    sock = xl.env["HYPERDISCO_SOCKET"]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(json.dumps({"op": "list", "long": True}).encode() + b"\n")
        reply = json.loads(s.makefile("rb").readline())
    rows = {r["name"]: r for r in reply["result"]}
    return int(rows[name]["pid"])


CC = shutil.which("gcc") or shutil.which("cc")


def build_guest_program(source: Path, out: Path) -> Path:
    """A static program for the guest from tests/guest/*.c (the test is skipped where none can be built)."""
    if CC is None:
        pytest.skip(f"no C compiler (gcc) to build {source.name}")
    p = subprocess.run([CC, "-static", "-O2", "-Wall", "-Wextra", "-o", str(out), str(source)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["failed"])[-1]
        pytest.skip(f"cannot build a static guest program with {CC} -static (libc.a missing?): {last}")
    return out


def initrd_with_program(images: GuestImages, binary: Path, name: str, out: Path) -> Path:
    """The default initramfs with `binary` added as /bin/NAME (a second newc archive appended to the
    first: the kernel unpacks concatenated archives)."""
    extra = CpioWriter()
    extra.file(f"bin/{name}", binary.read_bytes(), 0o755)
    out.write_bytes(Path(images.initrd).read_bytes() + extra.finish())
    return out


def reaches(xl: Xl, dom: str, ip: str, attempts: int = 3) -> bool:
    """Whether `dom` gets echo replies from `ip` (a few tries: on a loaded 2-core host a TCG guest's first
    reply, ARP included, can take longer than ping's wait)."""
    for _ in range(attempts):
        r = xl("exec", dom, f"ping -c 3 -W 5 {ip}", "--timeout", "90", check=False)
        if r.returncode == 0 and re.search(r"[1-9]\d* packets received", r.stdout):
            return True
    return False


def never_reaches(xl: Xl, dom: str, ip: str) -> bool:
    """`dom` gets no reply at all from `ip` (two pings, 3 s of waiting)."""
    r = xl("exec", dom, f"ping -c 2 -W 3 {ip}", "--timeout", "90", check=False)
    return "2 packets transmitted, 0 packets received" in r.stdout


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def hyperdisco(*args: str, input: bytes | None = None, timeout: float = 180) -> Result:
    """Run the CLI. A `run --exec` gets its own --timeout a little shorter than ours, so a guest that
    hangs ends with its console transcript on stdout; a process that still hangs is asked for a dump
    of its threads (SIGUSR1, see cli/main.py) before it is killed, and the test fails showing both."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = list(args)
    if argv[:1] == ["run"] and "--exec" in argv and "--timeout" not in argv:
        argv += ["--timeout", str(max(10.0, timeout - 30))]
    proc = subprocess.Popen([sys.executable, "-m", "hyperdisco", *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"hyperdisco {' '.join(argv)[:200]} hung for {timeout:.0f}s; "
                             f"stderr (thread dump):\n"
                             f"{err.decode(errors='replace')[-6000:]}\nstdout:\n"
                             f"{out.decode(errors='replace')[-3000:]}") from None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@pytest.fixture
def run() -> object:
    return hyperdisco




class Xl:
    def __init__(self, sock: Path) -> None:
        self.env = dict(os.environ, HYPERDISCO_SOCKET=str(sock), PYTHONUNBUFFERED="1")

    @staticmethod
    def argv(*args: str) -> list[str]:
        return [sys.executable, "-m", "hyperdisco", *args]

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 180) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.argv(*args), capture_output=True, text=True,
                           env=self.env, timeout=timeout)
        assert "Traceback" not in p.stderr, p.stderr
        if check:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def rows(self) -> dict[str, list[str]]:
        lines = self("list").stdout.splitlines()
        assert lines[0].split()[:4] == ["Name", "ID", "Mem", "VCPUs"]
        return {ln.split()[0]: ln.split() for ln in lines[1:]}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that failed with a daemon running gets the daemon's log, and a dump of its threads, in its
    report: what a hang or a race looked like from the inside."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    daemon = getattr(item, "hd_daemon", None)
    if rep.when == "call" and rep.failed and daemon is not None:
        proc, log_path = daemon
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack into the log
            time.sleep(1)
        rep.sections.append(("hyperdisco daemon log (tail)", log_path.read_text(errors="replace")[-8000:]))


@pytest.fixture
def xl(images: GuestImages, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Xl]:
    sock = tmp_path / "hd.sock"
    log = open(tmp_path / "daemon.log", "w")
    marker = request.node.get_closest_marker("daemon_args")  # @pytest.mark.daemon_args("--sched-cpus", "0")
    extra = [str(a) for a in marker.args] if marker is not None else []
    proc = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(sock), "-v",
                             *extra], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (sock.stat().st_mode & 0o777) == 0o600
    request.node.hd_daemon = (proc, tmp_path / "daemon.log")
    yield Xl(sock)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
