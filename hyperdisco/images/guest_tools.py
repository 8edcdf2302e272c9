"""Small static programs the busybox guest needs and busybox has not, compiled from C sources in
``guest/`` when the initramfs is built (scripts/setup.sh installs gcc). Today one: ``hd-reseed``, which
the toolstack runs after a restore to reseed the guest kernel's CRNG (docs/clones.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hyperdisco.errors import ImageError

# (path in the guest, C source in hyperdisco/images/guest/)
GUEST_TOOLS: tuple[tuple[str, str], ...] = (("bin/hd-reseed", "hd-reseed.c"),)
CFLAGS = ("-static", "-Os", "-s", "-Wall")
COMPILE_TIMEOUT_S = 300


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")


def tools_version(read: Callable[[str], bytes]) -> str:
    """What the built tools depend on: their sources, the flags and whether a compiler is there (a guest
    built without one is built again once there is)."""
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for path, src in GUEST_TOOLS:
        h.update(f"{path} ".encode() + read(src))
    h.update(b"cc" if compiler() else b"no-cc")
    return h.hexdigest()[:16]


def build_tools(read: Callable[[str], bytes],
                progress: Callable[[str], None] | None = None) -> list[tuple[str, bytes]]:
    """(path in the guest, static executable) for each tool; none without a C compiler (said through
    `progress`: the guest then cannot be reseeded after a restore, and restore says so)."""
    say = progress or (lambda _m: None)
    cc = compiler()
    if cc is None:
        say("no C compiler (gcc): the guest gets no hd-reseed; restored clones cannot be reseeded")
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="hd-guest-tools-") as tmp:
        for path, src in GUEST_TOOLS:
            say(f"compiling {path.rpartition('/')[2]} (static)")
            source, binary = Path(tmp) / src, Path(tmp) / Path(path).name
            source.write_bytes(read(src))
            try:
                subprocess.run([cc, *CFLAGS, "-o", str(binary), str(source)], check=True,
                               capture_output=True, timeout=COMPILE_TIMEOUT_S)
            except subprocess.CalledProcessError as exc:
                err = exc.stderr.decode(errors="replace").strip().splitlines()
                raise ImageError(f"hyperdisco: compiling {src} for the guest failed: "
                                 f"{err[-1] if err else exc}"[:300]) from None
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ImageError(f"hyperdisco: compiling {src} for the guest failed: {exc}"[:300]) from None
            out.append((path, binary.read_bytes()))
    return out
