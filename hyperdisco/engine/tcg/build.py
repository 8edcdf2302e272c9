"""Compile fastpath.c against the patched unicorn's headers and library (uc.py), once, into the cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ...cachedir import cache_dir
from ...errors import EngineError
from .uc import LIBRARY_DIR, check, library_path
from .unicorn_build import expected_marker

SOURCE = Path(__file__).with_name("fastpath.c")


def fastpath_library() -> Path:
    """Path of the compiled fast path, building it if the source or the unicorn build changed."""
    check()
    inc, lib, libfile = LIBRARY_DIR / "include", LIBRARY_DIR, library_path()
    key = hashlib.sha256(SOURCE.read_bytes() + expected_marker().encode()
                         + str(libfile.stat().st_size).encode()).hexdigest()[:16]
    out = cache_dir() / "engine" / f"fastpath-{key}.so"
    if out.exists():
        return out
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise EngineError("hyperdisco: the tcg engine needs a C compiler (apt-get install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [cc, "-O2", "-shared", "-fPIC", "-Wall", f"-I{inc}", str(SOURCE), "-o", str(tmp_out),
               f"-L{lib}", "-l:libunicorn.so.2", f"-Wl,-rpath,{lib}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise EngineError(f"hyperdisco: building the tcg fast path failed: {last}")
        os.replace(tmp_out, out)
    return out
