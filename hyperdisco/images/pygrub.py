"""xl's ``bootloader = "pygrub"``: the kernel and initramfs a guest's own disk holds, and their arguments.

As Xen's pygrub does, this reads the boot disk's filesystem (the whole image, or each partition of a
partitioned image in turn until one holds a boot configuration), takes the default entry of
``/boot/grub/grub.cfg`` (images/grubcfg.py; also ``/boot/grub2``, and ``/grub``, ``/grub2`` for a
separate /boot filesystem) or, with no grub.cfg, the newest ``/boot/vmlinuz-*`` with its
``initrd.img-*`` (arguments ``root=UUID=<the filesystem's UUID> ro``), and hands back the files copied into
a private temporary directory that is removed when the caller has loaded them.

The filesystem is read with e2fsprogs' ``debugfs`` (ext2/3/4 only), never mounted: no privileges, no
loop device, and nothing in the image can name a host file. The choices, and why:

- The image is opened here once (a regular file or a block device) and handed to debugfs as
  ``/dev/fd/N``; a partition is read in place through the ext2fs I/O manager's ``offset=`` option
  (``/dev/fd/N?offset=BYTES``: debugfs has no offset flag, ``-s`` is for backup superblocks, and copying
  a 4 GiB partition out with dd is far too slow; losetup would need root). The partition table is read
  with util-linux's ``sfdisk -J``.
- Paths found in the image (grub.cfg's ``linux``/``initrd`` lines, symlinks) are resolved here, inside the
  image's own namespace (``..`` stops at its root, at most 8 symlinks), and only then given to debugfs,
  which looks names up inside the filesystem; they must be plain (letters, digits, ``._+~,:@=-``).
  debugfs's ``dump`` writes only the output name given to it (a name of ours in the private directory)
  and does not follow a symlink it is asked to dump.
- Sizes are bounded before anything is copied (the inode's size: a kernel up to 256 MiB, the initramfs
  files together up to 1 GiB, grub.cfg up to 1 MiB) and again while copying: debugfs runs with
  RLIMIT_FSIZE just above the bound (a file that grows between the two is cut and refused), with a
  timeout, and its output goes to bounded files too.

Every failure is one :class:`ImageError` line naming the image and the problem (an image without /boot,
a grub.cfg naming a kernel that is not there, a filesystem debugfs cannot read).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import resource
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from hyperdisco.backends.disk.base import file_kind
from hyperdisco.errors import ImageError
from hyperdisco.images.grubcfg import GrubError, boot_entry, parse_grub_cfg, parse_grubenv, select_entry
from hyperdisco.images.hostfile import MAX_KERNEL_BYTES, MAX_RAMDISK_BYTES, read_regular_file

MAX_GRUB_CFG_BYTES = 1 << 20
MAX_GRUBENV_BYTES = 64 << 10
MAX_LINK_BYTES = 4096  # PATH_MAX
MAX_SYMLINKS = 8
MAX_OUTPUT_BYTES = 16 << 20  # what one debugfs command may print (a listing of /boot, stat)
MAX_PARTITIONS_TRIED = 128
DEBUGFS_TIMEOUT = 300.0
GRUB_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub/grub.cfg", "/grub2/grub.cfg")
EXTENDED_PARTITION_TYPES = frozenset({"5", "f", "85"})  # MBR containers of logical partitions

_SBIN_DIRS = ("/usr/sbin", "/sbin")
_SAFE_PATH = re.compile(r"/(?:[A-Za-z0-9._+~,:@=-]+(?:/[A-Za-z0-9._+~,:@=-]+)*)?")
_KERNEL_RE = re.compile(r"vmlinuz-([A-Za-z0-9._+~-]+)")
_NOT_KERNEL_RE = re.compile(r".*\.(dpkg-[a-z]+|old|bak|sig)")  # dpkg's leftovers, backups
_LS_RE = re.compile(r"/(\d+)/(\d+)/\d+/\d+/(.*)/(\d*)/")
_NOT_FOUND = "File not found by ext2_lookup"


@dataclass(frozen=True)
class PygrubOptions:
    """pygrub's options as xl passes them (``--kernel``/``--ramdisk`` from xl.cfg's kernel/ramdisk, which
    name files inside the guest when a bootloader is set) and ``bootloader_args`` may add: ``--entry``
    (an index or title, instead of grub.cfg's default), ``--args`` (appended to the entry's arguments),
    ``--offset`` (the filesystem's byte offset in the disk), ``-q``/``--quiet`` (accepted); and
    hyperdisco's own ``--disk=VDEV`` (the disk to read, instead of the first)."""

    entry: str | None = None
    kernel: str | None = None
    ramdisk: str | None = None
    args: str | None = None
    offset: int | None = None
    disk: str | None = None


_VALUE_OPTIONS = {"--entry": "entry", "--kernel": "kernel", "--ramdisk": "ramdisk", "--args": "args",
                  "--offset": "offset", "--disk": "disk"}
_FLAG_OPTIONS = frozenset({"-q", "--quiet"})


def parse_bootloader_args(args: Sequence[str]) -> PygrubOptions:
    """pygrub's command-line options from ``bootloader_args`` (``--name=value`` or ``--name value``)."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in _FLAG_OPTIONS:
            continue
        name, eq, value = arg.partition("=")
        if name not in _VALUE_OPTIONS:
            shown = arg if len(arg) <= 60 else arg[:60] + "..."
            raise ImageError(f"hyperdisco: bootloader_args: {shown!r} is not a pygrub option hyperdisco "
                             f"takes ({', '.join(sorted(_VALUE_OPTIONS))}, --quiet)")
        if not eq:
            if i >= len(args):
                raise ImageError(f"hyperdisco: bootloader_args: {name} needs a value")
            value = args[i]
            i += 1
        values[_VALUE_OPTIONS[name]] = value
    offset: int | None = None
    if "offset" in values:
        text = values["offset"]
        if not (text.isascii() and text.isdigit()) or len(text) > 20:
            raise ImageError(f"hyperdisco: bootloader_args: --offset={text[:40]!r} is not a byte offset")
        offset = int(text)
    return PygrubOptions(entry=values.get("entry"), kernel=values.get("kernel"),
                         ramdisk=values.get("ramdisk"), args=values.get("args"), offset=offset,
                         disk=values.get("disk"))


@dataclass(frozen=True)
class BootFiles:
    """What the chosen entry boots, its files copied out of the image (gone when the context exits)."""

    kernel: Path
    initrd: Path | None  # several initramfs files are concatenated, each padded to 4 bytes
    args: str  # the entry's kernel arguments (before xl.cfg's extra)
    kernel_name: str  # "IMAGE:/boot/vmlinuz-..." for messages
    initrd_name: str | None
    entry: str  # the menu entry's title, or how the kernel was found


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))
    if found is None:
        raise ImageError(f"hyperdisco: pygrub: {name} not found: install it with 'apt-get install {package}'")
    return found


def _limits(fsize: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _image_path(path: str) -> str:
    """An image path inside the image, made absolute and normal; ImageError unless plain."""
    norm = posixpath.normpath("/" + path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if not _SAFE_PATH.fullmatch(norm):
        raise ImageError(f"path {path[:80]!r} has characters pygrub does not take")
    return norm


@dataclass(frozen=True)
class _Inode:
    kind: str  # debugfs's Type: regular, directory, symlink, ...
    size: int
    link: str | None  # a fast symlink's target


class _Filesystem:
    """One ext2/3/4 filesystem inside an image (at a byte offset), read with debugfs."""

    def __init__(self, debugfs: str, fd: int, offset: int, label: str, workdir: Path) -> None:
        self.debugfs = debugfs
        self.fd = fd
        self.device = f"/dev/fd/{fd}" + (f"?offset={offset}" if offset else "")
        self.label = label  # "IMAGE" or "IMAGE partition 2", for messages
        self.workdir = workdir
        self._seq = 0

    def fail(self, why: str) -> ImageError:
        return ImageError(f"hyperdisco: {self.label}: {why}")

    def run(self, request: str, fsize: int = MAX_OUTPUT_BYTES) -> tuple[str, list[str]]:
        """One debugfs request (read-only, catastrophic mode: no bitmaps read): (stdout, error lines)."""
        self._seq += 1
        out_path = self.workdir / f".out{self._seq}"
        err_path = self.workdir / f".err{self._seq}"
        env = dict(os.environ, LC_ALL="C", PAGER="__none__", DEBUGFS_PAGER="__none__")
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.run([self.debugfs, "-c", "-R", request, self.device],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.workdir,
                                      env=env, pass_fds=(self.fd,),
                                      timeout=DEBUGFS_TIMEOUT, preexec_fn=_limits(max(fsize + 1, 1 << 16)),
                                      check=False)
            stdout = _head(out_path)
            stderr = _head(err_path)
        except subprocess.TimeoutExpired:
            raise self.fail(f"debugfs took longer than {DEBUGFS_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise self.fail(f"cannot run debugfs ({exc.strerror or exc})") from None
        finally:
            out_path.unlink(missing_ok=True)
            err_path.unlink(missing_ok=True)
        errors = [ln.strip() for ln in stderr.splitlines()
                  if ln.strip() and not ln.startswith("debugfs ") and not ln.startswith("catastrophic mode")]
        if proc.returncode == -25:  # SIGXFSZ: the output passed its bound
            errors.append("file larger than its bound")
        elif proc.returncode != 0:
            errors.append(f"debugfs exited with status {proc.returncode}")
        return stdout, errors

    def probe(self) -> tuple[str | None, str | None]:
        """(the filesystem's UUID, None) when debugfs reads it, else (None, why not)."""
        out, errors = self.run("stats -h")
        m = re.search(r"^Filesystem UUID:\s*([0-9a-fA-F-]{36})\s*$", out, re.MULTILINE)
        if m is None or any("while trying to open" in e or "Filesystem not open" in e for e in errors):
            why = next((e for e in errors if "while trying to open" in e), errors[0] if errors else "")
            why = why.split(" while trying to open")[0].removeprefix("debugfs: ")
            return None, why or "not an ext2/3/4 filesystem"
        return m.group(1), None

    def stat(self, path: str) -> _Inode | None:
        """The inode at ``path`` (not following a last symlink), None when there is none."""
        out, errors = self.run(f"stat {path}")
        if any(_NOT_FOUND in e for e in errors):
            return None
        kind = re.search(r"Type:\s*(\S+)", out)
        size = re.search(r"Size:\s*(\d+)", out)
        if kind is None or size is None:
            raise self.fail(f"cannot read {path}: {(errors or ['no inode information'])[-1][:200]}")
        link = re.search(r'^Fast link dest: "(.*)"$', out, re.MULTILINE)
        return _Inode(kind.group(1), int(size.group(1)), link.group(1) if link else None)

    def resolve(self, path: str, what: str) -> tuple[str, int] | None:
        """(the regular file ``path`` names, its size), following symlinks inside the image; None when
        nothing is there."""
        try:
            current = _image_path(path)
        except ImageError as exc:
            raise self.fail(f"{what}: {exc}") from None
        for _ in range(MAX_SYMLINKS + 1):
            inode = self.stat(current)
            if inode is None:
                return None
            if inode.kind == "regular":
                return current, inode.size
            if inode.kind != "symlink":
                raise self.fail(f"{what} {current} is a {inode.kind}, not a file")
            target = inode.link
            if target is None:
                if inode.size > MAX_LINK_BYTES:
                    raise self.fail(f"{what} {current}: symlink target too long")
                target = self.read(current, MAX_LINK_BYTES, "symlink").decode(errors="replace")
            base = "/" if target.startswith("/") else posixpath.dirname(current)
            try:
                current = _image_path(posixpath.join(base, target))
            except ImageError as exc:
                raise self.fail(f"{what}: symlink {path[:80]!r}: {exc}") from None
        raise self.fail(f"{what} {path[:80]!r}: more than {MAX_SYMLINKS} symlinks")

    def dump(self, path: str, limit: int, what: str) -> Path:
        """Copy the file ``path`` (resolved, at most ``limit`` bytes) into the private directory."""
        self._seq += 1
        dest = self.workdir / f"{what.replace(' ', '-')}{self._seq}"
        _out, errors = self.run(f"dump {path} {dest.name}", fsize=limit)
        if errors:
            dest.unlink(missing_ok=True)
            if "file larger than its bound" in errors:
                raise self.fail(f"{what} {path} is larger than {_size_text(limit)}")
            raise self.fail(f"cannot copy {what} {path}: {errors[0][:200]}")
        try:
            st = os.lstat(dest)
        except OSError:
            raise self.fail(f"cannot copy {what} {path}: debugfs wrote nothing") from None
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise self.fail(f"{what} {path} is larger than {_size_text(limit)}")
        return dest

    def read(self, path: str, limit: int, what: str) -> bytes:
        dest = self.dump(path, limit, what)
        try:
            return read_regular_file(dest, limit, what)
        finally:
            dest.unlink(missing_ok=True)

    def listdir(self, path: str) -> list[tuple[str, int, int]] | None:
        """(name, mode, size) of each entry of the directory ``path``; None when there is no such
        directory."""
        out, errors = self.run(f"ls -p {path}")
        if any(_NOT_FOUND in e for e in errors):
            return None
        if errors and not out:
            raise self.fail(f"cannot list {path}: {errors[0][:200]}")
        entries = []
        for line in out.splitlines():
            m = _LS_RE.fullmatch(line.strip())
            if m is not None and m.group(3) not in (".", ".."):
                entries.append((m.group(3), int(m.group(2), 8), int(m.group(4) or 0)))
        return entries


def _head(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(MAX_OUTPUT_BYTES).decode(errors="replace")


def _size_text(limit: int) -> str:
    return f"{limit >> 30} GiB" if limit >= 1 << 30 else f"{limit >> 20} MiB"


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of kernel versions: 6.1.0-18 after 6.1.0-9."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version) if p)


@dataclass(frozen=True)
class _Choice:
    kernel: str
    initrds: tuple[str, ...]
    args: str
    entry: str


def _from_grub(fs: _Filesystem, cfg_path: str, cfg_size: int, opts: PygrubOptions) -> _Choice:
    if cfg_size > MAX_GRUB_CFG_BYTES:
        raise fs.fail(f"{cfg_path} is larger than {_size_text(MAX_GRUB_CFG_BYTES)}")
    text = fs.read(cfg_path, MAX_GRUB_CFG_BYTES, "grub.cfg").decode("utf-8", errors="replace")
    grubenv: dict[str, str] = {}
    env_file = fs.resolve(posixpath.join(posixpath.dirname(cfg_path), "grubenv"), "grubenv")
    if env_file is not None and env_file[1] <= MAX_GRUBENV_BYTES:
        grubenv = parse_grubenv(fs.read(env_file[0], MAX_GRUBENV_BYTES, "grubenv"))
    try:
        config = parse_grub_cfg(text, grubenv)
        entry = boot_entry(config, select_entry(config, opts.entry))
    except GrubError as exc:
        raise fs.fail(f"{cfg_path}: {exc}") from None
    return _Choice(entry.kernel, entry.initrds, entry.args, f"menu entry {entry.title[:80]!r} of {cfg_path}")


def _newest_kernel(fs: _Filesystem, uuid: str) -> _Choice | None:
    """The newest /boot/vmlinuz-VERSION with /boot/initrd.img-VERSION when there is one."""
    listing = fs.listdir("/boot")
    if listing is None:
        return None
    names = {name for name, _mode, _size in listing}
    versions = [m.group(1) for name, _mode, size in listing
                if size and (m := _KERNEL_RE.fullmatch(name)) and not _NOT_KERNEL_RE.fullmatch(name)]
    if not versions:
        return None
    version = max(versions, key=_version_key)
    initrd = f"initrd.img-{version}"
    return _Choice(f"/boot/vmlinuz-{version}", (f"/boot/{initrd}",) if initrd in names else (),
                   f"root=UUID={uuid} ro", f"the newest kernel in /boot (no grub.cfg), {version}")


def _choose(fs: _Filesystem, uuid: str, opts: PygrubOptions) -> _Choice | None:
    """What this filesystem boots, or None when it holds no boot configuration and no kernel."""
    if opts.kernel is not None:
        return _Choice(opts.kernel, (opts.ramdisk,) if opts.ramdisk else (), "", f"--kernel {opts.kernel}")
    for cfg in GRUB_CONFIGS:
        found = fs.resolve(cfg, "grub.cfg")
        if found is not None:
            choice = _from_grub(fs, found[0], found[1], opts)
            return replace(choice, initrds=(opts.ramdisk,)) if opts.ramdisk else choice
    newest = _newest_kernel(fs, uuid)
    if newest is not None and opts.ramdisk:
        newest = replace(newest, initrds=(opts.ramdisk,))
    return newest


def _copy_out(fs: _Filesystem, choice: _Choice, workdir: Path) -> BootFiles:
    kernel = fs.resolve(choice.kernel, "kernel")
    if kernel is None:
        raise fs.fail(f"{choice.entry}: kernel {choice.kernel[:120]} is not in the image")
    if kernel[1] > MAX_KERNEL_BYTES:
        raise fs.fail(f"kernel {kernel[0]} is larger than {_size_text(MAX_KERNEL_BYTES)}")
    initrds: list[tuple[str, int]] = []
    for name in choice.initrds:
        found = fs.resolve(name, "initrd")
        if found is None:
            raise fs.fail(f"{choice.entry}: initrd {name[:120]} is not in the image")
        initrds.append(found)
    if sum(size for _path, size in initrds) > MAX_RAMDISK_BYTES:
        raise fs.fail(f"the initrd files are larger than {_size_text(MAX_RAMDISK_BYTES)} together")
    kernel_file = fs.dump(kernel[0], MAX_KERNEL_BYTES, "kernel")
    initrd_file: Path | None = None
    if len(initrds) == 1:
        initrd_file = fs.dump(initrds[0][0], MAX_RAMDISK_BYTES, "initrd")
    elif initrds:  # as GRUB loads several: one after another, each padded to 4 bytes
        initrd_file = workdir / "initrd"
        with open(initrd_file, "wb") as out:
            for path, _size in initrds:
                part = fs.dump(path, MAX_RAMDISK_BYTES, "initrd")
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
                part.unlink()
                out.write(b"\0" * (-out.tell() % 4))
            if out.tell() > MAX_RAMDISK_BYTES:
                raise fs.fail(f"the initrd files are larger than {_size_text(MAX_RAMDISK_BYTES)} together")
    initrd_name = f"{fs.label}:{'+'.join(p for p, _s in initrds)}" if initrds else None
    return BootFiles(kernel=kernel_file, initrd=initrd_file, args=choice.args,
                     kernel_name=f"{fs.label}:{kernel[0]}", initrd_name=initrd_name, entry=choice.entry)


def _partitions(fd: int, label: str) -> list[tuple[int, int]] | None:
    """(number, byte offset) of each partition of the image, in table order; None when it has no
    partition table sfdisk knows (or sfdisk is not installed)."""
    sfdisk = shutil.which("sfdisk") or shutil.which("sfdisk", path=os.pathsep.join(_SBIN_DIRS))
    if sfdisk is None:
        return None
    try:
        proc = subprocess.run([sfdisk, "-J", f"/dev/fd/{fd}"], stdin=subprocess.DEVNULL, capture_output=True,
                              pass_fds=(fd,), timeout=60, env=dict(os.environ, LC_ALL="C"), check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or len(proc.stdout) > MAX_OUTPUT_BYTES:
        return None
    try:
        table = json.loads(proc.stdout)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        parts = []
        for p in table.get("partitions", []):
            number = re.search(r"(\d+)$", str(p["node"]))
            if number is None or str(p.get("type", "")).lower() in EXTENDED_PARTITION_TYPES:
                continue
            parts.append((int(number.group(1)), int(p["start"]) * sector))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ImageError(f"hyperdisco: {label}: cannot read its partition table") from None
    return parts


def _open_image(image: str) -> int:
    try:
        st = os.stat(image)
        kind = file_kind(st.st_mode)
        if kind is not None and not stat.S_ISBLK(st.st_mode):
            raise ImageError(f"hyperdisco: {image}: is {kind}, not a disk image")
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError(f"hyperdisco: {image}: no such disk image") from None
    except OSError as exc:
        raise ImageError(f"hyperdisco: {image}: cannot read the disk ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        os.close(fd)
        raise ImageError(f"hyperdisco: {image}: is {file_kind(st.st_mode)}, not a disk image")
    return fd


@contextmanager
def boot_files(image: str | Path, opts: PygrubOptions | None = None,
               partition: int | None = None) -> Iterator[BootFiles]:
    """The kernel and initramfs the disk ``image`` boots (``partition``: only that partition, numbered as
    in its table), copied into a private temporary directory that is removed when the context exits."""
    opts = opts or PygrubOptions()
    name = str(image)
    debugfs = _tool("debugfs", "e2fsprogs")
    fd = _open_image(name)
    try:
        with tempfile.TemporaryDirectory(prefix="hyperdisco-pygrub-") as tmp:
            workdir = Path(tmp)
            yield _find_boot_files(debugfs, fd, name, opts, partition, workdir)
    finally:
        os.close(fd)


def _find_boot_files(debugfs: str, fd: int, name: str, opts: PygrubOptions, partition: int | None,
                     workdir: Path) -> BootFiles:
    candidates: list[tuple[int, str]]
    no_table_note = ""
    if opts.offset is not None:
        candidates = [(opts.offset, f"{name} (offset {opts.offset})")]
    else:
        parts = _partitions(fd, name)
        if partition is not None:
            if parts is None:
                raise ImageError(f"hyperdisco: {name}: has no partition table, so no partition {partition}")
            offsets = [off for number, off in parts if number == partition]
            if not offsets:
                raise ImageError(f"hyperdisco: {name}: has no partition {partition}")
            candidates = [(offsets[0], f"{name} partition {partition}")]
        elif parts:
            candidates = [(off, f"{name} partition {number}") for number, off in parts[:MAX_PARTITIONS_TRIED]]
        else:
            candidates = [(0, name)]
            if parts is None and shutil.which("sfdisk", path=os.pathsep.join(
                    [os.environ.get("PATH", ""), *_SBIN_DIRS])) is None:
                no_table_note = " (sfdisk, from fdisk, is not installed to look for partitions)"
    unreadable: list[tuple[str, str]] = []
    for offset, label in candidates:
        fs = _Filesystem(debugfs, fd, offset, label, workdir)
        uuid, why = fs.probe()
        if uuid is None:
            unreadable.append((label, why or ""))
            continue
        choice = _choose(fs, uuid, opts)
        if choice is not None:
            return _copy_out(fs, choice, workdir)
        if len(candidates) == 1:
            has_boot = fs.listdir("/boot") is not None
            raise fs.fail("no /boot/grub/grub.cfg and " + (
                "no /boot/vmlinuz-* kernel" if has_boot else "no /boot directory: not a bootable Linux root"))
    if len(candidates) == 1 and unreadable:
        label, why = unreadable[0]
        raise ImageError(f"hyperdisco: {label}: not an ext2/3/4 filesystem, the only kind pygrub reads here "
                         f"(debugfs: {why}){no_table_note}")
    if len(unreadable) == len(candidates):
        raise ImageError(f"hyperdisco: {name}: no partition holds an ext2/3/4 filesystem")
    raise ImageError(f"hyperdisco: {name}: no partition holds /boot/grub/grub.cfg or a /boot/vmlinuz-* "
                     "kernel")
