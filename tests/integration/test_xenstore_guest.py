"""Raw xenstore requests from inside guests, through the kernel's /dev/xen/xenbus, against xenstored."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hyperdisco.xen.io.xs_wire import XS_ERROR, XS_READ, XS_WRITE

from .conftest import Xl
from .test_daemon import write_cfg

pytestmark = pytest.mark.slow

# A shell helper for the guest: xsreq TYPE PAYLOAD sends one raw message on a fd kept open on the
# xenbus device (replies belong to the open file) and prints the reply as hex.
XSREQ = r"""
exec 3<>/dev/xen/xenbus
xsreq() {
  n=$(printf "$2" | wc -c)
  h='\\%03o\\000\\000\\000\\001\\000\\000\\000\\000\\000\\000\\000\\%03o\\%03o\\000\\000'
  printf "$(printf "$h" $1 $((n%256)) $((n/256)))$2" >&3
  dd bs=4096 count=1 <&3 2>/dev/null | xxd -p | tr -d '\n'; echo
}
"""


def octal(payload: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in payload)


def parse(hexline: str) -> tuple[int, bytes]:
    raw = bytes.fromhex(hexline.strip())
    typ, _req, _tx, length = struct.unpack_from("<IIII", raw)
    return typ, raw[16:16 + length]


def guest_requests(xl: Xl, dom: str, reqs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    script = XSREQ + "\n".join(f"xsreq {t} '{octal(p)}'" for t, p in reqs)
    out = xl("exec", dom, script).stdout.split()
    return [parse(h) for h in out]


@pytest.fixture
def two(xl: Xl, tmp_path: Path) -> dict[str, int]:
    for n in ("xa", "xb"):
        xl("create", write_cfg(tmp_path, n))
    for n in ("xa", "xb"):
        xl("exec", n, "true")
    return {n: int(xl("domid", n).stdout) for n in ("xa", "xb")}


def test_guest_reaches_only_its_own_keys(xl: Xl, two: dict[str, int]) -> None:
    a, b = two["xa"], two["xb"]
    res = guest_requests(xl, "xa", [
        (XS_READ, b"name\0"),  # relative: its own /local/domain/a/name
        (XS_READ, f"/local/domain/{b}/name\0".encode()),
        (XS_WRITE, f"/local/domain/{b}/data/evil\0x".encode()),
        (XS_WRITE, b"data/mine\0ok"),
        (XS_READ, f"/local/domain/{a}/data/mine\0".encode()),
    ])
    assert res[0] == (XS_READ, b"xa")
    assert res[1] == (XS_ERROR, b"EACCES\0")
    assert res[2] == (XS_ERROR, b"EACCES\0")
    assert res[3][0] == XS_WRITE
    assert res[4] == (XS_READ, b"ok")
    assert xl("xenstore", "read", f"/local/domain/{b}/name").stdout.strip() == "xb"
    assert xl("xenstore", "read", f"/local/domain/{a}/data/mine").stdout.strip() == "ok"


def test_malformed_messages_get_errors_and_the_store_carries_on(xl: Xl, two: dict[str, int]) -> None:
    res = guest_requests(xl, "xa", [
        (99, b"name\0"),  # unknown type
        (XS_READ, b"name"),  # path without its NUL
        (XS_READ, b"name\0"),  # and the connection still works
    ])
    assert res[0][0] == XS_ERROR and res[0][1] == b"EINVAL\0"
    assert res[1][0] == XS_ERROR
    assert res[2] == (XS_READ, b"xa")
    assert xl("exec", "xb", "echo fine").stdout.strip() == "fine"
    assert "xenstore" in xl("dmesg").stdout


def test_node_quota_refuses_one_domain_not_the_other(xl: Xl, two: dict[str, int]) -> None:
    script = XSREQ + r"""
i=0; fails=0
while [ $i -lt 1100 ]; do
  r=$(xsreq 11 "data/q$i\000v")
  case "$r" in 10000000*) fails=$((fails+1)); last=$r; break;; esac
  i=$((i+1))
done
echo "$i $fails $last"
"""
    out = xl("exec", "xa", script, "--timeout", "300").stdout.split()
    written, fails = int(out[0]), int(out[1])
    assert fails == 1 and 900 <= written < 1100  # refused once its quota of nodes is used up
    typ, payload = parse(out[2])
    assert typ == XS_ERROR and payload.rstrip(b"\0") in (b"ENOSPC", b"EQUOTA")
    res = guest_requests(xl, "xb", [(XS_WRITE, b"data/other\0fine")])
    assert res[0][0] == XS_WRITE  # another domain still writes
