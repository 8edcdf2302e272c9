"""SMP soak (issue 9, docs/smp.md "Known crash"): boot a vcpus=N guest again and again under one daemon, as
tests/integration/test_smp.py does, and catch the engine crash with its native backtrace.

    .venv/bin/python bench/smp_soak.py [--boots 40] [--vcpus 2] [--memory 192] [--work DIR]
                                       [--out bench/results/smp-soak-<timestamp>.json]

Each boot: `create` a domain, `exec nproc` in it (the guest is up and has brought up its CPUs), check the
answer, `destroy`. The daemon runs with HYPERDISCO_JAIL_CORE_DIR=<work>/cores
(vmm/jail.py: the domain process stays jailed but dumpable, working in that directory), so a domain
process that dies of a signal leaves `core` there; the script then runs gdb on it (`thread apply all bt`,
if gdb is installed: apt-get install gdb) and keeps the backtrace and the core's name in the results. The
crash was seen on a quiet host (about one boot in three) and not under load: the results record the
host's load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=40)
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--memory", type=int, default=192)
    ap.add_argument("--work", type=Path, default=None, help="daemon socket, log, cores (default: a new dir)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work or Path(f"/tmp/hd-smp-soak-{stamp}")
    cores = work / "cores"
    cores.mkdir(parents=True, exist_ok=True)
    cores.chmod(0o1777)  # the jailed domain process writes its core there under its own uid
    out = args.out or REPO / "bench" / "results" / f"smp-soak-{stamp}.json"
    sock = work / "hd.sock"
    env = dict(os.environ, HYPERDISCO_SOCKET=str(sock),
               HYPERDISCO_JAIL_CORE_DIR=str(cores), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sys.path.insert(0, str(REPO))
    from hyperdisco.images import ensure_default_images

    images = ensure_default_images(lambda m: print(f"smp_soak: images: {m}", file=sys.stderr))
    log = open(work / "daemon.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "hyperdisco", "daemon", "--socket", str(sock), "-v"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            print((work / "daemon.log").read_text()[-2000:], file=sys.stderr)
            return 1
        time.sleep(0.1)

    def xl(*a: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hyperdisco", *a], capture_output=True, text=True,
                              env=env, timeout=timeout)

    cfg = work / "soak.cfg"
    cfg.write_text(f'name = "soak"\nmemory = {args.memory}\nvcpus = {args.vcpus}\n'
                   f'kernel = "{images.kernel}"\nramdisk = "{images.initrd}"\n')
    result: dict[str, Any] = {"boots": 0, "ok": 0, "failures": [], "vcpus": args.vcpus,
                              "load_before": os.getloadavg(), "work": str(work)}
    try:
        for i in range(args.boots):
            t0 = time.monotonic()
            r = xl("create", str(cfg))
            detail = ""
            if r.returncode == 0:
                e = xl("exec", "soak", "nproc", "--timeout", "150", timeout=200)
                if e.stdout.strip() == str(args.vcpus):
                    result["ok"] += 1
                else:
                    detail = (e.stdout + e.stderr)[-600:]
            else:
                detail = r.stderr[-600:]
            result["boots"] += 1
            xl("destroy", "soak")
            took = time.monotonic() - t0
            if not detail:
                print(f"smp_soak: boot {i}: ok ({took:.1f} s)", file=sys.stderr)
                continue
            time.sleep(2)  # the core is written as the process dies
            failure: dict[str, Any] = {"boot": i, "detail": detail}
            core = cores / "core"
            if core.exists():
                kept = cores / f"core.boot{i}"
                core.rename(kept)
                failure["core"] = str(kept)
                if shutil.which("gdb"):
                    bt = subprocess.run(["gdb", "-batch", "-ex", "thread apply all bt 40", sys.executable,
                                         str(kept)], capture_output=True, text=True, timeout=600)
                    (cores / f"bt.boot{i}.txt").write_text(bt.stdout + bt.stderr)
                    failure["backtrace"] = str(cores / f"bt.boot{i}.txt")
            result["failures"].append(failure)
            print(f"smp_soak: boot {i}: FAILED ({took:.1f} s): {detail[-200:]!r} {failure.get('core', '')}",
                  file=sys.stderr)
    finally:
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        result["load_after"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"smp_soak: {result['ok']}/{result['boots']} boots ok; results in {out}", file=sys.stderr)
    return 0 if not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
