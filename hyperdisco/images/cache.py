"""Where hyperdisco keeps downloaded packages and generated guest images (always outside the repository)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$HYPERDISCO_CACHE``, else ``$XDG_CACHE_HOME/hyperdisco``, else ``~/.cache/hyperdisco``.

    The directory is not created here; callers that write into it create it.
    """
    explicit = os.environ.get("HYPERDISCO_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "hyperdisco"
    return Path.home() / ".cache" / "hyperdisco"


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
