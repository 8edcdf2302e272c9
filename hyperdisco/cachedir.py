"""Where hyperdisco keeps what it downloads, builds or compiles: always outside the repository."""

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
