"""The domain process's jail, entered by a forked process that then tries what an escaped guest would."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperdisco.vmm.jail import DENIED_SYSCALLS, Jail, filter_program, jail_root

ROOT = os.geteuid() == 0


def attempt(fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as e:
        return f"refused:{e.errno}"
    except Exception as e:  # reported, so the test shows what happened
        return f"error:{type(e).__name__}"
    return "allowed"


def in_jail(tmp_path: Path, probes: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Fork, enter the jail as domain 7 in the child, run each probe, report back through a pipe."""
    root = jail_root(str(tmp_path)) if ROOT else None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            jail = Jail(7, root)
            jail.enter()
            out = {"report": jail.report(), "uid": str(os.getuid())}
            t = threading.Thread(target=lambda: out.__setitem__("thread", "ran"))
            t.start()
            t.join()
            out.update({name: attempt(fn) for name, fn in probes.items()})
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, str] = json.loads(data)
    return result


def test_seccomp_program_shape() -> None:
    prog = filter_program()
    assert len(prog) % 8 == 0
    ins = [struct.unpack("<HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert len(ins) < 4096  # BPF_MAXINSNS
    for i, (code, jt, jf, _k) in enumerate(ins):  # every jump lands inside the program
        if code & 0x07 == 0x05:
            assert i + 1 + max(jt, jf) < len(ins)
    assert DENIED_SYSCALLS["ptrace"] == 101 and DENIED_SYSCALLS["process_vm_readv"] == 310


def test_an_escaped_domain_process_reaches_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "other-domain.img"
    secret.write_bytes(b"other domain's disk")
    memfd = os.memfd_create("other-domain-ram")  # another domain's RAM: not handed to this one
    control = tmp_path / "control.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(control))
    srv.listen()
    libc = ctypes.CDLL(None, use_errno=True)

    def ptrace_parent() -> None:
        if libc.ptrace(16, os.getppid(), 0, 0) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), "ptrace")

    def unshare_mount_ns() -> None:
        if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
            raise OSError(ctypes.get_errno(), "unshare")

    def connect_control() -> None:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(control))

    def open_other_ram() -> None:
        os.open(f"/proc/{os.getppid()}/fd/{memfd}", os.O_RDWR)

    probes: dict[str, Callable[[], object]] = {
        "shadow": lambda: open("/etc/shadow", "rb"),
        "other_disk": lambda: open(secret, "rb"),
        "other_ram": open_other_ram,
        "control_socket": connect_control,
        "ptrace": ptrace_parent,
        "fork": os.fork,
        "exec": lambda: os.execv("/bin/sh", ["sh", "-c", "true"]),
        "inet_socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        "mount_ns": unshare_mount_ns,
    }
    try:
        out = in_jail(tmp_path, probes)
    finally:
        srv.close()
        os.close(memfd)
    assert out["thread"] == "ran"  # threads (vCPU workers, I/O) still start
    for name in probes:
        assert out[name].startswith("refused"), (name, out)
    assert "seccomp" in out["report"] and "no_new_privs" in out["report"]
    if ROOT:
        assert out["uid"] == str(Jail(7, None).uid)
        assert "chroot" in out["report"]
    else:
        pytest.skip("not root: chroot and the domain's own uid are not applied")


def test_core_dir_knob_leaves_a_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HYPERDISCO_JAIL_CORE_DIR (debugging an engine crash): dumpable, core size unlimited, working in
    that directory; seccomp and the uid still apply."""
    cores = tmp_path / "cores"
    cores.mkdir()
    cores.chmod(0o1777)
    monkeypatch.setenv("HYPERDISCO_JAIL_CORE_DIR", str(cores))
    libc = ctypes.CDLL(None, use_errno=True)

    probes: dict[str, Callable[[], object]] = {
        "dumpable": lambda: None if libc.prctl(3, 0, 0, 0, 0) == 1 else os.abort(),  # PR_GET_DUMPABLE
        "core_limit": lambda: None if resource.getrlimit(resource.RLIMIT_CORE)[0] != 0 else os.abort(),
        "cwd": lambda: None if os.getcwd() == str(cores) else os.abort(),
        "fork": os.fork,
    }
    out = in_jail(tmp_path, probes)
    assert out["dumpable"] == out["core_limit"] == out["cwd"] == "allowed", out
    assert out["fork"].startswith("refused")
    assert "seccomp" in out["report"] and "HYPERDISCO_JAIL_CORE_DIR" in out["report"]
    if ROOT:
        assert out["uid"] == str(Jail(7, None).uid)
