"""The guest initramfs: busybox, the scripts in ``guest/``, device nodes and the Xen/virtio drivers."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from hyperdisco.errors import ImageError
from hyperdisco.images.cpio import CpioWriter
from hyperdisco.images.guest_tools import build_tools, tools_version
from hyperdisco.images.kmod import ModuleTree

# Bump when the builder below changes the archive layout; the guest scripts are hashed separately.
INITRAMFS_LAYOUT_VERSION = 1

# (path in the guest, file in hyperdisco/images/guest/, mode)
GUEST_FILES: tuple[tuple[str, str, int], ...] = (
    ("init", "init", 0o755),
    ("etc/rc", "rc", 0o755),
    ("etc/bench", "bench", 0o755),
    ("etc/inittab", "inittab", 0o644),
    ("etc/profile", "profile", 0o644),
    ("etc/passwd", "passwd", 0o644),
    ("etc/group", "group", 0o644),
    ("usr/share/udhcpc/default.script", "udhcpc.script", 0o755),
)

GUEST_MODULES: tuple[str, ...] = (
    "xen-blkfront",
    "xen-netfront",
    "xenfs",
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "virtio_blk",
)

DIRECTORIES: tuple[str, ...] = (
    "bin",
    "dev",
    "etc",
    "lib",
    "mnt",
    "proc",
    "root",
    "run",
    "sys",
    "tmp",
    "usr",
    "var",
)

# (path, major, minor, mode): enough for /init before devtmpfs is mounted, and for kernels without it.
DEVICES: tuple[tuple[str, int, int, int], ...] = (
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
    ("dev/zero", 1, 5, 0o666),
    ("dev/tty", 5, 0, 0o666),
    ("dev/hvc0", 229, 0, 0o600),
    ("dev/ttyS0", 4, 64, 0o600),
)

# Used when the busybox binary cannot run on this host to list its applets.
FALLBACK_APPLETS: tuple[str, ...] = (
    "[", "[[", "ash", "awk", "basename", "cat", "chmod", "chown", "chroot", "clear", "cp", "cttyhack", "cut",
    "date", "dd", "df", "dirname", "dmesg", "du", "echo", "env", "false", "find", "free", "grep", "halt",
    "head", "hostname", "id", "ifconfig", "init", "insmod", "ip", "kill", "less", "ln", "ls", "lsmod",
    "mdev", "mkdir", "mknod", "modprobe", "mount", "mv", "poweroff", "printf", "ps", "pwd", "readlink",
    "reboot", "rm", "rmdir", "rmmod", "sed", "seq", "sh", "sleep", "sort", "stat", "switch_root", "sync",
    "tail", "tee", "test", "time", "top", "touch", "tr", "true", "umount", "uname", "uptime", "vi", "wc",
    "which", "xargs", "yes",
)  # fmt: skip

_APPLET_RE = re.compile(r"^[A-Za-z0-9_.\[\]-]+$")


def guest_file(name: str) -> bytes:
    """A file shipped in ``hyperdisco/images/guest/``."""
    return resources.files("hyperdisco.images").joinpath("guest").joinpath(name).read_bytes()


def guest_version() -> str:
    """Identifies the initramfs recipe: changes whenever a guest script or the layout version changes."""
    h = hashlib.sha256(f"layout={INITRAMFS_LAYOUT_VERSION}\n".encode())
    for path, src, mode in GUEST_FILES:
        h.update(f"{path} {mode:o} ".encode())
        h.update(guest_file(src))
    h.update(" ".join(GUEST_MODULES).encode())
    h.update(tools_version(guest_file).encode())
    return f"{INITRAMFS_LAYOUT_VERSION}-{h.hexdigest()[:16]}"


def busybox_applets(busybox: Path) -> list[str]:
    """The applets ``busybox --list`` reports, or a fixed common set when it cannot run here."""
    try:
        proc = subprocess.run([str(busybox), "--list"], capture_output=True, timeout=30, check=True)
        names = [n for n in proc.stdout.decode(errors="replace").split() if _APPLET_RE.match(n)]
    except (OSError, subprocess.SubprocessError):
        names = []
    if len(names) < 10:
        names = list(FALLBACK_APPLETS)
    return sorted(set(names) - {"busybox"})


class _Tree:
    """A CpioWriter that creates missing parent directories on demand."""

    def __init__(self) -> None:
        self.w = CpioWriter()
        self.dirs: set[str] = set()

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        if not path or path in self.dirs:
            return
        self.mkdir(path.rpartition("/")[0])
        self.w.directory(path, mode)
        self.dirs.add(path)

    def parent(self, path: str) -> None:
        self.mkdir(path.strip("/").rpartition("/")[0])


def build_initramfs(busybox: Path, modules_root: Path, release: str,
                    progress: Callable[[str], None] | None = None) -> bytes:
    """Build the guest's newc cpio.

    ``busybox`` is a static x86-64 busybox binary; ``modules_root`` is the directory holding
    ``lib/modules/<release>`` (the unpacked linux-image package); the C tools (guest_tools.py) are
    compiled here, `progress` says so.
    """
    try:
        busybox_bin = Path(busybox).read_bytes()
    except OSError as exc:
        raise ImageError(f"hyperdisco: {busybox}: cannot read busybox ({exc.strerror or exc})") from None
    if busybox_bin[:4] != b"\x7fELF":
        raise ImageError(f"hyperdisco: {busybox}: not a busybox executable")

    t = _Tree()
    for d in DIRECTORIES:
        t.mkdir(d)
    for path, major, minor, mode in DEVICES:
        t.w.chardev(path, major, minor, mode)

    t.w.file("bin/busybox", busybox_bin, 0o755)
    for applet in busybox_applets(Path(busybox)):
        t.w.symlink(f"bin/{applet}", "busybox")
    t.w.symlink("sbin", "bin")
    t.w.symlink("usr/bin", "../bin")
    t.w.symlink("usr/sbin", "../bin")

    for path, src, mode in GUEST_FILES:
        t.parent(path)
        t.w.file(path, guest_file(src), mode)
    for path, binary in build_tools(guest_file, progress):
        t.parent(path)
        t.w.file(path, binary, 0o755)

    mod_dir = Path(modules_root) / "lib" / "modules" / release
    tree = ModuleTree(mod_dir)
    modules = tree.load_order(list(GUEST_MODULES))
    base = f"lib/modules/{release}"
    t.mkdir(base)
    for mod in modules:
        dest = f"{base}/{mod.relpath}"
        t.parent(dest)
        t.w.file(dest, (mod_dir / mod.relpath).read_bytes(), 0o644)
    t.w.file(f"{base}/modules.dep", tree.modules_dep(modules).encode())
    t.w.file(f"{base}/modules.alias", tree.modules_alias(modules).encode())
    for extra in ("modules.builtin", "modules.builtin.modinfo"):
        if (mod_dir / extra).is_file():
            t.w.file(f"{base}/{extra}", (mod_dir / extra).read_bytes())
    return t.w.finish()
