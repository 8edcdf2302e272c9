"""A small ext4 root filesystem for disk-booted guests: the default guest's busybox and scripts.

``build_rootfs(out)`` lays out a tree in a temporary directory (bin/busybox and its applet symlinks,
/sbin/init -> busybox, the guest scripts of the initramfs: /init, /etc/inittab, /etc/rc, ...), turns it
into an image with ``mkfs.ext4 -d`` and adds the device nodes (and root ownership, when not built as
root) with ``debugfs``, so no privileges are needed. The image is written atomically (temporary name
in the same directory, then rename).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hyperdisco.errors import ImageError
from hyperdisco.images import debian
from hyperdisco.images.cache import cache_dir
from hyperdisco.images.initramfs import DEVICES, DIRECTORIES, GUEST_FILES, busybox_applets, guest_file

MIN_SIZE_MIB = 8
MAX_SIZE_MIB = 1 << 20
_SBIN_DIRS = ("/usr/sbin", "/sbin")  # mkfs.ext4 lives here, often outside a user's PATH


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))
    if found is None:
        raise ImageError(f"hyperdisco: {name} not found: install it with 'apt-get install e2fsprogs'")
    return found


def default_busybox(progress: Callable[[str], None] | None = None) -> Path:
    """The default guest's static busybox (fetched with the default images when missing)."""
    from hyperdisco.images.default import ensure_default_images

    ensure_default_images(progress)
    return cache_dir() / debian.BUSYBOX_PACKAGE / "bin" / "busybox"


def populate_tree(root: Path, busybox: Path) -> None:
    """Lay out the root filesystem's files under ``root`` (device nodes are added by build_rootfs)."""
    try:
        head = busybox.read_bytes()[:4]
    except OSError as exc:
        raise ImageError(f"hyperdisco: {busybox}: cannot read busybox ({exc.strerror or exc})") from None
    if head != b"\x7fELF":
        raise ImageError(f"hyperdisco: {busybox}: not a busybox executable")
    for d in DIRECTORIES:
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in busybox_applets(busybox):
        os.symlink("busybox", root / "bin" / applet)
    if not (root / "bin" / "init").is_symlink():
        os.symlink("busybox", root / "bin" / "init")
    # as in the initramfs: every applet under every usual directory, so /sbin/init and the kernel's
    # /sbin/poweroff (xl shutdown through control/shutdown) are found on a disk root too
    os.symlink("bin", root / "sbin")
    os.symlink("../bin", root / "usr" / "bin")
    os.symlink("../bin", root / "usr" / "sbin")
    for path, src, mode in GUEST_FILES:
        dest = root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(guest_file(src))
        os.chmod(dest, mode)


def _debugfs_script(root: Path) -> str:
    """debugfs commands: the device nodes, and root ownership of everything when built by a user."""
    lines: list[str] = []
    for path, major, minor, mode in DEVICES:
        parent, _, name = path.rpartition("/")
        lines += [f"cd /{parent}", f"mknod {name} c {major} {minor}", f"sif /{path} mode 0{0o20000 | mode:o}"]
    if os.getuid() != 0:
        paths = ["/"] + ["/" + str(p.relative_to(root)) for p in sorted(root.rglob("*"))]
        for p in paths:
            lines += [f'sif "{p}" uid 0', f'sif "{p}" gid 0']
    return "\n".join(lines) + "\n"


def build_rootfs(out: Path, size_mib: int = 64, progress: Callable[[str], None] | None = None,
                 busybox: Path | None = None) -> Path:
    """Build an ext4 image of ``size_mib`` MiB at ``out`` (replaced atomically) and return ``out``."""
    say: Callable[[str], None] = progress or (lambda _msg: None)
    out = Path(out)
    if not MIN_SIZE_MIB <= size_mib <= MAX_SIZE_MIB:
        raise ImageError(f"hyperdisco: {out}: root filesystem size must be {MIN_SIZE_MIB}..{MAX_SIZE_MIB} "
                         f"MiB, not {size_mib}")
    mkfs = _tool("mkfs.ext4")
    debugfs = _tool("debugfs")
    if busybox is None:
        busybox = default_busybox(progress)
    out_dir = out.parent if str(out.parent) else Path(".")
    if not out_dir.is_dir():
        raise ImageError(f"hyperdisco: {out}: directory {out_dir} does not exist")
    tmp_img = out_dir / f".{out.name}.tmp{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="hyperdisco-rootfs-") as work:
            tree = Path(work) / "root"
            say("laying out the root filesystem")
            populate_tree(tree, Path(busybox))
            script = Path(work) / "debugfs.cmds"
            script.write_text(_debugfs_script(tree))
            tmp_img.write_bytes(b"")
            say(f"mkfs.ext4 ({size_mib} MiB)")
            _run([mkfs, "-q", "-F", "-L", "hyperdisco-root", "-d", str(tree), str(tmp_img), f"{size_mib}m"],
                 out)
            _run([debugfs, "-w", "-f", str(script), str(tmp_img)], out)
        with open(tmp_img, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_img, out)
    except OSError as exc:
        raise ImageError(f"hyperdisco: {out}: cannot build root filesystem ({exc.strerror or exc})") from None
    finally:
        if tmp_img.exists():
            tmp_img.unlink()
    return out


def _run(argv: list[str], out: Path) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=300)
    except subprocess.TimeoutExpired:
        raise ImageError(f"hyperdisco: {out}: {Path(argv[0]).name} timed out") from None
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if proc.returncode != 0 or (Path(argv[0]).name == "debugfs" and errors):
        detail = (errors or proc.stdout.splitlines() or ["failed"])[-1].strip()
        raise ImageError(f"hyperdisco: {out}: {Path(argv[0]).name} failed: {detail}")
