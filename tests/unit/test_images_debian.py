"""`hyperdisco images debian`: its arguments, the apt sources taken from the host, mmdebstrap's command
line (apt cache hooks), the guest configuration written into the tree; bad input is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperdisco.errors import ImageError
from hyperdisco.images import debian_image
from hyperdisco.images.debian_image import (
    DebianImageSpec,
    _host_sources,
    build_debian_image,
    check_password,
    check_suite,
    configure_tree,
    mirror_lines,
    mmdebstrap_argv,
    parse_packages,
    parse_size,
    read_ssh_key,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake user@host"


@pytest.mark.parametrize("text, mib", [("4G", 4096), ("4g", 4096), ("4GiB", 4096), ("2048M", 2048),
                                       ("2048", 2048), ("1T", 1 << 20), ("1048576K", 1024)])
def test_sizes(text: str, mib: int) -> None:
    assert parse_size(text) == mib


@pytest.mark.parametrize("text", ["4X", "", "-1G", "512M", "2T", "1.5G", "9" * 30])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ImageError, match="--size"):
        parse_size(text)


def test_packages_suite_password() -> None:
    assert parse_packages(" vim, git ,python3=3.11.2-1+b1,libc6:amd64,") == [
        "vim", "git", "python3=3.11.2-1+b1", "libc6:amd64"]
    assert parse_packages(None) == []
    for bad in ("a;rm -rf /", "Vim", "-o", "a b"):
        with pytest.raises(ImageError, match="not a Debian package name"):
            parse_packages(bad)
    assert check_suite("bookworm") == "bookworm"
    for bad in ("../etc", "Bookworm", "a b", ""):
        with pytest.raises(ImageError, match="not a Debian suite"):
            check_suite(bad)
    assert check_password("s3cret pw") == "s3cret pw"
    for bad in ("", "a:b", "two\nlines"):
        with pytest.raises(ImageError, match="--password"):
            check_password(bad)


def test_ssh_key_files(tmp_path: Path) -> None:
    pub = tmp_path / "id.pub"
    pub.write_text(f"# comment\n{KEY}\n")
    assert read_ssh_key(str(pub)) == KEY
    private = tmp_path / "id"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxxx\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(ImageError, match="private key"):
        read_ssh_key(str(private))
    with pytest.raises(ImageError, match="No such file"):
        read_ssh_key(str(tmp_path / "none"))
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(ImageError, match="no SSH public key"):
        read_ssh_key(str(junk))


def test_mirrors_from_the_hosts_sources(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\n")
    (d / "other.list").write_text("deb [arch=amd64] http://example.org/apt stable main # third party\n")
    (d / "off.list.disabled").write_text("deb http://nowhere/ bookworm main\n")
    sources = _host_sources([tmp_path / "sources.list", d])
    assert mirror_lines("bookworm", sources) == [
        "deb http://deb.debian.org/debian bookworm main contrib",
        "deb http://deb.debian.org/debian bookworm-updates main contrib",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
    # another suite: the host's archives, the suite's name in place of the host's
    assert mirror_lines("trixie", sources) == [
        "deb http://deb.debian.org/debian trixie main contrib",
        "deb http://deb.debian.org/debian trixie-updates main contrib",
        "deb http://deb.debian.org/debian-security trixie-security main",
    ]
    with pytest.raises(ImageError, match="no apt sources"):
        mirror_lines("bookworm", [])


def test_mmdebstrap_command_line(tmp_path: Path) -> None:
    spec = DebianImageSpec(out=tmp_path / "d.img", packages=["vim", "linux-image-cloud-amd64"])
    argv = mmdebstrap_argv(spec, tmp_path / "tree", tmp_path / "cache", ["deb http://m bookworm main"])
    include = next(a for a in argv if a.startswith("--include="))
    packages = include.removeprefix("--include=").split(",")
    assert "linux-image-cloud-amd64" in packages and "systemd-sysv" in packages and "vim" in packages
    assert len(packages) == len(set(packages)) and "openssh-server" not in packages
    assert f"--setup-hook=sync-in {tmp_path / 'cache'} /var/cache/apt/archives" in argv
    assert f"--customize-hook=sync-out /var/cache/apt/archives {tmp_path / 'cache'}" in argv
    assert "--skip=download/empty" in argv
    assert argv[-3:] == ["bookworm", str(tmp_path / "tree"), "deb http://m bookworm main"]
    spec.ssh_key = KEY
    assert "openssh-server" in mmdebstrap_argv(spec, tmp_path, tmp_path, ["x"])[3]


def test_configure_tree(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "resolv.conf").write_text("nameserver 1.1.1.1\n")
    configure_tree(tree, DebianImageSpec(out=tmp_path / "x.img", ssh_key=KEY), "1234")
    assert (tree / "etc/fstab").read_text().splitlines()[-1] == "UUID=1234 / ext4 errors=remount-ro 0 1"
    getty = tree / "etc/systemd/system/getty.target.wants/serial-getty@hvc0.service"
    assert os.readlink(getty) == "/lib/systemd/system/serial-getty@.service"
    assert "Name=enX* eth*" in (tree / "etc/systemd/network/20-vif.network").read_text()
    assert (tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()
    assert os.readlink(tree / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    agent = (tree / "etc/systemd/system/qemu-guest-agent.service").read_text()
    assert "--method=isa-serial --path=/dev/hvc1" in agent and "BindsTo=dev-hvc1.device" in agent
    rule = (tree / "etc/udev/rules.d/60-hyperdisco-guest-agent.rules").read_text()
    assert 'KERNEL=="hvc1"' in rule and "qemu-guest-agent.service" in rule
    keys = tree / "root/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n"
    assert keys.stat().st_mode & 0o777 == 0o600 and (tree / "root/.ssh").stat().st_mode & 0o777 == 0o700


def test_needs_root_and_an_existing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageError, match="must run as root"):
        build_debian_image(DebianImageSpec(out=tmp_path / "d.img"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(debian_image, "_tool", lambda name, package: name)
    with pytest.raises(ImageError, match="does not exist"):
        build_debian_image(DebianImageSpec(out=tmp_path / "no" / "d.img"))


@pytest.mark.parametrize("args, needle", [
    (["--size", "3Q"], "--size"),
    (["--suite", "../x"], "--suite"),
    (["--packages", "a;b"], "--packages"),
    (["--password", "a:b"], "--password"),
    (["--ssh-key", "/nonexistent/key.pub"], "--ssh-key"),
])
def test_cli_bad_arguments_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    argv = [sys.executable, "-m", "hyperdisco", "images", "debian", str(tmp_path / "d.img"), *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyperdisco: ") and needle in lines[0], p.stderr
    assert not (tmp_path / "d.img").exists()
