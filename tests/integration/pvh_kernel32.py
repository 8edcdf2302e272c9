"""The 32-bit PVH test kernel (tests/pvh_kernel/i386/): gcc -m32, ld -m elf_i386, into the cache by
source hash; booted with pvh_kernel.boot_test_kernel like the 64-bit one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from hyperdisco.cachedir import cache_dir

from .pvh_kernel import BuildUnavailable, _tool

SOURCE_DIR = Path(__file__).resolve().parent.parent / "pvh_kernel" / "i386"
CFLAGS = ["-m32", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-ffreestanding", "-fno-pic",
          "-fno-pie", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
          "-mgeneral-regs-only", "-fno-builtin"]


def build_kernel32() -> Path:
    """The ELF32 i386 test kernel (32-bit code), built once per source hash."""
    gcc, ld = _tool("gcc"), _tool("ld")
    sources = sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".S", ".ld"))
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    out_dir = cache_dir() / "pvh-testkernel32" / h.hexdigest()[:16]
    target = out_dir / "testkernel-i386.elf"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        objs = []
        for src in sources:
            if src.suffix in (".c", ".S"):
                obj = Path(tmp) / (src.name + ".o")
                p = subprocess.run([gcc, *CFLAGS, "-c", str(src), "-o", str(obj)], capture_output=True,
                                   text=True)
                if p.returncode != 0:
                    raise BuildUnavailable(f"gcc -m32 cannot build the 32-bit test kernel: "
                                           f"{p.stderr.strip()}")
                objs.append(str(obj))
        elf = Path(tmp) / target.name
        script = str(SOURCE_DIR / "kernel32.ld")
        p = subprocess.run([ld, "-m", "elf_i386", "-nostdlib", "-static", "-z", "noexecstack",
                            "--build-id=none", "-z", "max-page-size=4096", "-T", script, "-o", str(elf),
                            *objs],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise BuildUnavailable(f"ld -m elf_i386 cannot link the 32-bit test kernel: {p.stderr.strip()}")
        os.replace(elf, target)
    return target
