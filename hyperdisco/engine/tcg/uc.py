"""unicorn as the tcg engine uses it: the Python binding on the project's patched library.

Every module of engine/tcg takes `unicorn` and `X` (its x86 constants) from here, never by `import unicorn`
(import-linter checks it): this module first makes sure the patched library is built
(unicorn_build.ensure_library), points the binding at it (LIBUNICORN_PATH, read when the binding is first
imported), and then checks that the library the binding loaded is that build: its exported
`uc_hd_patch_set()` must name the current patch set. Anything else (unicorn imported earlier by someone
else, a stale or stock library) is a one-line EngineError, raised by `check()` (the engine calls it when it
is created) rather than at import.

`hd` is the loaded library with the patch set's exported functions declared (unicorn_patches.py).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ...errors import EngineError
from .unicorn_build import LIBRARY, ensure_library, expected_marker

LIBRARY_DIR = ensure_library()
os.environ["LIBUNICORN_PATH"] = str(LIBRARY_DIR)  # also for child processes

import unicorn  # noqa: E402
from unicorn import x86_const as X  # noqa: E402,F401  (re-exported)
from unicorn.unicorn_py3 import unicorn as _binding  # noqa: E402

hd: ctypes.CDLL = _binding.uclib


def _problem() -> str | None:
    loaded = Path(getattr(hd, "_name", "") or "?")
    try:
        marker_fn = hd.uc_hd_patch_set
    except AttributeError:
        return (f"hyperdisco: unicorn's library {loaded} is not the project's patched build "
                f"(expected {LIBRARY_DIR / LIBRARY}; was unicorn imported before hyperdisco.engine.tcg?)")
    marker_fn.restype = ctypes.c_char_p
    marker_fn.argtypes = []
    got = (marker_fn() or b"").decode(errors="replace")
    if got != expected_marker():
        return (f"hyperdisco: unicorn's library {loaded} was built from patch set {got!r}, not "
                f"{expected_marker()!r} (rebuild: scripts/setup.sh)")
    return None


_PROBLEM = _problem()
if _PROBLEM is None:
    for _name, _res, _args in (
        ("uc_hd_set_cflags", None, [ctypes.c_void_p, ctypes.c_uint32]),
        ("uc_hd_get_cflags", ctypes.c_uint32, [ctypes.c_void_p]),
        ("uc_hd_take_atomic", ctypes.c_int, [ctypes.c_void_p]),
        ("uc_hd_set_step", None, [ctypes.c_void_p, ctypes.c_int]),
        ("uc_hd_get_step", ctypes.c_int, [ctypes.c_void_p]),
    ):
        _fn = getattr(hd, _name)
        _fn.restype, _fn.argtypes = _res, _args


def check() -> None:
    """Raise EngineError unless the loaded unicorn library is the current patched build."""
    if _PROBLEM is not None:
        raise EngineError(_PROBLEM)


def library_path() -> Path:
    """The patched library file (fastpath.c links against it)."""
    return LIBRARY_DIR / LIBRARY


__all__ = ["unicorn", "X", "hd", "check", "library_path", "LIBRARY_DIR"]
