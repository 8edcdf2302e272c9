"""The project's patched unicorn: the patch set applies exactly to the pinned sdist, the engine runs on
the library built from it, and building fails in one line when it cannot work."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from hyperdisco.engine.tcg import unicorn_build, unicorn_patches
from hyperdisco.engine.tcg.unicorn_patches import PATCHES, Patch, PatchError, append, apply, patch_set_digest
from hyperdisco.errors import EngineError


def test_apply_requires_the_old_text_exactly_once() -> None:
    p = Patch("t", "f.c", old="return 0;", new="return 1;", why="test")
    assert apply("int f(void) { return 0; }", p) == "int f(void) { return 1; }"
    with pytest.raises(PatchError, match="occurs 0 times"):
        apply("int f(void) { return 2; }", p)
    with pytest.raises(PatchError, match="occurs 2 times"):
        apply("return 0; return 0;", p)
    assert apply("a\n", append("f.c", "b\n", "test")) == "a\nb\n"


def test_digest_covers_every_patch() -> None:
    d = patch_set_digest()
    assert d == patch_set_digest(PATCHES)
    changed = PATCHES[:-1] + (Patch(PATCHES[-1].name, PATCHES[-1].file, PATCHES[-1].old,
                                    PATCHES[-1].new + " ", PATCHES[-1].why),)
    assert patch_set_digest(changed) != d
    assert patch_set_digest(PATCHES + (append("uc.c", "/* x */", "test"),)) != d
    assert unicorn_build.library_dir().name == f"{unicorn_patches.UNICORN_VERSION}-{d}"


def test_patch_set_applies_to_the_pinned_sdist() -> None:
    """Every patch finds its old text once in the sdist as the earlier patches left it."""
    sdist = unicorn_build.cache_dir() / "unicorn" / f"unicorn-{unicorn_patches.UNICORN_VERSION}.tar.gz"
    if not sdist.exists():
        pytest.skip("unicorn's sdist is not in the cache (scripts/setup.sh downloads it)")
    prefix = f"unicorn-{unicorn_patches.UNICORN_VERSION}/src/"
    texts: dict[str, str] = {}
    with tarfile.open(sdist) as tar:
        for f in {p.file for p in PATCHES}:
            member = tar.extractfile(prefix + f)
            assert member is not None, f
            texts[f] = member.read().decode()
    for p in PATCHES:
        assert p.why and p.name
        texts[p.file] = apply(texts[p.file], p)
        assert p.new in texts[p.file]


def test_engine_runs_on_the_patched_library() -> None:
    from hyperdisco.engine.tcg import uc
    from hyperdisco.engine.tcg.engine import new_uc

    uc.check()
    assert Path(uc.hd._name) == uc.library_path()
    assert uc.hd.uc_hd_patch_set() == unicorn_build.expected_marker().encode()
    u = new_uc()
    h = u._uch.value if hasattr(u._uch, "value") else u._uch
    assert uc.hd.uc_hd_get_cflags(h) == 0  # a one-vCPU domain translates as unicorn always did
    uc.hd.uc_hd_set_cflags(h, unicorn_patches.CF_PARALLEL)
    assert uc.hd.uc_hd_get_cflags(h) == unicorn_patches.CF_PARALLEL


def test_build_without_cmake_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERDISCO_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no compiler
    with pytest.raises(EngineError, match="needs cmake") as exc:
        unicorn_build.ensure_library(say=lambda _m: None)
    assert "\n" not in str(exc.value)
