"""Fetch and unpack Debian packages with the host's apt tools (no network code of our own)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from hyperdisco.errors import ImageError

Progress = Callable[[str], None]

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
APT_LISTS = Path("/var/lib/apt/lists")

_NO_APT = (
    "hyperdisco: apt-get is not available on this host; fetch a kernel yourself and pass --kernel/--initrd"
)


def require_apt() -> None:
    """Raise ImageError unless apt-get, apt-cache and dpkg-deb are on PATH."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ImageError(_NO_APT)


def _last_line(text: bytes) -> str:
    lines = [ln.strip() for ln in text.decode(errors="replace").splitlines() if ln.strip()]
    # apt warns about its _apt download sandbox when run as root in a private directory: not the cause.
    errors = [ln for ln in lines if not ln.startswith("W:")]
    return (errors or lines or ["no error output"])[-1]


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 900) -> str:
    """Run a command; on failure raise ImageError naming the command and its last stderr line."""
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ImageError(f"hyperdisco: {cmd[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"hyperdisco: '{' '.join(cmd)}' timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        why = _last_line(proc.stderr or proc.stdout)
        raise ImageError(f"hyperdisco: '{' '.join(cmd)}' failed (exit {proc.returncode}): {why}")
    return proc.stdout.decode(errors="replace")


def apt_lists_empty() -> bool:
    try:
        return not any("Packages" in p.name for p in APT_LISTS.iterdir())
    except OSError:
        return True


def apt_update(progress: Progress) -> None:
    if os.geteuid() != 0:
        raise ImageError(
            "hyperdisco: apt package lists are empty and we are not root; run 'apt-get update' first"
        )
    progress("running apt-get update (package lists are empty)...")
    run(["apt-get", "update"])


def resolve_kernel_package(progress: Progress, metapackage: str = KERNEL_METAPACKAGE) -> str:
    """The versioned linux-image package the metapackage depends on, e.g. linux-image-6.1.0-56-cloud-amd64."""
    if apt_lists_empty():
        apt_update(progress)
    updated = False
    while True:
        try:
            out = run(["apt-cache", "depends", metapackage])
        except ImageError:
            out = ""
        found = re.findall(r"^\s*\|?Depends:\s*(linux-image-\d\S*)\s*$", out, re.MULTILINE)
        if found:
            return found[0]
        if updated:
            raise ImageError(
                f"hyperdisco: cannot resolve {metapackage} to a kernel package with apt-cache depends"
            )
        apt_update(progress)
        updated = True


def download(package: str, debs_dir: Path, progress: Progress, force: bool = False) -> Path:
    """``apt-get download`` a package into ``debs_dir`` (reusing an earlier download unless ``force``)."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(debs_dir.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if existing and not force:
        return existing[-1]
    for old in existing:
        old.unlink()
    progress(f"fetching {package} (apt-get download)...")
    tmp = debs_dir / f".download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        os.chmod(tmp, 0o777)  # lets apt's unprivileged _apt user write here (avoids a sandbox warning)
        run(["apt-get", "download", package], cwd=tmp)
        got = sorted(tmp.glob(f"{package}_*.deb"))
        if not got:
            raise ImageError(f"hyperdisco: apt-get download {package} produced no .deb file")
        final = debs_dir / got[0].name
        os.replace(got[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unpack(deb: Path, dest: Path, progress: Progress) -> Path:
    """``dpkg-deb -x`` into ``dest``, atomically replacing whatever was there."""
    progress(f"unpacking {deb.name}")
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        run(["dpkg-deb", "-x", str(deb), str(tmp)])
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
