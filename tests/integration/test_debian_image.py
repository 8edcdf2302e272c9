"""`hyperdisco images debian` end to end (slow: about a minute to build here, less with apt's cache): the
image boots through bootloader = "pygrub" (its own kernel and initramfs) to a login prompt on hvc0 with
no failed unit on the way, and its qemu-guest-agent answers on the channel (hvc1): `exec` (which never
answers through a systemd guest's console), `cp` both ways, the guest's addresses in `list -l`."""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mmdebstrap") is None or os.geteuid() != 0,
                       reason="needs mmdebstrap (apt-get install mmdebstrap) and root"),
]


def test_debian_image_boots_to_login_through_pygrub(xl: Xl, tmp_path: Path) -> None:
    img = tmp_path / "debian.img"
    build = subprocess.run(Xl.argv("images", "debian", str(img), "--size", "2G", "--password", "pw",
                                     "--packages", "python3"),
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "mmdebstrap: I: success" in build.stderr
    xl("create", domain_cfg(tmp_path, "deb", 'bootloader = "pygrub"',
                            f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]",
                            "vif = [ 'bridge=lan0' ]", "channel = [ 'name=org.qemu.guest_agent.0' ]",
                            memory=512))
    console = subprocess.Popen(Xl.argv("console", "deb"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=xl.env)
    seen = b""
    try:
        deadline = time.monotonic() + 300
        assert console.stdout is not None
        while b"debian login:" not in seen and time.monotonic() < deadline:
            r, _w, _x = select.select([console.stdout], [], [], 1.0)
            if r:
                chunk = os.read(console.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
    finally:
        console.kill()
        console.wait()
    text = seen.decode(errors="replace")
    assert "debian login:" in text, text[-3000:]
    assert "Reached target" in text and "multi-user.target" in text
    assert "FAILED" not in text, text[-3000:]
    # the guest agent: exec through it (a systemd guest's console never answers exec)
    r = xl("exec", "deb", "python3 -c 'import sys; print(6*7); sys.exit(3)'", check=False, timeout=200)
    assert (r.returncode, r.stdout) == (3, "42\n"), r
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(700_000) + b"end")  # more than one request and one agent read
    xl("cp", str(src), "deb:/root/in.bin")
    r = xl("exec", "deb", "sha256sum /root/in.bin")
    assert r.stdout.split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
    # the vif (systemd names it enX0, not eth0)
    xl("exec", "deb", "dev=$(ls /sys/class/net | grep -vx lo | head -n 1); ip link set \"$dev\" up && "
                      "ip addr add 192.0.2.7/24 dev \"$dev\" && cp /etc/os-release /root/out")
    xl("cp", "deb:/root/out", str(tmp_path / "out"))
    assert "Debian" in (tmp_path / "out").read_text()
    assert xl("cp", "deb:/nonexistent", str(tmp_path / "x"), check=False).returncode != 0
    assert "192.0.2.7/24" in xl("list", "-l").stdout
    xl("shutdown", "-w", "deb", timeout=200)  # through guest-shutdown
