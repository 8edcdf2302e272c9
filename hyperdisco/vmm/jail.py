"""The jail a domain process enters once its domain is built and before any guest instruction runs.

What a compromised domain process (a guest that escaped the emulator, say) is left with:

- **No filesystem.** As root it is chrooted into an empty, root-owned, read-only directory, so `open` of
  any path fails (no /etc, no /proc, no control socket, no other domain's files); what it may touch came
  to it as descriptors: its own guest RAM, the special pages it shares with domain 0, its disk images
  (each already opened and checked by domain 0), the shared kernel image (read-only), its channel.
- **No identity.** It drops to an unprivileged uid/gid of its own (`HYPERDISCO_JAIL_UID_BASE` + domid,
  no supplementary groups), so it cannot signal or ptrace another domain's process, and it is not
  dumpable (no core files, no ptrace attach even by the same uid).
- **No new privileges, few system calls.** `PR_SET_NO_NEW_PRIVS`, then a seccomp filter applied to all
  its threads (SECCOMP_FILTER_FLAG_TSYNC) that refuses with EPERM the calls a VMM never needs: ptrace and
  process_vm_*, exec, fork, new sockets and connect/bind/listen, mount and namespace calls, module,
  kexec, bpf, perf, keyring, io_uring and userfaultfd calls, device nodes, clock setting, port I/O; and
  any non-x86-64 system call ABI (x32, int 0x80).
- **Bounded resources.** rlimits on descriptors, processes/threads and core size; and where the host
  offers a writable memory cgroup, its own cgroup capped at its RAM plus the engine's overhead (done by
  domain 0 before the process starts).

For debugging an engine crash, `HYPERDISCO_JAIL_CORE_DIR=DIR` in domain 0's environment (of the daemon or of
`run`) leaves a domain process dumpable with an unlimited core size and working in DIR instead of the
empty chroot, so a crash leaves DIR/core (kernel.core_pattern `core`) for gdb; DIR must be writable by
the jail's uid (mode 1777). Everything else (uid, seccomp, rlimits) applies; `report()` says so.

Without root (a developer's run as a normal user) the filesystem and identity steps are skipped and
`Jail.report()` says so; the seccomp filter and rlimits still apply.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct
from dataclasses import dataclass, field

UID_BASE = int(os.environ.get("HYPERDISCO_JAIL_UID_BASE", "1900000"))
CORE_DIR_ENV = "HYPERDISCO_JAIL_CORE_DIR"  # debugging only: see the module docstring

# <linux/prctl.h>
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
# <linux/seccomp.h>
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
AUDIT_ARCH_X86_64 = 0xC000003E  # <linux/audit.h>: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
X32_SYSCALL_BIT = 0x40000000
NR_SECCOMP = 317
# <linux/filter.h> classic BPF opcodes
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
BPF_JSET_K = 0x45
NR_CLONE = 56
NR_CLONE3 = 435
CLONE_THREAD = 0x00010000  # <linux/sched.h>

# System calls refused inside the jail: x86-64 numbers from arch/x86/entry/syscalls/syscall_64.tbl.
DENIED_SYSCALLS: dict[str, int] = {
    "socket": 41, "connect": 42, "bind": 49, "listen": 50, "socketpair": 53,
    "fork": 57, "vfork": 58, "execve": 59, "ptrace": 101, "mknod": 133, "uselib": 134,
    "personality": 135, "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163,
    "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "clock_settime": 227, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "mknodat": 259, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "execveat": 322,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_getfd": 438,
}

RLIMITS = {
    resource.RLIMIT_NOFILE: 512,  # channel, memfds, disk images and their backing files, engine
    resource.RLIMIT_NPROC: 256,  # threads: vCPU workers, device threads, I/O threads (per jail uid)
    resource.RLIMIT_CORE: 0,
}

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(Exception):
    pass


@dataclass
class Jail:
    """Where and as whom a domain process is confined; `enter` applies it to the calling process."""

    domid: int
    root: str | None  # an empty directory to chroot into (None: no chroot)
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def uid(self) -> int:
        return UID_BASE + self.domid

    def enter(self) -> None:
        privileged = os.geteuid() == 0
        core_dir = os.environ.get(CORE_DIR_ENV) or None
        for res, limit in RLIMITS.items():
            soft, hard = resource.getrlimit(res)
            if res == resource.RLIMIT_CORE and core_dir:
                resource.setrlimit(res, (hard, hard))
                continue
            new = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
            resource.setrlimit(res, (new, new))
        self.applied.append("rlimits")
        if core_dir:
            os.chdir(core_dir)
            self.skipped.append(f"chroot and no core dumps (debugging: {CORE_DIR_ENV}={core_dir})")
        elif privileged and self.root is not None:
            os.chroot(self.root)
            os.chdir("/")
            self.applied.append("chroot")
        else:
            os.chdir("/")
            self.skipped.append("chroot (not root)" if not privileged else "chroot (no jail directory)")
        if privileged:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
            self.applied.append(f"uid {self.uid}")
        else:
            self.skipped.append("own uid (not root)")
        _prctl(PR_SET_DUMPABLE, 1 if core_dir else 0)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        self.applied.append("no_new_privs")
        install_seccomp_filter()
        self.applied.append("seccomp")

    def report(self) -> str:
        text = "jail: " + ", ".join(self.applied)
        return text + (f" (skipped: {', '.join(self.skipped)})" if self.skipped else "")


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise JailError(f"prctl({option}) failed: {os.strerror(err)}")


def filter_program(denied: dict[str, int] | None = None) -> bytes:
    """The classic-BPF seccomp program: kill a foreign ABI, refuse the denied calls with EPERM, allow
    clone only for threads (CLONE_THREAD; clone3 answers ENOSYS so glibc falls back to clone, whose flags
    a filter can see), allow the rest. Each instruction is struct sock_filter {u16 code; u8 jt; u8 jf;
    u32 k}; jumps are relative, so the program is assembled from the end."""
    nrs = sorted(set((denied or DENIED_SYSCALLS).values()))
    eperm = SECCOMP_RET_ERRNO | errno.EPERM
    head = [
        (BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    # the tail: [ALLOW, EPERM]; every check below jumps forward to one of them
    checks: list[tuple[int, int, int, int]] = []
    checks.append((BPF_JGE_K, 0, 0, X32_SYSCALL_BIT))  # -> EPERM
    checks.append((BPF_JEQ_K, 0, 0, NR_CLONE3))  # -> ENOSYS (patched below)
    checks.append((BPF_JEQ_K, 0, 0, NR_CLONE))  # -> the flags test
    checks.extend((BPF_JEQ_K, 0, 0, nr) for nr in nrs)  # -> EPERM
    body: list[tuple[int, int, int, int]] = []
    n = len(checks)
    # layout after the checks: [ALLOW][EPERM][ENOSYS][LD args0][JSET thread][EPERM2][ALLOW2]
    for i, (code, _jt, _jf, k) in enumerate(checks):
        to_allow = n - i - 1
        if k == NR_CLONE3:
            body.append((code, to_allow + 2, 0, k))
        elif k == NR_CLONE:
            body.append((code, to_allow + 3, 0, k))
        else:
            body.append((code, to_allow + 1, 0, k))
    tail = [
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET_K, 0, 0, eperm),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        (BPF_LD_W_ABS, 0, 0, 16),  # seccomp_data.args[0], low 32 bits: clone's flags
        (BPF_JSET_K, 1, 0, CLONE_THREAD),
        (BPF_RET_K, 0, 0, eperm),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(struct.pack("<HBBI", *i) for i in head + body + tail)


def install_seccomp_filter(denied: dict[str, int] | None = None) -> None:
    """Install the filter on every thread of this process (needs no_new_privs or CAP_SYS_ADMIN)."""
    prog = filter_program(denied)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("<HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))  # struct sock_fprog
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    _libc.syscall.restype = ctypes.c_long
    res = _libc.syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                        ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), fbuf)
    if res != 0:
        err = ctypes.get_errno()
        raise JailError(f"seccomp filter not installed: {os.strerror(err) if err else f'thread {res}'}")


def jail_root(run_dir: str) -> str | None:
    """An empty directory, owned by root and read-only to everyone, to chroot domain processes into."""
    if os.geteuid() != 0:
        return None
    path = os.path.join(run_dir, "jail")
    os.makedirs(path, mode=0o555, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != 0 or os.listdir(path):
        raise JailError(f"{path} must be an empty directory owned by root")
    os.chmod(path, 0o555)
    return path
