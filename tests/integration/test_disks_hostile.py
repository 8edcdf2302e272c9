"""A hostile frontend (issue 4): from inside a guest, blkif requests with bad grant references, sectors
outside the disk or the page, malformed segment counts, unknown operations and finally an overflowed
ring fail alone; the daemon, the device's good requests and another domain's disk are unharmed.

The guest side is tests/guest/hostile_blkfront.c, built here with `gcc -static` and added to the default
initramfs as /bin/hostile (a second newc archive appended to the first: the kernel unpacks concatenated
archives). In the guest the stock xen-blkfront is unloaded before the disk is attached, so the program
is the vbd's only frontend: it shares its own ring through /dev/xen/gntalloc, binds an event channel
through /dev/xen/evtchn and does the xenbus handshake through /dev/xen/xenbus.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from hyperdisco.backends.blkback import abi
from hyperdisco.images import GuestImages

from .conftest import Xl, build_guest_program, domain_cfg, initrd_with_program

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent.parent / "guest" / "hostile_blkfront.c"
DISK_SECTORS = 512  # a 256 KiB image
SECTOR0 = b"HOST-SECTOR-ZERO-PATTERN-0123456789"
BYSTANDER = b"BYSTANDER-DISK-SECTOR-ZERO"

# the status each request must get (blkif.h: BLKIF_RSP_OKAY 0, BLKIF_RSP_ERROR -1, EOPNOTSUPP -2)
EXPECTED = {
    "gref_out_of_range": abi.RSP_ERROR,  # no such grant entry
    "gref_revoked": abi.RSP_ERROR,  # granted, then ended by the guest (gntalloc dealloc)
    "gref_other_domain": abi.RSP_ERROR,  # granted to domain 7, not to the backend's domain 0
    "read_into_readonly_grant": abi.RSP_ERROR,  # a read writes into the page: needs a writable grant
    "sector_at_end": abi.RSP_ERROR,
    "sector_straddles_end": abi.RSP_ERROR,  # a write of 8 sectors from the last one
    "sector_huge": abi.RSP_ERROR,  # near 2**64
    "first_after_last": abi.RSP_ERROR,
    "last_beyond_page": abi.RSP_ERROR,  # last_sect 8 of a 4 KiB frame
    "zero_segments": abi.RSP_ERROR,
    "twelve_segments": abi.RSP_ERROR,  # > BLKIF_MAX_SEGMENTS_PER_REQUEST
    "unknown_op": abi.RSP_EOPNOTSUPP,
    "indirect_bad_gref": abi.RSP_ERROR,  # the indirect page's grant does not exist
    "indirect_bad_op": abi.RSP_ERROR,  # indirect_op that is neither read nor write
    "write_from_readonly_grant": abi.RSP_OKAY,  # a write only reads the page: read-only is enough
    "valid_write": abi.RSP_OKAY,
    "valid_read": abi.RSP_OKAY,
}

# what blkback logs (one line per kind of bad request; later ones of a kind within 10 s are counted)
COMPLAINTS = (
    "request failed: bad grant: grant reference 999999 out of range",
    f"request failed: sectors {DISK_SECTORS}+1 beyond the disk ({DISK_SECTORS} sectors)",
    "sectors 5..2",
    "request failed: unknown operation 42",
    "request failed: indirect request for operation 3",
    "ring broken, disconnecting",
)


def build_hostile(tmp_path: Path) -> Path:
    return build_guest_program(SOURCE, tmp_path / "hostile")


def initrd_with(images: GuestImages, binary: Path, out: Path) -> Path:
    return initrd_with_program(images, binary, "hostile", out)


def raw_image(path: Path, sectors: int, head: bytes) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(sectors * abi.SECTOR)
    return path


def wait_xs(xl: Xl, path: str, want: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        v = xl("xenstore", "read", path, check=False).stdout.strip()
        if v == want:
            return
        assert time.monotonic() < deadline, (path, v)
        time.sleep(0.2)


def read_sector0(xl: Xl, dom: str) -> str:
    r = xl("exec", dom, "dd if=/dev/xvda bs=512 count=1 2>/dev/null | head -c 26; echo", "--timeout", "120")
    return r.stdout


def test_hostile_frontend_fails_alone(xl: Xl, tmp_path: Path, images: GuestImages) -> None:
    binary = build_hostile(tmp_path)
    initrd = initrd_with(images, binary, tmp_path / "initrd-hostile.cpio")
    img = raw_image(tmp_path / "victim.img", DISK_SECTORS, SECTOR0)
    other = raw_image(tmp_path / "bystander.img", 2048, BYSTANDER)

    # a bystander whose disk the stock blkfront drives, in the same daemon
    xl("create", domain_cfg(tmp_path, "bystander", f"disk = [ 'vdev=xvda, target={other}' ]"))
    xl("create", domain_cfg(tmp_path, "hostile", f'kernel = "{images.kernel}"', f'ramdisk = "{initrd}"'))
    r = xl("exec", "hostile", "rmmod xen_blkfront && modprobe xen-evtchn && modprobe xen-gntalloc && "
                              "ls /dev/xen && ls -l /bin/hostile", "--timeout", "120")
    assert all(d in r.stdout for d in ("evtchn", "gntalloc", "xenbus", "/bin/hostile")), r.stdout
    dom = xl("domid", "hostile").stdout.strip()
    devid = abi.vdev_to_devid("xvdb")
    xl("block-attach", "hostile", f"format=raw, vdev=xvdb, access=rw, target={img}")
    wait_xs(xl, f"/local/domain/0/backend/vbd/{dom}/{devid}/state", str(abi.XenbusStateInitWait))
    assert xl("exec", "hostile", "ls /sys/block").stdout.count("xvd") == 0  # no kernel frontend on it

    r = xl("exec", "hostile", f"/bin/hostile {devid}", "--timeout", "300", check=False)
    out = r.stdout
    assert "HOSTILE DONE" in out, (out, r.stderr)
    assert re.search(rf"CONNECTED ring-ref \d+ event-channel \d+ backend-state {abi.XenbusStateConnected}",
                     out), out
    got = dict(re.findall(r"^REQ (\w+) status (\S+)", out, re.M))
    assert got == {k: str(v) for k, v in EXPECTED.items()}, out
    # the valid read returned what the host wrote at sector 0
    m = re.search(r"^REQ valid_read status 0 data ([0-9a-f]{64})", out, re.M)
    assert m and bytes.fromhex(m.group(1)) == SECTOR0[:32], out
    # a producer index a ring ahead breaks the ring: the backend disconnects this device only
    assert f"RING overflow backend-state {abi.XenbusStateClosing}" in out, out

    log = xl("dmesg").stdout
    for line in COMPLAINTS:
        assert line in log, (line, log)
    assert "internal error" not in log, log

    # the daemon, the hostile domain itself and the bystander's disk carry on
    rows = xl.rows()
    assert "hostile" in rows and "bystander" in rows
    assert xl("exec", "hostile", "echo still-alive").stdout.strip().endswith("still-alive")
    assert BYSTANDER.decode() in read_sector0(xl, "bystander")
    r = xl("exec", "bystander", "dd if=/dev/zero of=/dev/xvda bs=4096 seek=8 count=4 oflag=direct 2>&1 && "
                                "echo write-ok")
    assert "write-ok" in r.stdout, r.stdout

    # on the host: only the two valid writes reached the image, and it did not grow
    xl("destroy", "hostile")
    data = img.read_bytes()
    assert len(data) == DISK_SECTORS * abi.SECTOR
    assert data[:len(SECTOR0)] == SECTOR0
    assert data[512:512 + 24] == b"HOSTILE-WROTE-SECTOR-ONE"
    assert data[1024:1024 + 21] == b"READONLY-GRANT-SECTOR"
    assert data[-4096:] == bytes(4096)  # the write that straddled the end wrote nothing
    assert BYSTANDER.decode() in read_sector0(xl, "bystander")
