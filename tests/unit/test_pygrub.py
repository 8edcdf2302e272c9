"""bootloader = "pygrub": the kernel, initrd and arguments a guest's disk holds, read with debugfs from small
ext4 images (mkfs.ext4 -d), whole or partitioned; hostile images (symlinks out, loops, odd paths, sizes,
missing files) give one-line errors and nothing is read from or written to the host outside the private
temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_support import make_elf

from hyperdisco.errors import ConfigError, HyperdiscoError, ImageError
from hyperdisco.images import pygrub
from hyperdisco.images.cpio import CpioWriter
from hyperdisco.images.pygrub import PygrubOptions, boot_files, parse_bootloader_args
from hyperdisco.toolstack.build import boot_disk, domain_config
from hyperdisco.toolstack.xlcfg import parse_disk, parse_text

_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
MKFS = shutil.which("mkfs.ext4", path=_PATH)
SFDISK = shutil.which("sfdisk", path=_PATH)
pytestmark = pytest.mark.skipif(MKFS is None or shutil.which("debugfs", path=_PATH) is None,
                                reason="e2fsprogs not installed (apt-get install e2fsprogs)")
needs_sfdisk = pytest.mark.skipif(SFDISK is None, reason="sfdisk not installed (apt-get install fdisk)")

GRUB_CFG = """\
set default="0"
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-x' {
	linux	/boot/vmlinuz-6.1.0-20-cloud-amd64 root=UUID=x ro quiet
	initrd	/boot/initrd.img-6.1.0-20-cloud-amd64
}
menuentry 'Old' --id old {
	linux	/boot/vmlinuz-6.1.0-18-cloud-amd64 root=UUID=x ro
	initrd	/boot/initrd.img-6.1.0-18-cloud-amd64
}
"""


class Link(str):
    """A symlink's target in an image tree."""


def build_tree(root: Path, files: dict[str, bytes | str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            os.symlink(str(content), path)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)


def ext4(path: Path, files: dict[str, bytes | str], size_mib: int = 16) -> Path:
    tree = path.with_name(path.name + ".tree")
    build_tree(tree, files)
    assert MKFS is not None
    subprocess.run([MKFS, "-q", "-F", "-d", str(tree), str(path), f"{size_mib}m"], check=True,
                   capture_output=True)
    return path


def partitioned(path: Path, filesystems: list[Path | None], label: str = "dos") -> Path:
    """A disk with one partition per entry (None: an empty partition), each filesystem copied in."""
    assert SFDISK is not None
    sizes = [(fs.stat().st_size if fs else 4 << 20) >> 9 for fs in filesystems]
    with open(path, "wb") as f:
        f.truncate((2048 + sum(sizes) + 2048) << 9)
    script = f"label: {label}\n" + "".join(f"size={s}\n" for s in sizes)
    subprocess.run([SFDISK, "-q", str(path)], input=script.encode(), check=True, capture_output=True)
    start = 2048
    with open(path, "r+b") as f:
        for fs, size in zip(filesystems, sizes, strict=True):
            if fs is not None:
                f.seek(start << 9)
                f.write(fs.read_bytes())
            start += size
    return path


def debian_files(**extra: bytes | str) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {
        "/boot/grub/grub.cfg": GRUB_CFG,
        "/boot/vmlinuz-6.1.0-20-cloud-amd64": b"KERNEL-20",
        "/boot/initrd.img-6.1.0-20-cloud-amd64": b"INITRD-20",
        "/boot/vmlinuz-6.1.0-18-cloud-amd64": b"KERNEL-18",
        "/boot/initrd.img-6.1.0-18-cloud-amd64": b"INITRD-18",
        "/etc/hostname": "guest\n",
    }
    files.update(extra)
    return files


def read_boot(image: Path, opts: PygrubOptions | None = None,
              partition: int | None = None) -> tuple[bytes, bytes | None, str, str]:
    with boot_files(image, opts, partition) as b:
        kernel = b.kernel.read_bytes()
        initrd = b.initrd.read_bytes() if b.initrd else None
        workdir = b.kernel.parent
        assert workdir.name.startswith("hyperdisco-pygrub-") and (workdir.stat().st_mode & 0o777) == 0o700
        result = (kernel, initrd, b.args, b.kernel_name)
    assert not workdir.exists()  # removed once the kernel is loaded
    return result


def fails(image: Path, match: str, opts: PygrubOptions | None = None, partition: int | None = None) -> str:
    with pytest.raises(ImageError, match=match) as err:
        read_boot(image, opts, partition)
    text = str(err.value)
    assert "\n" not in text and text.startswith("hyperdisco: ")
    return text


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary directories pygrub makes go here, so the tests see everything it leaves behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield tmp
    assert list(tmp.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# grub.cfg and the fallback


def test_default_entry_of_grub_cfg(tmp_path: Path) -> None:
    img = ext4(tmp_path / "d.img", debian_files())
    kernel, initrd, args, name = read_boot(img)
    assert (kernel, initrd, args) == (b"KERNEL-20", b"INITRD-20", "root=UUID=x ro quiet")
    assert name == f"{img}:/boot/vmlinuz-6.1.0-20-cloud-amd64"


def test_entry_option_and_saved_entry(tmp_path: Path) -> None:
    img = ext4(tmp_path / "d.img", debian_files())
    assert read_boot(img, PygrubOptions(entry="1"))[0] == b"KERNEL-18"
    assert read_boot(img, PygrubOptions(entry="Old"))[0] == b"KERNEL-18"
    cfg = GRUB_CFG.replace('set default="0"', 'load_env\nset default="${saved_entry}"')
    img2 = ext4(tmp_path / "s.img", debian_files(**{"/boot/grub/grub.cfg": cfg,
                                                    "/boot/grub/grubenv": "saved_entry=old\n" + "#" * 1000}))
    assert read_boot(img2)[:3] == (b"KERNEL-18", b"INITRD-18", "root=UUID=x ro")


def test_kernel_and_ramdisk_options_name_files_in_the_image(tmp_path: Path) -> None:
    img = ext4(tmp_path / "d.img", debian_files())
    kernel, initrd, args, _ = read_boot(img, PygrubOptions(kernel="/boot/vmlinuz-6.1.0-18-cloud-amd64",
                                                           ramdisk="/boot/initrd.img-6.1.0-20-cloud-amd64"))
    assert (kernel, initrd, args) == (b"KERNEL-18", b"INITRD-20", "")


def test_separate_boot_filesystem_layout(tmp_path: Path) -> None:
    cfg = "menuentry b { linux /vmlinuz-1 ro\n initrd /initrd-1 }"
    img = ext4(tmp_path / "b.img", {"/grub/grub.cfg": cfg, "/vmlinuz-1": b"K1", "/initrd-1": b"I1"})
    assert read_boot(img)[:3] == (b"K1", b"I1", "ro")


def test_several_initrds_are_concatenated_padded(tmp_path: Path) -> None:
    img = ext4(tmp_path / "m.img", {"/boot/grub/grub.cfg": "menuentry m {\n linux /boot/k\n initrd /boot/a "
                                                           "/boot/b\n}\n",
                                    "/boot/k": b"K", "/boot/a": b"abcde", "/boot/b": b"xyz"})
    assert read_boot(img)[1] == b"abcde\0\0\0xyz\0"


def test_newest_kernel_without_grub_cfg(tmp_path: Path) -> None:
    img = ext4(tmp_path / "n.img", {"/boot/vmlinuz-6.1.0-9-cloud-amd64": b"K9",
                                    "/boot/initrd.img-6.1.0-9-cloud-amd64": b"I9",
                                    "/boot/vmlinuz-6.1.0-10-cloud-amd64": b"K10",
                                    "/boot/initrd.img-6.1.0-10-cloud-amd64": b"I10",
                                    "/boot/vmlinuz-6.1.0-11-cloud-amd64.dpkg-tmp": b"K11",  # dpkg's
                                    "/boot/vmlinuz-6.1.0-13-cloud-amd64": b"",  # empty: not a kernel
                                    "/boot/config-6.1.0-12-cloud-amd64": b"",
                                    "/boot/System.map-6.1.0-12-cloud-amd64": b""})
    kernel, initrd, args, _ = read_boot(img)
    assert (kernel, initrd) == (b"K10", b"I10")
    uuid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(img)], capture_output=True,
                          text=True).stdout.strip()
    assert args == f"root=UUID={uuid} ro" if uuid else args.startswith("root=UUID=")


def test_newest_kernel_without_initrd(tmp_path: Path) -> None:
    img = ext4(tmp_path / "n.img", {"/boot/vmlinuz-5.10.0-1-amd64": b"K"})
    assert read_boot(img)[:2] == (b"K", None)


# ---------------------------------------------------------------------------------------------------------
# partitions


@needs_sfdisk
@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partitioned_image_first_partition_with_a_boot_config(tmp_path: Path, label: str) -> None:
    data = ext4(tmp_path / "data.img", {"/hello": "no boot here"}, size_mib=4)
    root = ext4(tmp_path / "root.img", debian_files(), size_mib=8)
    disk = partitioned(tmp_path / "disk.img", [None, data, root], label)
    kernel, _initrd, _args, name = read_boot(disk)
    assert kernel == b"KERNEL-20"
    assert name == f"{disk} partition 3:/boot/vmlinuz-6.1.0-20-cloud-amd64"
    assert read_boot(disk, partition=3)[0] == b"KERNEL-20"
    fails(disk, "partition 2: no /boot/grub/grub.cfg and no /boot directory", partition=2)
    fails(disk, "partition 1: not an ext2/3/4 filesystem", partition=1)
    fails(disk, "has no partition 7", partition=7)
    offset = (2048 + (4 << 20 >> 9) + (4 << 20 >> 9)) << 9
    assert read_boot(disk, PygrubOptions(offset=offset))[0] == b"KERNEL-20"


@needs_sfdisk
def test_partitioned_image_without_any_boot_config(tmp_path: Path) -> None:
    data = ext4(tmp_path / "data.img", {"/hello": "x"}, size_mib=4)
    disk = partitioned(tmp_path / "disk.img", [data, None])
    fails(disk, "no partition holds /boot/grub/grub.cfg")
    empty = partitioned(tmp_path / "empty.img", [None])
    fails(empty, "empty.img partition 1: not an ext2/3/4 filesystem")
    two = partitioned(tmp_path / "two.img", [None, None])
    fails(two, "two.img: no partition holds an ext2/3/4 filesystem")


# ---------------------------------------------------------------------------------------------------------
# bad and hostile images


def test_image_without_boot(tmp_path: Path) -> None:
    img = ext4(tmp_path / "e.img", {"/etc/hostname": "x\n"})
    fails(img, r"e.img: no /boot/grub/grub.cfg and no /boot directory: not a bootable Linux root")
    img2 = ext4(tmp_path / "f.img", {"/boot/README": "x\n"})
    fails(img2, r"f.img: no /boot/grub/grub.cfg and no /boot/vmlinuz-\* kernel")


def test_grub_cfg_naming_a_missing_kernel_or_initrd(tmp_path: Path) -> None:
    files = debian_files()
    del files["/boot/vmlinuz-6.1.0-20-cloud-amd64"]
    msg = fails(ext4(tmp_path / "k.img", files),
                "kernel /boot/vmlinuz-6.1.0-20-cloud-amd64 is not in the image")
    assert "'Debian GNU/Linux'" in msg
    files = debian_files()
    del files["/boot/initrd.img-6.1.0-20-cloud-amd64"]
    fails(ext4(tmp_path / "i.img", files), "initrd /boot/initrd.img-6.1.0-20-cloud-amd64 is not in the image")


def test_malformed_grub_cfg(tmp_path: Path) -> None:
    img = ext4(tmp_path / "g.img", debian_files(**{"/boot/grub/grub.cfg": "menuentry 'x' {\n linux /k\n"}))
    fails(img, r"/boot/grub/grub.cfg: a '\{' block is not closed")


def test_not_a_filesystem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    fails(junk, "junk.img: not an ext2/3/4 filesystem")
    fails(tmp_path / "missing.img", "no such disk image")
    fails(tmp_path, "is a directory, not a disk image")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fails(fifo, "is a FIFO, not a disk image")


def test_symlinks_resolve_inside_the_image_only(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"HOST SECRET")
    cfg = "menuentry s {\n linux /boot/vmlinuz\n initrd /boot/initrd.img\n}\n"
    # absolute and ../ links that would reach host files if followed on the host: inside the image they
    # reach the image's own files (or nothing)
    img = ext4(tmp_path / "l.img", {"/boot/grub/grub.cfg": cfg,
                                    "/boot/vmlinuz": Link("../../../../../../../../etc/hostname"),
                                    "/boot/initrd.img": Link(str(secret)),
                                    "/etc/hostname": "IMAGE HOSTNAME\n"})
    fails(img, "initrd /boot/initrd.img is not in the image")
    img2 = ext4(tmp_path / "l2.img", {"/boot/grub/grub.cfg": cfg,
                                      "/boot/vmlinuz": Link("/etc/hostname"),
                                      "/boot/initrd.img": Link("real/initrd"),
                                      "/boot/real/initrd": b"IMAGE INITRD",
                                      "/etc/hostname": "IMAGE HOSTNAME\n"})
    kernel, initrd, _args, name = read_boot(img2)
    assert (kernel, initrd) == (b"IMAGE HOSTNAME\n", b"IMAGE INITRD")
    assert name.endswith(":/etc/hostname")
    assert secret.read_bytes() == b"HOST SECRET"


def test_long_symlink_and_loops(tmp_path: Path) -> None:
    long_target = "/boot/" + "./" * 60 + "k"  # longer than a fast symlink: read from its block
    cfg = "menuentry s {\n linux /boot/long\n}\nmenuentry t {\n linux /boot/loop1\n}\n"
    img = ext4(tmp_path / "s.img", {"/boot/grub/grub.cfg": cfg, "/boot/long": Link(long_target),
                                    "/boot/k": b"K", "/boot/loop1": Link("loop2"),
                                    "/boot/loop2": Link("loop1")})
    assert read_boot(img)[0] == b"K"
    fails(img, "more than 8 symlinks", PygrubOptions(entry="1"))


def test_paths_with_odd_characters_are_refused(tmp_path: Path) -> None:
    for i, path in enumerate(["/boot/k;rdump / /tmp", "/boot/a b", '/boot/"q"', "/boot/k\\x"]):
        cfg = "menuentry s {\n linux '" + path + "'\n}\n"
        img = ext4(tmp_path / f"p{i}.img", {"/boot/grub/grub.cfg": cfg, "/boot/k": b"K"})
        fails(img, "has characters pygrub does not take")
    link = ext4(tmp_path / "pl.img", {"/boot/grub/grub.cfg": "menuentry s { linux /boot/k }",
                                      "/boot/k": Link("/boot/x y")})
    fails(link, "has characters pygrub does not take")


def test_directories_and_devices_are_not_kernels(tmp_path: Path) -> None:
    img = ext4(tmp_path / "d.img", {"/boot/grub/grub.cfg": "menuentry s { linux /boot }", "/boot/k": b"K"})
    fails(img, "kernel /boot is a directory, not a file")


def test_size_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = ext4(tmp_path / "big.img", debian_files(**{
        "/boot/vmlinuz-6.1.0-20-cloud-amd64": b"K" * 300_000,
        "/boot/initrd.img-6.1.0-20-cloud-amd64": b"I" * 300_000}))
    monkeypatch.setattr(pygrub, "MAX_KERNEL_BYTES", 200_000)
    fails(img, r"kernel /boot/vmlinuz-6.1.0-20-cloud-amd64 is larger than")
    monkeypatch.setattr(pygrub, "MAX_KERNEL_BYTES", 1 << 20)
    monkeypatch.setattr(pygrub, "MAX_RAMDISK_BYTES", 200_000)
    fails(img, "the initrd files are larger than")
    monkeypatch.setattr(pygrub, "MAX_GRUB_CFG_BYTES", 100)
    fails(img, r"/boot/grub/grub.cfg is larger than")


def test_copy_is_bounded_even_when_the_size_lies(tmp_path: Path) -> None:
    """debugfs runs with RLIMIT_FSIZE: a file that is larger than its bound when copied is cut and refused
    (as one that grew between the size check and the copy)."""
    img = ext4(tmp_path / "g.img", {"/boot/big": b"B" * 500_000})
    with _filesystem(img) as fs:
        with pytest.raises(ImageError, match="larger than"):
            fs.dump("/boot/big", 100_000, "kernel")
        assert [p.name for p in fs.workdir.iterdir()] == []
        assert fs.read("/boot/big", 600_000, "kernel") == b"B" * 500_000


class _filesystem:
    """The whole image as pygrub's filesystem reader, in a private directory (for the tests above)."""

    def __init__(self, image: Path) -> None:
        self.image = image

    def __enter__(self) -> pygrub._Filesystem:
        import tempfile
        self.fd = os.open(self.image, os.O_RDONLY)
        self.tmp = tempfile.TemporaryDirectory(prefix="hyperdisco-pygrub-")
        return pygrub._Filesystem(pygrub._tool("debugfs", "e2fsprogs"), self.fd, 0, str(self.image),
                                  Path(self.tmp.name))

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self.tmp.cleanup()


def test_nothing_is_written_outside_the_private_directory(tmp_path: Path, private_tmp: Path) -> None:
    img = ext4(tmp_path / "w.img", debian_files())
    before = sorted(p.name for p in tmp_path.iterdir())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        read_boot(img)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(private_tmp.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# bootloader_args, xl.cfg and the domain's config


def test_bootloader_args() -> None:
    assert parse_bootloader_args(["--entry=1", "-q", "--args", "single", "--offset=1048576",
                                  "--disk=xvdb"]) == PygrubOptions(entry="1", args="single", offset=1 << 20,
                                                                   disk="xvdb")
    with pytest.raises(ImageError, match="not a pygrub option"):
        parse_bootloader_args(["--output=/etc/passwd"])
    with pytest.raises(ImageError, match="needs a value"):
        parse_bootloader_args(["--entry"])
    with pytest.raises(ImageError, match="not a byte offset"):
        parse_bootloader_args(["--offset=-1"])


def test_xl_cfg_bootloader_keys(tmp_path: Path) -> None:
    spec = parse_text('name = "g"\nbootloader = "/usr/lib/xen-4.17/bin/pygrub"\n'
                      'bootloader_args = ["--entry=1", "-q"]\nkernel = "/boot/vmlinuz-x"\n'
                      "disk = [ 'format=raw, vdev=xvda, target=d.img' ]\nextra = 'quiet'\n"
                      "root = '/dev/xvda1'\n",
                      "g.cfg", base_dir=tmp_path)
    assert spec.bootloader == "pygrub"
    assert spec.bootloader_args == ["--entry=1", "-q"]
    assert spec.kernel == "/boot/vmlinuz-x"  # inside the guest's disk, not resolved against the config dir
    assert spec.cmdline == "root=/dev/xvda1 quiet"
    legacy = parse_text('name = "g"\nbootloader = "pygrub"\nbootloader_args = "--entry=1 -q"\n')
    assert legacy.bootloader_args == ["--entry=1", "-q"]
    for text, match in [('bootloader = "grub2"', "g.cfg:2: bootloader: 'grub2' is not supported"),
                        ('bootloader = "pygrub"\nbootloader_args = ["--bogus"]', "g.cfg:3: bootloader_args: "
                                                                                 "'--bogus' is not a pygrub"),
                        ('bootloader = "pygrub"\nkernel = "vmlinuz"',
                         "kernel: 'vmlinuz': with a bootloader")]:
        with pytest.raises(ConfigError, match=match):
            parse_text(f'name = "g"\n{text}\n', "g.cfg")


def test_boot_disk_choice() -> None:
    a = parse_disk("format=raw, vdev=xvda, target=/a.img")
    b = parse_disk("format=raw, vdev=xvdb, target=/b.img")
    assert boot_disk([a, b], None, None) == (a, None)
    assert boot_disk([a, b], None, "root=/dev/xvdb2 ro") == (b, 2)
    assert boot_disk([a, b], None, "root=/dev/xvdb") == (b, None)
    assert boot_disk([a, b], "xvdb", "root=UUID=x") == (b, None)
    with pytest.raises(ConfigError, match="no disk 'xvdc'"):
        boot_disk([a, b], "xvdc", None)
    with pytest.raises(ConfigError, match="no disk to boot from"):
        boot_disk([], None, None)


def initramfs() -> bytes:
    w = CpioWriter()
    w.file("init", b"#!/bin/sh\n", 0o755)
    return w.finish()


def test_domain_config_through_pygrub(tmp_path: Path) -> None:
    img = ext4(tmp_path / "root.img", debian_files(**{"/boot/vmlinuz-6.1.0-20-cloud-amd64": make_elf(),
                                                      "/boot/initrd.img-6.1.0-20-cloud-amd64": initramfs()}))
    disk = parse_disk(f"format=raw, vdev=xvda, target={img}")
    cfg = domain_config("g", None, None, "root=/dev/xvda extra=1", 128, bootloader="pygrub",
                        bootloader_args=["-q"], disks=[disk])
    assert cfg.cmdline == "console=hvc0 root=UUID=x ro quiet root=/dev/xvda extra=1"
    assert cfg.initrd == initramfs()
    assert cfg.kernel.pvh_entry == 0x1000000
    # --args adds to the entry's arguments too; a fake kernel is a one-line error naming it in the image
    with pytest.raises(HyperdiscoError, match=r"root.img:/boot/vmlinuz-6.1.0-18-cloud-amd64") as err:
        domain_config("g", None, None, None, 128, bootloader="pygrub", bootloader_args=["--entry=old"],
                      disks=[disk])
    assert "\n" not in str(err.value)
    qcow = parse_disk(f"format=qcow2, vdev=xvda, target={img}")
    with pytest.raises(ConfigError, match="pygrub reads raw disks only"):
        domain_config("g", None, None, None, 128, bootloader="pygrub", disks=[qcow])
