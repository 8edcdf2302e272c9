"""Boot the stock kernel to busybox and check what the guest itself printed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hyperdisco.images import GuestImages

from .conftest import hyperdisco

pytestmark = pytest.mark.slow


def test_exec_prints_output_and_status(images: GuestImages) -> None:
    r = hyperdisco("run", "--exec", "uname -r; echo $((6*7))")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines == [images.kernel_release, "42"]


@pytest.mark.parametrize(("command", "status"), [("exit 3", 3), ("false", 1), ("ls /nonexistent", 1)])
def test_exec_exit_status_is_the_commands(images: GuestImages, command: str, status: int) -> None:
    r = hyperdisco("run", "--exec", command)
    assert r.returncode == status, r.stderr


@pytest.mark.parametrize("mib", [96, 384])
def test_guest_sees_configured_memory(images: GuestImages, mib: int) -> None:
    r = hyperdisco("run", "--memory", str(mib), "--exec", "grep MemTotal /proc/meminfo")
    assert r.returncode == 0, r.stderr
    total_kib = int(r.stdout.split()[1])
    # MemTotal is RAM minus what the kernel keeps for itself (its image, early allocations)
    assert (mib - 48) * 1024 < total_kib <= mib * 1024


def test_guest_sees_kernel_command_line(images: GuestImages) -> None:
    cmdline = "console=hvc0 hyperdisco.test=probe-31337"
    r = hyperdisco("run", "--cmdline", cmdline, "--exec", "cat /proc/cmdline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == cmdline


def test_guest_clock_runs_at_host_rate(images: GuestImages) -> None:
    t0 = time.time()
    r = hyperdisco("run", "--exec", "cat /proc/uptime; date +%s; sleep 2; cat /proc/uptime")
    t1 = time.time()
    assert r.returncode == 0, r.stderr
    up0, wall, up1 = r.stdout.splitlines()
    guest_sleep = float(up1.split()[0]) - float(up0.split()[0])
    # the guest measures at least its sleep, and never more time than passed on the host around it
    assert 1.9 <= guest_sleep <= t1 - t0, (guest_sleep, t1 - t0)
    assert t0 - 2 <= int(wall) <= t1 + 2  # wall clock from shared_info matches the host's
    assert t1 - t0 >= 2.0


def test_panic_is_reported_as_a_crash(images: GuestImages) -> None:
    r = hyperdisco("run", "--exec", "echo c > /proc/sysrq-trigger")
    assert r.returncode != 0
    assert "Kernel panic" in r.stdout
    assert "hyperdisco: guest crashed" in r.stderr
    assert "Traceback" not in r.stderr


def test_stats_count_traps_by_kind(images: GuestImages) -> None:
    r = hyperdisco("run", "--stats", "--exec", "true")
    assert r.returncode == 0, r.stderr
    counts = {}
    for line in r.stderr.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["syscall"] > 100
    assert counts["pagefault.user"] > 100
    assert counts["hypercall.console_io"] > 0
    assert counts["hypercall.event_channel_op"] > 0
    assert counts["interrupt.injected"] > 0
    assert counts["slice"] > 0
    assert "user space" in r.stderr and "first guest output" in r.stderr


class Session:
    """`hyperdisco run` driven as a user would: wait for the prompt, then type."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hyperdisco", "run"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.out = bytearray()

    def wait_prompt(self, boots: int = 1) -> None:
        """Until the guest has come up `boots` times and shows a shell prompt."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while self.out.count(b"hyperdisco-guest: up") < boots or not self.out.rstrip().endswith(b"#"):
            assert time.monotonic() < deadline, self.out[-500:]
            chunk = self.proc.stdout.read()
            if chunk:
                self.out += chunk.replace(b"\x1b[6n", b"")
            else:
                time.sleep(0.05)

    def type(self, *lines: bytes) -> None:
        assert self.proc.stdin is not None
        for data in lines:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            time.sleep(0.3)

    def finish(self) -> tuple[int, bytes, bytes]:
        rest_out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, bytes(self.out) + rest_out, err


def _interactive(stdin_script: list[bytes]) -> tuple[int, bytes, bytes]:
    s = Session()
    s.wait_prompt()
    s.type(*stdin_script)
    return s.finish()


def test_shell_takes_typed_commands_and_poweroff_ends_with_status_0(images: GuestImages) -> None:
    rc, out, err = _interactive([b"echo typed-$((40+2))\n", b"poweroff\n"])
    assert b"typed-42" in out
    assert rc == 0, err
    assert b"Traceback" not in err


def test_ctrl_close_bracket_detaches_and_destroys(images: GuestImages) -> None:
    rc, out, err = _interactive([b"\x1d"])
    assert b"destroyed" in err
    assert b"Traceback" not in err


def test_reboot_in_the_guest_restarts_it(images: GuestImages) -> None:
    s = Session()
    s.wait_prompt()
    s.type(b"echo first > /dev/null; reboot\n")
    s.wait_prompt(boots=2)  # the same terminal, a new incarnation of the guest
    s.type(b"echo second-$((1+1))\n", b"poweroff\n")
    rc, out, err = s.finish()
    assert b"second-2" in out
    assert rc == 0, err
    assert b"Traceback" not in err
