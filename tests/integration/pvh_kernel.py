"""The project's own PVH test kernel (tests/pvh_kernel/): built with the host's gcc/as/ld into the cache,
booted as a domain through the toolstack, its console read back as PASS/FAIL lines.

    kernel = build_test_kernel()                       # Path of the ELF64 kernel (cached by source hash)
    run = boot_test_kernel(xl, tmp_path, "probe", kernel, "cases=evtchn*")
    run.assert_all_passed()                            # or look at run.passed / run.failed / run.lines
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperdisco.cachedir import cache_dir

SOURCE_DIR = Path(__file__).resolve().parent.parent / "pvh_kernel"
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-ffreestanding", "-fno-pic", "-fno-pie",
          "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none", "-mno-red-zone",
          "-mgeneral-regs-only", "-fno-builtin", "-fno-toplevel-reorder", "-m64"]


class BuildUnavailable(Exception):
    """The host has no gcc/ld able to build the kernel (the tests skip)."""


def _sources() -> list[Path]:
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".S", ".h", ".ld"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildUnavailable(f"no {name} on PATH to build the PVH test kernel")
    return path


def build_test_kernel(variant: str = "elf64") -> Path:
    """The test kernel: "elf64" (what ld makes) or "elf32" (the same image in an ELF32 i386 container, as
    Xen's libelf also loads). Built once per source hash into $HYPERDISCO_CACHE/pvh-testkernel/."""
    if variant not in ("elf64", "elf32"):
        raise ValueError(variant)
    gcc, ld, objcopy = _tool("gcc"), _tool("ld"), _tool("objcopy")
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for src in _sources():
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    h.update(subprocess.run([gcc, "--version"], capture_output=True).stdout)
    out_dir = cache_dir() / "pvh-testkernel" / h.hexdigest()[:16]
    target = out_dir / f"testkernel-{variant}.elf"
    if target.exists():
        return target
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        objs = []
        for src in _sources():
            if src.suffix not in (".c", ".S"):
                continue
            obj = Path(tmp) / (src.name + ".o")
            _run([gcc, *CFLAGS, "-I", str(SOURCE_DIR), "-c", str(src), "-o", str(obj)])
            objs.append(str(obj))
        elf64 = Path(tmp) / "testkernel-elf64.elf"
        _run([ld, "-m", "elf_x86_64", "-nostdlib", "-static", "-z", "noexecstack", "--build-id=none",
              "-z", "max-page-size=4096", "-T", str(SOURCE_DIR / "kernel.ld"), "-o", str(elf64), *objs])
        _run([objcopy, "-O", "elf32-i386", str(elf64), str(Path(tmp) / "testkernel-elf32.elf")])
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, out_dir)  # atomic: a parallel build of the same sources wins or loses whole
        except OSError:
            if not target.exists():
                raise
        else:
            os.mkdir(tmp)  # for TemporaryDirectory's cleanup
    return target


def _run(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"building the PVH test kernel: {' '.join(argv)}\n{p.stdout}{p.stderr}")


# searched, not anchored: a guest may have the hypervisor write garbage into its console ring (the fuzzer
# does), which then shares a line with the kernel's own console_io output
_CHECK = re.compile(r"(?:^|\s)(PASS|FAIL) ([\w.]+)(?:: (.*))?$")
_SUMMARY = re.compile(r"SUMMARY passed=(\d+) failed=(\d+)")


@dataclass
class KernelRun:
    """What one boot of the test kernel printed."""

    lines: list[str]
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    summary: str | None = None
    end: str = ""

    @classmethod
    def parse(cls, text: str) -> KernelRun:
        run = cls([ln.rstrip("\r") for ln in text.splitlines()])
        for ln in run.lines:
            m = _CHECK.search(ln)
            if m and m.group(1) == "PASS":
                run.passed.append(m.group(2))
            elif m:
                run.failed[m.group(2)] = m.group(3) or ""
            m2 = _SUMMARY.search(ln)
            if m2:
                run.summary = ln[m2.start():]
        return run

    def value(self, key: str) -> str | None:
        """A `key=value` word from the kernel's lines (e.g. the fuzzer's `calls=`), the last one printed."""
        found = None
        for ln in self.lines:
            for word in ln.split():
                if word.startswith(key + "="):
                    found = word[len(key) + 1:]
        return found

    def assert_all_passed(self, at_least: int = 1) -> None:
        transcript = "\n".join(self.lines[-80:])
        assert self.summary is not None, f"the test kernel printed no SUMMARY line:\n{transcript}"
        assert not self.failed, "test kernel checks failed:\n" + "\n".join(
            f"  {k}: {v}" for k, v in self.failed.items()) + f"\n--- console ---\n{transcript}"
        assert len(self.passed) >= at_least, transcript


def kernel_cfg(tmp_path: Path, name: str, kernel: Path, cmdline: str = "", memory: int = 32,
               *extra: str) -> str:
    """An xl.cfg booting the test kernel (no ramdisk), kept after it stops so that its console can be
    read however fast it ran; its path."""
    p = tmp_path / f"{name}.cfg"
    lines = [f'name = "{name}"', f"memory = {memory}", f'kernel = "{kernel}"', f'cmdline = "{cmdline}"',
             'on_poweroff = "preserve"', 'on_crash = "preserve"', *extra]
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def boot_test_kernel(xl: Any, tmp_path: Path, name: str, kernel: Path, cmdline: str = "",
                     memory: int = 32, timeout: float = 300, *extra: str) -> KernelRun:
    """Create a domain running the test kernel with `cmdline` on the daemon behind `xl` (a conftest.Xl),
    read its console until it stops, destroy it; what it printed (`end` is the console's last line, e.g.
    "... powered off")."""
    run = read_console(xl, ["create", kernel_cfg(tmp_path, name, kernel, cmdline, memory, *extra), "-c"],
                       timeout)
    xl("destroy", name, check=False)
    return run


def read_console(xl: Any, args: list[str], timeout: float) -> KernelRun:
    """Run `hyperdisco ARGS` (a `create -c` or `console`) with a stdin that stays open (an EOF on stdin
    detaches a console) until the console ends; its output parsed."""
    r, w = os.pipe()
    proc = subprocess.Popen(xl.argv(*args), stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=xl.env)
    os.close(r)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        shown = out.decode(errors="replace")[-4000:] + "\n" + err.decode(errors="replace")
        raise AssertionError(f"the test kernel's console did not end in {timeout:.0f}s:\n{shown}") from None
    finally:
        os.close(w)
    text = err.decode(errors="replace")
    assert "Traceback" not in text, text
    run = KernelRun.parse(out.decode(errors="replace"))
    run.end = (text.strip().splitlines() or [""])[-1]
    return run
