"""``hyperdisco images debian OUT.img``: a bootable Debian root filesystem image, built with mmdebstrap.

The image holds systemd, Debian's cloud kernel and its initramfs (initramfs-tools, built inside the
image), a console login on hvc0 (serial-getty@hvc0), the vifs (enX0...) configured by DHCP with
systemd-networkd (and systemd-resolved for DNS), the root password and/or SSH key given, and an fstab
mounting the root by the filesystem's UUID. There is no grub.cfg: ``bootloader = "pygrub"`` boots the newest
``/boot/vmlinuz-*`` with its ``initrd.img-*`` and ``root=UUID=... ro`` (images/pygrub.py), so a kernel
upgraded inside the guest is the one booted next time.

How: mmdebstrap (its default mode as root) bootstraps the suite from the host's apt sources (the
host's entries for that suite, or those of the host's own suite with the name changed) into a directory
next to the output, hyperdisco writes the configuration files into the tree, and ``mkfs.ext4 -d`` turns
it into the image (written under a temporary name, then renamed). Downloaded packages are kept in
``cache_dir()/debian-apt/SUITE`` and handed to the next build (mmdebstrap's sync-in/sync-out hooks), so a
second build downloads nothing that has not changed. Building needs root (the tree's files must be owned
by root and mkfs.ext4 -d copies ownership as it finds it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hyperdisco.errors import ImageError
from hyperdisco.images.cache import cache_dir

Progress = Callable[[str], None]

DEFAULT_SUITE = "bookworm"
DEFAULT_SIZE_MIB = 4096
MIN_SIZE_MIB = 1024
MAX_SIZE_MIB = 1 << 20
BASE_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "systemd-sysv", "systemd-resolved", "udev",
                 "dbus", "iproute2", "ca-certificates", "qemu-guest-agent")
SSH_PACKAGES = ("openssh-server",)
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
BUILD_TIMEOUT = 3600

_SUITE_RE = re.compile(r"[a-z][a-z0-9.-]{0,39}")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,99}(:[a-z0-9]+)?(=[A-Za-z0-9.+~:-]+)?")
_SIZE_RE = re.compile(r"([0-9]{1,9})([KMGT]?)(i?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}  # a bare number: MiB
_SSH_KEY_RE = re.compile(r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( .*)?")

# The guest agent (docs/guest-agent.md). Debian's qemu-guest-agent.service has no [Install]: its udev
# rule starts it when a virtio-serial port named org.qemu.guest_agent.0 appears, and the unit BindsTo
# that port's device. Under hyperdisco the agent's channel is the first xl.cfg channel, /dev/hvc1 (Linux's
# hvc_xen, device/console/1). A unit in /etc replaces the package's (dependencies cannot be reset by a
# drop-in) and a udev rule starts it when hvc1 appears, with the port's usual name as a symlink; qemu-ga's
# isa-serial method puts the tty in raw mode (virtio-serial would leave the line discipline echoing).
AGENT_UNIT = """\
# hyperdisco images debian: qemu-ga on the Xen channel /dev/hvc1 (channel = [ 'name=org.qemu.guest_agent.0' ])
[Unit]
Description=QEMU Guest Agent (hyperdisco channel hvc1)
BindsTo=dev-hvc1.device
After=dev-hvc1.device
IgnoreOnIsolate=True

[Service]
UMask=0077
ExecStart=/usr/sbin/qemu-ga --method=isa-serial --path=/dev/hvc1
Restart=always
RestartSec=1
"""
AGENT_UDEV_RULE = """\
# hyperdisco images debian: the first Xen channel (hvc1) is the guest agent's
SUBSYSTEM=="tty", KERNEL=="hvc1", TAG+="systemd", SYMLINK+="virtio-ports/org.qemu.guest_agent.0", \
ENV{SYSTEMD_WANTS}+="qemu-guest-agent.service"
"""

NETWORK_FILE = """\
# hyperdisco images debian: the vifs by DHCP (systemd names them enX0, enX1...: Xen's predictable names,
# systemd.net-naming-scheme(7); eth0 without them)
[Match]
Name=enX* eth*

[Network]
DHCP=yes
"""


@dataclass
class DebianImageSpec:
    out: Path
    suite: str = DEFAULT_SUITE
    size_mib: int = DEFAULT_SIZE_MIB
    packages: list[str] = field(default_factory=list)
    ssh_key: str | None = None  # the public key's line
    password: str | None = None
    hostname: str = "debian"


def parse_size(text: str) -> int:
    """An image size (4G, 4096M, 4GiB, or a bare number of MiB) in MiB, checked against the bounds."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ImageError(f"hyperdisco: --size {text[:40]!r}: expected e.g. 4G or 2048M")
    size = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()] >> 20
    if not MIN_SIZE_MIB <= size <= MAX_SIZE_MIB:
        raise ImageError(f"hyperdisco: --size {text[:40]!r}: must be between {MIN_SIZE_MIB} MiB and "
                         f"{MAX_SIZE_MIB >> 20} TiB")
    return size


def parse_packages(text: str | None) -> list[str]:
    """``a,b,c`` (blanks allowed around the commas) as Debian package names."""
    if not text:
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    for name in names:
        if not _PACKAGE_RE.fullmatch(name):
            raise ImageError(f"hyperdisco: --packages: {name[:60]!r} is not a Debian package name")
    return names


def check_suite(suite: str) -> str:
    if not _SUITE_RE.fullmatch(suite):
        raise ImageError(f"hyperdisco: --suite {suite[:40]!r} is not a Debian suite name (e.g. bookworm)")
    return suite


def read_ssh_key(path: str) -> str:
    """The first public key line of ``path`` (an authorized_keys or .pub file)."""
    try:
        text = Path(path).read_text(errors="replace")[:65536]
    except OSError as exc:
        raise ImageError(f"hyperdisco: --ssh-key {path}: {exc.strerror or exc}") from None
    for line in text.splitlines():
        line = line.strip()
        if _SSH_KEY_RE.fullmatch(line):
            return line
    if "PRIVATE KEY" in text:
        raise ImageError(f"hyperdisco: --ssh-key {path}: is a private key; give the public one (.pub)")
    raise ImageError(f"hyperdisco: --ssh-key {path}: no SSH public key in it")


def check_password(password: str) -> str:
    if not password or any(c in password for c in "\n\r:\0"):
        raise ImageError("hyperdisco: --password must be non-empty, on one line, without ':'")
    return password


# ---------------------------------------------------------------------------------------------------------
# apt sources


@dataclass(frozen=True)
class _Source:
    uri: str
    suite: str
    components: tuple[str, ...]


def _host_sources(paths: Sequence[Path] = APT_SOURCES) -> list[_Source]:
    """The host's binary (``deb``) apt sources, one-line and deb822 files alike."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".list", ".sources"))
        elif p.is_file():
            files.append(p)
    out: list[_Source] = []
    for f in files:
        try:
            text = f.read_text(errors="replace")[:1 << 20]
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        out.append(_Source(uri, suite, tuple(fields.get("components", "main").split())))
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    out.append(_Source(words[1], words[2], tuple(words[3:]) or ("main",)))
    return out


def mirror_lines(suite: str, sources: Sequence[_Source]) -> list[str]:
    """mmdebstrap's MIRROR arguments (``deb URI SUITE COMPONENTS`` lines) for ``suite`` from the host's
    sources: its entries for the suite (and SUITE-updates, SUITE-security), else those of the host's own
    suite with the suite's name put in its place."""
    def family(name: str) -> str:
        return re.split(r"[-/]", name, maxsplit=1)[0]

    chosen = [s for s in sources if family(s.suite) == suite]
    if not chosen:
        host = next((family(s.suite) for s in sources if s.uri.startswith(("http", "file", "ftp"))), None)
        chosen = [_Source(s.uri, suite + s.suite[len(host):], s.components)
                  for s in sources if host is not None and family(s.suite) == host]
    if not chosen:
        raise ImageError("hyperdisco: images debian: the host has no apt sources to build from "
                         "(/etc/apt/sources.list, /etc/apt/sources.list.d)")
    lines: list[str] = []
    for s in chosen:
        line = f"deb {s.uri} {s.suite} {' '.join(s.components)}"
        if line not in lines:
            lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------------------
# building


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise ImageError(f"hyperdisco: {name} not found: install it with 'apt-get install {package}'")
    return found


def mmdebstrap_argv(spec: DebianImageSpec, tree: Path, cache: Path, mirrors: Sequence[str]) -> list[str]:
    packages = [*BASE_PACKAGES, *(SSH_PACKAGES if spec.ssh_key else ()), *spec.packages]
    return [
        "mmdebstrap", "--mode=root", "--format=directory",
        f"--include={','.join(dict.fromkeys(packages))}",
        # apt's downloads live on in the cache: handed in before, taken out after, emptied in the image
        "--skip=download/empty",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
        f"--setup-hook=sync-in {cache} /var/cache/apt/archives",
        f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
        "--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb",
        spec.suite, str(tree), *mirrors,
    ]


def configure_tree(tree: Path, spec: DebianImageSpec, fs_uuid: str) -> None:
    """The files that make the bootstrapped tree a guest: fstab, hostname, console login on hvc0,
    networkd on the vifs, resolved, qemu-guest-agent on hvc1, the SSH key. (The password is set with
    chpasswd in the tree.)"""
    etc = tree / "etc"
    (etc / "fstab").write_text(f"# hyperdisco images debian\nUUID={fs_uuid} / ext4 errors=remount-ro 0 1\n")
    (etc / "hostname").write_text(spec.hostname + "\n")
    hosts = etc / "hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.hostname}\n::1\tlocalhost ip6-localhost "
                     "ip6-loopback\n")
    system = etc / "systemd" / "system"
    _enable(system / "getty.target.wants", "serial-getty@hvc0.service",
            "/lib/systemd/system/serial-getty@.service")
    network = etc / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "20-vif.network").write_text(NETWORK_FILE)
    _enable(system / "multi-user.target.wants", "systemd-networkd.service",
            "/lib/systemd/system/systemd-networkd.service")
    _enable(system / "sockets.target.wants", "systemd-networkd.socket",
            "/lib/systemd/system/systemd-networkd.socket")
    _enable(system / "multi-user.target.wants", "systemd-resolved.service",
            "/lib/systemd/system/systemd-resolved.service")
    (system / "qemu-guest-agent.service").write_text(AGENT_UNIT)
    rules = etc / "udev" / "rules.d"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "60-hyperdisco-guest-agent.rules").write_text(AGENT_UDEV_RULE)
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    os.symlink("../run/systemd/resolve/stub-resolv.conf", resolv)
    if spec.ssh_key:
        ssh = tree / "root" / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = ssh / "authorized_keys"
        keys.write_text(spec.ssh_key + "\n")
        os.chmod(keys, 0o600)


def _enable(wants: Path, name: str, unit: str) -> None:
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / name
    if not link.is_symlink():
        os.symlink(unit, link)


def _stream(argv: list[str], say: Progress, what: str, input_text: str | None = None) -> None:
    """Run a build step, its output lines shown as progress; on failure ImageError with its last line."""
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                errors="replace")
    except FileNotFoundError:
        raise ImageError(f"hyperdisco: {argv[0]} not found") from None
    assert proc.stdout is not None
    if input_text is not None and proc.stdin is not None:
        proc.stdin.write(input_text)
        proc.stdin.close()
    last = ""
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            last = line
            say(f"{what}: {line}")
    if proc.wait(BUILD_TIMEOUT) != 0:
        raise ImageError(f"hyperdisco: {what} failed (exit {proc.returncode}): {last[:200]}")


def build_debian_image(spec: DebianImageSpec, progress: Progress | None = None) -> Path:
    """Build the image at ``spec.out`` (replaced atomically); return its path."""
    say: Progress = progress or (lambda _m: None)
    if os.geteuid() != 0:
        raise ImageError("hyperdisco: images debian must run as root (mmdebstrap's root mode; the image's "
                         "files are owned by root)")
    mmdebstrap = _tool("mmdebstrap", "mmdebstrap")
    mkfs = _tool("mkfs.ext4", "e2fsprogs")
    out = spec.out
    out_dir = out.parent if str(out.parent) else Path(".")
    if not out_dir.is_dir():
        raise ImageError(f"hyperdisco: {out}: directory {out_dir} does not exist")
    mirrors = mirror_lines(spec.suite, _host_sources())
    cache = cache_dir() / "debian-apt" / spec.suite
    cache.mkdir(parents=True, exist_ok=True)
    fs_uuid = str(uuid.uuid4())
    tmp_img = out_dir / f".{out.name}.tmp{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.tree", dir=out_dir) as work:
            tree = Path(work) / "root"
            say(f"mmdebstrap {spec.suite} from {', '.join(m.split()[1] for m in mirrors[:1])} "
                f"(apt cache {cache})")
            argv = mmdebstrap_argv(spec, tree, cache, mirrors)
            _stream([mmdebstrap, *argv[1:]], say, "mmdebstrap")
            if not any((tree / "boot").glob("vmlinuz-*")) or not any((tree / "boot").glob("initrd.img-*")):
                raise ImageError("hyperdisco: images debian: the kernel or its initramfs is missing from "
                                 "/boot")
            say("configuring: fstab, hvc0 login, networkd on eth0" + (", ssh key" if spec.ssh_key else ""))
            configure_tree(tree, spec, fs_uuid)
            if spec.password is not None:
                _stream(["chroot", str(tree), "chpasswd"], say, "chpasswd", f"root:{spec.password}\n")
            say(f"mkfs.ext4 ({spec.size_mib} MiB)")
            with open(tmp_img, "wb") as f:
                f.truncate(spec.size_mib << 20)
            _stream([mkfs, "-q", "-F", "-L", "debian-root", "-U", fs_uuid, "-d", str(tree), str(tmp_img)],
                    say, "mkfs.ext4")
        os.replace(tmp_img, out)
    except OSError as exc:
        raise ImageError(f"hyperdisco: {out}: cannot build the image ({exc.strerror or exc})") from None
    finally:
        if tmp_img.exists():
            tmp_img.unlink()
    return out
