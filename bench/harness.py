"""What the benchmarks in bench/ share: spawning a child and reading it with timestamps, host info,
medians and the hyperdisco-vs-QEMU table, progress lines and the JSON results file.

Imported by the scripts as ``harness`` (``python bench/boot.py`` puts bench/ first on sys.path); importing
it also puts the repository on sys.path, so that the scripts can import ``hyperdisco``.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from hyperdisco.images import GuestImages

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KINDS = ("hyperdisco", "qemu")
TAIL_LINES = 30

Say = Callable[[str], None]
Metric = tuple[str, str, str]  # (key in a run's metrics, label, unit)


def say(msg: str, who: str = "bench") -> None:
    """A progress line on stderr."""
    sys.stderr.write(f"{who}: {msg}\n")
    sys.stderr.flush()


def default_images(say: Say) -> GuestImages:
    """The default guest images (fetched/built on first use), progress through ``say``."""
    from hyperdisco.images import ensure_default_images

    return ensure_default_images(lambda msg: say(f"images: {msg}"))


# -- running one child ---------------------------------------------------------------------------------


class _LineSplitter:
    """Accumulates bytes from one pipe and hands back complete lines (without the line ending)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [ln.rstrip(b"\r").decode(errors="replace") for ln in lines]

    def flush(self) -> list[str]:
        rest, self.buf = self.buf, b""
        return [rest.rstrip(b"\r").decode(errors="replace")] if rest else []


def _reap(pid: int, deadline: float) -> tuple[int, Any, bool]:
    """Reap ``pid`` with os.wait4, SIGKILLing it after ``deadline``; returns (status, rusage, killed)."""
    killed = False
    while True:
        wpid, status, rusage = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return status, rusage, killed
        if not killed and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.002)


class Spawned(NamedTuple):
    out: list[tuple[float, str]]  # stdout lines, each with its arrival time (s since the spawn)
    err: list[str]
    exit_status: int
    rusage: Any
    timed_out: bool  # killed after the timeout
    wall: float  # spawn -> reaped

    @property
    def peak_rss_mb(self) -> float:
        return float(self.rusage.ru_maxrss) / 1024.0  # Linux: KiB


def spawn(argv: list[str], timeout: float) -> Spawned:
    """Run ``argv`` in the repository, reading its stdout and stderr unbuffered as they arrive; kill it
    after ``timeout`` seconds. The child's peak RSS comes from os.wait4."""
    out: list[tuple[float, str]] = []
    err: list[str] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    deadline = t0 + timeout
    sel = selectors.DefaultSelector()
    splitters = {proc.stdout.fileno(): _LineSplitter(), proc.stderr.fileno(): _LineSplitter()}
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "out")
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, "err")
    timed_out = False
    while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        for key, _ in sel.select(timeout=min(remaining, 1.0)):
            data = os.read(key.fd, 65536)
            now = time.monotonic() - t0
            if not data:
                sel.unregister(key.fd)
                lines = splitters[key.fd].flush()
            else:
                lines = splitters[key.fd].feed(data)
            if key.data == "out":
                out.extend((now, ln) for ln in lines)
            else:
                err.extend(lines)
    sel.close()
    # Pipes closed (normally: the child exited) or timeout: reap it, killing it if it overstays.
    status, rusage, killed = _reap(proc.pid, time.monotonic() if timed_out else deadline)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen from retrying
    proc.stdout.close()
    proc.stderr.close()
    return Spawned(out, err, proc.returncode, rusage, timed_out or killed, wall)


# -- host info -----------------------------------------------------------------------------------------


def first_line(argv: list[str]) -> str | None:
    """The first line a command prints (None if it cannot run or prints nothing)."""
    lines = _output_lines(argv)
    return lines[0].strip() if lines else None


def last_line(argv: list[str]) -> str | None:
    lines = _output_lines(argv)
    return lines[-1].strip() if lines else None


def _output_lines(argv: list[str]) -> list[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.splitlines() if out.strip() else []


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def unicorn_version() -> str | None:
    try:
        return importlib.metadata.version("unicorn")
    except importlib.metadata.PackageNotFoundError:
        return None


def hyperdisco_commit() -> str | None:
    return first_line(["git", "rev-parse", "HEAD"])


# -- summarising ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One child run of a benchmark: what every script records; each adds its own fields."""

    kind: str
    index: int  # 1-based run number of this kind
    argv: list[str]
    ok: bool = False
    failure: str | None = None
    exit_status: int | None = None
    marks: dict[str, float] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    stdout_tail: list[str] = dataclasses.field(default_factory=list)
    stderr_tail: list[str] = dataclasses.field(default_factory=list)


def medians(runs: Sequence[Run], keys: Iterable[str]) -> dict[str, float]:
    """Per metric key, the median over the runs that succeeded and have it."""
    out: dict[str, float] = {}
    for key in keys:
        vals = [r.metrics[key] for r in runs if r.ok and key in r.metrics]
        if vals:
            out[key] = statistics.median(vals)
    return out


def ratios(med: dict[str, dict[str, float]]) -> dict[str, float]:
    """hyperdisco / QEMU for each median both peers have (and QEMU's is not zero)."""
    hd, qemu = med["hyperdisco"], med["qemu"]
    return {key: hd[key] / qemu[key] for key in hd if qemu.get(key)}


def comparison_rows(results: dict[str, list[Any]], med: dict[str, dict[str, float]],
                    ratio: dict[str, float], metrics: Sequence[Metric],
                    fmt: Callable[[float | None, str], str]) -> list[tuple[str, ...]]:
    """The hyperdisco-vs-QEMU table: a header row with the ok counts, then one row per metric."""
    counts = {k: f"{sum(r.ok for r in results[k])}/{len(results[k])} ok" for k in KINDS}
    rows: list[tuple[str, ...]] = [
        ("metric", f"hyperdisco ({counts['hyperdisco']})", f"QEMU TCG ({counts['qemu']})", "ratio hd/qemu"),
    ]
    for key, label, unit in metrics:
        r = ratio.get(key)
        rows.append((label, fmt(med["hyperdisco"].get(key), unit), fmt(med["qemu"].get(key), unit),
                     f"{r:.2f}x" if r is not None else "-"))
    return rows


def table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned text: the first column left-aligned, the others right-aligned, a rule under the
    header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([row[0].ljust(widths[0])] + cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def print_tails(run: Run) -> None:
    """The saved last stdout/stderr lines of a failed run."""
    for name, tail in (("stdout", run.stdout_tail), ("stderr", run.stderr_tail)):
        if tail:
            print(f"  last {len(tail)} {name} lines:")
            for line in tail:
                print(f"    | {line}")


# -- the run loop and the results file -----------------------------------------------------------------


def schedule(runs: int, kinds: Sequence[str]) -> Iterator[tuple[str, int, str]]:
    """(kind, 1-based run number of that kind, progress label "run N/TOTAL: KIND #I"), the peers
    alternating."""
    total = runs * len(kinds)
    n = 0
    for i in range(1, runs + 1):
        for kind in kinds:
            n += 1
            yield kind, i, f"run {n}/{total}: {kind} #{i}"


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def results_path(out: Path | None, benchmark: str, stamp: str) -> Path:
    """``out``, else bench/results/BENCHMARK-STAMP.json."""
    return out or REPO / "bench" / "results" / f"{benchmark}-{stamp}.json"


def write_json(path: Path, doc: dict[str, Any], say: Say) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"wrote {path}")
