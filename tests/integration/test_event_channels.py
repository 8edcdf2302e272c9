"""The stock kernel on each event-channel ABI: FIFO when hyperdisco offers EVTCHNOP_init_control (Linux's
drivers/xen/events/events_fifo.c prints "xen:events: Using FIFO-based ABI"), 2-level when the guest does
not ask (xen.fifo_events=0, Linux's own switch). Timers (VIRQ_TIMER), the console, xenstore and the IPIs
work on both; disks and networks are tested with the guest's default ABI, FIFO, by test_disks.py,
test_network.py and test_interdomain_evtchn.py. With xl.cfg's max_event_channels the guest binds thousands
of ports through /dev/xen/evtchn (tests/guest/evtchn_many.c): past 2-level's 4096 on FIFO, the guest's
kernel growing the event array page by page, and an event arrives on the highest one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hyperdisco.images import GuestImages

from .conftest import Xl, build_guest_program, domain_cfg, hyperdisco, initrd_with_program

pytestmark = pytest.mark.slow

PROBE = ("dmesg | grep 'xen:events: Using'; grep -E 'timer0|xenbus|hvc_console' /proc/interrupts; "
         "sleep 1; grep timer0 /proc/interrupts")


def interrupts(out: str, name: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(rf"^\s*\d+:\s+(\d+)\s.*\b{name}$", out, re.M)]


def stat(err: str, name: str) -> int:
    m = re.search(rf"^\s*{re.escape(name)}\s+(\d+)$", err, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize(("cmdline", "abi_line", "fifo"), [
    ("console=hvc0", "Using FIFO-based ABI", True),
    ("console=hvc0 xen.fifo_events=0", "Using 2-level ABI", False),
])
def test_guest_runs_on_each_abi(images: GuestImages, cmdline: str, abi_line: str, fifo: bool) -> None:
    r = hyperdisco("run", "--stats", "--cmdline", cmdline, "--exec", PROBE)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"xen:events: {abi_line}" in r.stdout
    # hyperdisco's side agrees: init_control and one event array page (the guest's ports fit in 1024)
    assert stat(r.stderr, "evtchn.fifo_init_control") == (1 if fifo else 0), r.stderr
    assert stat(r.stderr, "evtchn.fifo_array_pages") == (1 if fifo else 0), r.stderr
    # every channel kind delivers: the timer VIRQ woke the guest out of its sleep (a tickless kernel: a
    # few events a second when idle), the xenstore and console channels have fired (the console carried
    # this very output)
    ticks = interrupts(r.stdout, "timer0")
    assert len(ticks) == 2 and ticks[1] > ticks[0] > 0, r.stdout
    assert interrupts(r.stdout, "xenbus")[0] > 0 and interrupts(r.stdout, "hvc_console")[0] > 0, r.stdout


MANY = Path(__file__).resolve().parent.parent / "guest" / "evtchn_many.c"


@pytest.mark.parametrize(("extra", "highest"), [("", 6000), (" xen.fifo_events=0", 4095)])
def test_thousands_of_ports(xl: Xl, tmp_path: Path, images: GuestImages, extra: str, highest: int) -> None:
    binary = build_guest_program(MANY, tmp_path / "evtchn_many")
    initrd = initrd_with_program(images, binary, "evtchn_many", tmp_path / "initrd.cpio")
    xl("create", domain_cfg(tmp_path, "many", f'kernel = "{images.kernel}"', f'ramdisk = "{initrd}"',
                            f'cmdline = "console=hvc0{extra}"', "max_event_channels = 6000", memory=256))
    r = xl("exec", "many", "modprobe xen-evtchn && evtchn_many 0x7ff0", "--timeout", "400", timeout=460)
    m = re.search(r"^BOUND (\d+) MAX (\d+) ERR (\S+)", r.stdout, re.M)
    assert m is not None, r.stdout
    bound, top, err = int(m.group(1)), int(m.group(2)), m.group(3)
    # every port up to the limit (the domain's, or the 2-level ABI's 4095) but those the kernel holds
    assert top == highest and err == "ENOSPC" and highest - 40 < bound < highest, r.stdout
    assert f"DELIVERED {highest}" in r.stdout, r.stdout


@pytest.mark.parametrize(("extra", "fifo"), [("", True), (" xen.fifo_events=0", False)])
def test_two_vcpus(images: GuestImages, extra: str, fifo: bool) -> None:
    """Each vCPU its own FIFO control block (Linux calls EVTCHNOP_init_control as it brings a CPU up) and
    its own queues: per-vCPU timer VIRQs and the IPIs between the CPUs arrive on both."""
    r = hyperdisco("run", "--vcpus", "2", "--stats", "--cmdline", f"console=hvc0{extra}", "--exec",
                   "grep -E 'timer|callfuncsingle|resched' /proc/interrupts; nproc")
    assert r.returncode == 0, r.stderr + r.stdout
    assert stat(r.stderr, "evtchn.fifo_init_control") == (2 if fifo else 0), r.stderr
    rows = {m.group(3): (int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"^\s*\d+:\s+(\d+)\s+(\d+)\s.*\b(\w+)$", r.stdout, re.M)}
    assert rows["timer0"][0] > 0 and rows["timer1"][1] > 0, r.stdout
    # bringing CPU1 up and running on two CPUs takes function-call IPIs both ways
    assert rows["callfuncsingle0"][0] + rows["resched0"][0] > 0, r.stdout
    assert rows["callfuncsingle1"][1] + rows["resched1"][1] > 0, r.stdout
    assert r.stdout.strip().splitlines()[-1] == "2"
