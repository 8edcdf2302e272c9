"""`hyperdisco` command line: verbs named like xl's, plus `run` (one-shot) and `images`."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time

from ..errors import HyperdiscoError


def _progress(msg: str) -> None:
    sys.stderr.write(f"hyperdisco: {msg}\n")
    sys.stderr.flush()


def cmd_run(args: argparse.Namespace) -> int:
    from ..toolstack.build import domain_config
    from ..toolstack.oneshot import DETACHED_STATUS, run_domain

    t0 = time.monotonic()
    config = domain_config("guest", args.kernel, args.initrd, args.cmdline, args.memory, args.vcpus,
                           progress=_progress)
    if args.disks:
        from pathlib import Path

        from ..toolstack.xlcfg import parse_disk

        config.disks = [parse_disk(spec, "--disk", Path.cwd()) for spec in args.disks]
        if len({d.vdev for d in config.disks}) < len(config.disks):
            raise HyperdiscoError("hyperdisco: --disk: two disks with the same vdev")
    vifs = []
    if args.net is not None or args.hostfwd:
        from ..toolstack.xlcfg import vif_from_params

        params = {"bridge": args.net or "user", "uplink": "passt"}
        if args.hostfwd:
            params["hostfwd"] = ";".join(args.hostfwd)
        vifs.append(vif_from_params(params, "--net").net_config())
    report = run_domain(config, args.engine, exec_command=args.exec_, timeout=args.timeout, t_start=t0,
                        verbose=args.verbose, vifs=vifs)
    if args.exec_ is not None:
        sys.stdout.buffer.write(report.output)
        sys.stdout.flush()
    elif sys.stdout.isatty():
        sys.stdout.write("\r\n")  # the guest's console may have left the cursor mid-line (a prompt)
        sys.stdout.flush()
    if report.outcome == "crash":
        _progress(f"guest crashed{': ' + report.detail if report.detail else ''}")
    elif report.outcome == "timeout":
        _progress(f"guest timed out ({report.detail})")
    elif report.exit_status == DETACHED_STATUS:
        _progress(f"guest destroyed ({report.detail})")
    elif args.exec_ is None:
        _progress(f"guest {report.outcome}")
    if args.stats:
        _print_stats(report.timings, report.traps)
    return report.exit_status


def _print_stats(timings: dict[str, float], traps: dict[str, int]) -> None:
    out = sys.stderr
    out.write("-- timings --\n")
    for key, label in (("first_output_s", "first guest output"), ("user_space_s", "user space"),
                       ("total_s", "total wall")):
        if key in timings:
            out.write(f"  {label:<20} {timings[key]:8.3f} s\n")
    out.write("-- traps --\n")
    for name in sorted(traps):
        if traps[name]:
            out.write(f"  {name:<32} {traps[name]:>10}\n")


def cmd_images_fetch(args: argparse.Namespace) -> int:
    from ..images import ensure_default_images

    images = ensure_default_images(_progress, force=args.force)
    print(f"kernel  {images.kernel}")
    print(f"initrd  {images.initrd}")
    print(f"release {images.kernel_release}")
    return 0


def _cpu_list(text: str) -> list[int]:
    """"0", "0,2", "0-3": distinct CPU numbers this process may use."""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            lo, _sep, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if last - first > 1024:
                raise ValueError(part)
            cpus.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a CPU list like 0 or 0-1") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or len(cpus) > 1024 or len(set(cpus)) != len(cpus) or not set(cpus) <= allowed:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: CPUs must be distinct and among "
                                         f"{','.join(map(str, sorted(allowed)))}")
    return cpus


def cmd_daemon(args: argparse.Namespace) -> int:
    from ..toolstack.daemon import Daemon

    Daemon(args.socket, args.engine, verbose=args.verbose, share_pages=args.share_pages,
           overcommit=args.overcommit, xenstored_socket=args.xenstored_socket,
           group=args.group, sched=args.sched, sched_cpus=args.sched_cpus).serve_forever(
               args.migrate_listen, args.migrate_key)
    return 0


def cmd_images_rootfs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..images.rootfs import build_rootfs

    out = build_rootfs(Path(args.out), args.size, progress=_progress)
    print(out)
    return 0


def cmd_images_debian(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..images.debian_image import (
        DebianImageSpec,
        build_debian_image,
        check_password,
        check_suite,
        parse_packages,
        parse_size,
        read_ssh_key,
    )

    spec = DebianImageSpec(out=Path(args.out), suite=check_suite(args.suite), size_mib=parse_size(args.size),
                           packages=parse_packages(args.packages),
                           ssh_key=read_ssh_key(args.ssh_key) if args.ssh_key else None,
                           password=check_password(args.password) if args.password is not None else None)
    print(build_debian_image(spec, progress=_progress))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyperdisco", description="A hypervisor in Python (Xen PVH guests)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    r = sub.add_parser("run", help="boot one guest and attach its console (or run a command in it)")
    r.add_argument("--kernel", help="kernel: ELF vmlinux with the PVH note, or a bzImage")
    r.add_argument("--initrd", help="initramfs (cpio, optionally compressed)")
    r.add_argument("--cmdline", help="kernel command line")
    r.add_argument("--memory", type=int, default=256, metavar="MiB", help="guest memory (default 256)")
    r.add_argument("--vcpus", type=int, default=1, metavar="N", help="virtual CPUs (default 1)")
    r.add_argument("--disk", dest="disks", action="append", default=[], metavar="DISKSPEC",
                   help="a disk, xl syntax (e.g. 'format=raw, vdev=xvda, access=rw, target=root.img'); "
                        "repeatable")
    r.add_argument("--net", nargs="?", const="user", default=None, metavar="NETWORK",
                   help="an Ethernet interface on NETWORK (default 'user') with user-mode networking to "
                        "the host and beyond (passt); the guest configures it by DHCP")
    r.add_argument("--hostfwd", action="append", default=[], metavar="tcp:HOSTPORT:GUESTPORT",
                   help="forward the host's HOSTPORT to the guest's GUESTPORT (tcp or udp; "
                        "implies --net; repeatable)")
    r.add_argument("--exec", dest="exec_", metavar="CMD", help="run CMD in the guest shell, then power off")
    r.add_argument("--stats", action="store_true", help="print timings and trap counts at the end")
    r.add_argument("--engine", default="tcg", help="CPU engine (default tcg)")
    r.add_argument("--timeout", type=float, default=None, help="destroy the guest after this many seconds")
    r.add_argument("-v", "--verbose", action="store_true", help="print the hypervisor's log")
    r.set_defaults(fn=cmd_run)
    d = sub.add_parser("daemon", help="run the hypervisor: host domains, serve the control socket")
    d.add_argument("--socket", help="control socket path (default $HYPERDISCO_SOCKET or "
                                    "/run/hyperdisco/control.sock)")
    d.add_argument("--group", metavar="NAME",
                   help="make the control and xenstored sockets 0660 and this group's: its members may "
                        "use every verb (default: 0600, the daemon user's only)")
    d.add_argument("--xenstored-socket", metavar="PATH",
                   help="serve xenstored's wire protocol here for xenstore-utils and other libxenstore "
                        "clients (default $XENSTORED_PATH or /run/xenstored/socket; 'none': do not)")
    d.add_argument("--engine", default="tcg")
    d.add_argument("--sched", choices=("bvt", "host"), default="bvt",
                   help="who shares the CPUs between domains: domain 0's Borrowed Virtual Time arbiter "
                        "(default; sched-bvt) or the host kernel")
    d.add_argument("--migrate-listen", metavar="[HOST:]PORT", default=None,
                   help="receive live migrations over TCP (migrate_receive only; default host 127.0.0.1)")
    d.add_argument("--migrate-key", metavar="FILE", default=None,
                   help="a secret (mode 0600, 16+ bytes) shared with the daemons this one migrates to or "
                        "from over TCP; --migrate-listen needs it")
    d.add_argument("--sched-cpus", type=_cpu_list, default=None, metavar="LIST",
                   help="the host CPUs the arbiter hands out, e.g. 0 or 0-1 (vCPU threads are pinned to "
                        "them; default: as many as there are, unpinned)")
    d.add_argument("--overcommit", type=float, default=None, metavar="R",
                   help="admit domains up to R x host memory (default $HYPERDISCO_OVERCOMMIT or 1.0)")
    d.add_argument("-v", "--verbose", action="store_true", help="print the log (dmesg) to stdout too")
    d.add_argument("--share-pages", action="store_true",
                   help="merge identical guest pages across domains (starts the host's KSM scanner; root)")
    d.set_defaults(fn=cmd_daemon)
    from .xl import add_verbs

    add_verbs(sub)
    im = sub.add_parser("images", help="the default guest images")
    imsub = im.add_subparsers(dest="images_verb", required=True, metavar="ACTION")
    f = imsub.add_parser("fetch", help="fetch and build the default kernel and initramfs")
    f.add_argument("--force", action="store_true", help="fetch and rebuild even if cached")
    f.set_defaults(fn=cmd_images_fetch)
    rf = imsub.add_parser("rootfs", help="build an ext4 root filesystem image from busybox (boot it with "
                                         "root=/dev/xvda)")
    rf.add_argument("out", metavar="OUT.img")
    rf.add_argument("--size", type=int, default=64, metavar="MiB", help="image size (default 64)")
    rf.set_defaults(fn=cmd_images_rootfs)
    db = imsub.add_parser("debian", help="build a bootable Debian image with mmdebstrap (systemd, the cloud "
                                         "kernel inside it: boot it with bootloader = \"pygrub\"; root)")
    db.add_argument("out", metavar="OUT.img")
    db.add_argument("--suite", default="bookworm", help="Debian suite (default bookworm)")
    db.add_argument("--size", default="4G", help="image size, e.g. 4G or 2048M (default 4G)")
    db.add_argument("--packages", metavar="A,B", help="more packages to install, comma-separated")
    db.add_argument("--ssh-key", metavar="FILE", help="an SSH public key for root (installs openssh-server)")
    db.add_argument("--password", metavar="PW", help="root's password (none by default: no password login)")
    db.set_defaults(fn=cmd_images_debian)
    return p


SIGPIPE_STATUS = 128 + 13  # what the shell reports for a command killed by SIGPIPE (`... | head`)


def _stdout_gone() -> bool:
    """stdout's reader went away (a pipe into `head` that has exited): poll reports POLLERR on the
    write end of a pipe without readers. Python ignores SIGPIPE, so the write raised BrokenPipeError;
    the same error from the control socket (the daemon went away) is not this."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still buffered does
    not raise again ("Exception ignored ... BrokenPipeError") at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    import faulthandler

    faulthandler.enable()  # a crash in native code (the CPU engine) still says where each thread was
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: where every thread of a live process is, on stderr
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    args = build_parser().parse_args(argv)
    try:
        status = int(args.fn(args))
        sys.stdout.flush()  # here, where a reader that went away is caught below, not at exit
        return status
    except ConnectionError as exc:  # BrokenPipeError, ConnectionResetError
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            _quiet_stdout()
            return SIGPIPE_STATUS
        sys.stderr.write("hyperdisco: the daemon closed the connection\n")  # the control socket's
        return 1
    except HyperdiscoError as exc:
        msg = str(exc)
        sys.stderr.write((msg if msg.startswith("hyperdisco:") else f"hyperdisco: {msg}") + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("hyperdisco: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
