"""`hyperdisco images debian` end to end (slow: about a minute to build here, less with apt's cache): the
image boots through bootloader = "pygrub" (its own kernel and initramfs) to a login prompt on hvc0 with
no failed unit on the way."""

from __future__ import annotations

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
    build = subprocess.run(Xl.argv("images", "debian", str(img), "--size", "2G", "--password", "pw"),
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "mmdebstrap: I: success" in build.stderr
    xl("create", domain_cfg(tmp_path, "deb", 'bootloader = "pygrub"',
                            f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]", memory=512))
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
    xl("destroy", "deb")
