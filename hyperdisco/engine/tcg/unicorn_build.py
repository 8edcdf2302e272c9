"""Build the project's patched unicorn (unicorn_patches.py) once, into the user's cache.

The tcg engine runs on unicorn 2.1.4 built from its PyPI sdist with the patches of unicorn_patches.py,
x86 only, with cmake and the system C compiler (~20 s on two cores). The result lives in
`<cache>/unicorn/<version>-<patch-set digest>/` (`libunicorn.so.2` and `include/unicorn/*.h`, the headers
fastpath.c is compiled with); a change to any patch changes the digest, hence the directory, and the next
user builds it again. `scripts/setup.sh` runs `python -m hyperdisco.engine.tcg.unicorn_build`, so tests and
guests never wait for it; a process that finds it missing builds it then, saying so on stderr.

This module never imports unicorn (uc.py does, after pointing the binding at the library built here).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ...cachedir import cache_dir
from ...errors import EngineError
from .unicorn_patches import PATCHES, UNICORN_VERSION, PatchError, apply, marker_source, patch_set_digest

LIBRARY = "libunicorn.so.2"


def _say(msg: str) -> None:
    print(f"hyperdisco: {msg}", file=sys.stderr, flush=True)


def library_dir() -> Path:
    """Where the patched library of the current patch set is (or will be) built."""
    return cache_dir() / "unicorn" / f"{UNICORN_VERSION}-{patch_set_digest()}"


def expected_marker() -> str:
    """What the built library's uc_hd_patch_set() returns."""
    return f"hyperdisco-{patch_set_digest()}"


def ensure_library(say: Callable[[str], None] = _say) -> Path:
    """The directory holding the patched libunicorn.so.2 and its headers, building it if missing.
    Raises EngineError (one line) if it cannot be built."""
    out = library_dir()
    if (out / LIBRARY).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once build it once
        if not (out / LIBRARY).exists():
            _build(out, say)
    return out


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except OSError as exc:
        raise EngineError(f"hyperdisco: building unicorn: {what} failed: {exc.strerror}: {cmd[0]}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines or [f"status {proc.returncode}"]
        raise EngineError(f"hyperdisco: building unicorn: {what} failed: {errors[-1]}")


def _sdist(say: Callable[[str], None]) -> Path:
    """unicorn's source distribution for the pinned version, downloaded once into the cache."""
    name = f"unicorn-{UNICORN_VERSION}.tar.gz"
    path = cache_dir() / "unicorn" / name
    if path.exists():
        return path
    say(f"downloading unicorn {UNICORN_VERSION}'s source (pip download)")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
              f"unicorn=={UNICORN_VERSION}", "-d", tmp], "pip download")
        got = Path(tmp) / name
        if not got.exists():
            raise EngineError(f"hyperdisco: building unicorn: pip download did not produce {name}")
        os.replace(got, path)
    return path


def patch_tree(src: Path) -> None:
    """Apply every patch, then the marker, to the sdist's src/ directory."""
    for p in PATCHES:
        f = src / p.file
        try:
            text = f.read_text()
        except OSError as exc:
            raise EngineError(
                f"hyperdisco: building unicorn: patch {p.name!r}: {exc.strerror}: {p.file}") from None
        try:
            f.write_text(apply(text, p))
        except PatchError as exc:
            raise EngineError(f"hyperdisco: building unicorn: {exc}") from None
    uc_c = src / "uc.c"
    uc_c.write_text(uc_c.read_text() + marker_source(patch_set_digest()))


def _build(out: Path, say: Callable[[str], None]) -> None:
    if shutil.which("cmake") is None:
        raise EngineError("hyperdisco: building unicorn needs cmake (apt-get install cmake)")
    t0 = time.monotonic()
    sdist = _sdist(say)
    say(f"building unicorn {UNICORN_VERSION} with {len(PATCHES)} patches into {out} (once, ~20-60 s)")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        work = Path(tmp)
        try:
            with tarfile.open(sdist) as tar:
                tar.extractall(work, filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise EngineError(f"hyperdisco: building unicorn: cannot unpack {sdist}: {exc}") from None
        src = work / f"unicorn-{UNICORN_VERSION}" / "src"
        patch_tree(src)
        build = work / "build"
        say("building unicorn: cmake configure")
        _run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DUNICORN_BUILD_TESTS=off", "-DUNICORN_ARCH=x86"], "cmake configure")
        say(f"building unicorn: compiling ({os.cpu_count() or 1} jobs)")
        _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 1)], "compiling")
        stage = work / "out"
        (stage / "include").mkdir(parents=True)
        shutil.copy2(build / LIBRARY, stage / LIBRARY, follow_symlinks=True)
        shutil.copytree(src / "include" / "unicorn", stage / "include" / "unicorn")
        if out.exists():  # a half-made directory of an interrupted build
            shutil.rmtree(out)
        os.replace(stage, out)
    say(f"built unicorn in {time.monotonic() - t0:.0f} s")


def main() -> int:
    try:
        print(ensure_library())
    except EngineError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
