"""The guest agent channel on the default (busybox) guest: `channel = [ "name=org.qemu.guest_agent.0" ]`
becomes device/console/1, the stock kernel's hvc_xen connects it as /dev/hvc1, and domain 0's agent
client talks to whatever answers there. The guest has no qemu-ga, so a small shell script plays one on
/dev/hvc1 (sync, ping, exec, interfaces): `exec` goes through it while it answers (its canned reply, not
the console's), `list -l` shows the address it reports, and once it is killed `exec` falls back to the
console. Debian's real qemu-guest-agent is test_debian_image.py's."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from .conftest import Xl, domain_cfg

pytestmark = pytest.mark.slow

STATUS = '{"return": {"exited": true, "exitcode": 5, "out-data": "YWdlbnQtc2FpZC1oaQo="}}'  # agent-said-hi
IFACES = ('{"return": [{"name": "eth0", "ip-addresses": '
          '[{"ip-address-type": "ipv4", "ip-address": "192.0.2.9", "prefix": 24}]}]}')
FAKE_AGENT = (r"""stty -F /dev/hvc1 raw -echo
exec 3<>/dev/hvc1
while read -r line <&3; do
  case "$line" in
    *guest-sync-delimited*) id=${line##*\"id\":}; id=${id%%\}*}; printf '\377{"return": %s}\n' "$id" >&3;;
    *guest-ping*) printf '{"return": {}}\n' >&3;;
    *guest-exec-status*) printf '%s\n' 'STATUS' >&3; exit 0;;
    *guest-exec*) printf '{"return": {"pid": 7}}\n' >&3;;
    *guest-network-get-interfaces*) printf '%s\n' 'IFACES' >&3;;
  esac
done
""").replace("'STATUS'", f"'{STATUS}'").replace("'IFACES'", f"'{IFACES}'")


def test_agent_channel_on_the_busybox_guest(xl: Xl, tmp_path: Path) -> None:
    xl("create", domain_cfg(tmp_path, "ga", 'channel = [ "name=org.qemu.guest_agent.0, connection=socket" ]'))
    r = xl("exec", "ga", "echo up-$((6*7)); ls /dev/hvc1", "--timeout", "120")  # no agent yet: the console
    assert r.returncode == 0 and "up-42" in r.stdout and "/dev/hvc1" in r.stdout, r
    domid = xl("domid", "ga").stdout.strip()
    assert xl("xenstore", "read", f"/local/domain/0/backend/console/{domid}/1/state").stdout.strip() == "4"
    assert xl("xenstore", "read", f"/local/domain/{domid}/device/console/1/name").stdout.strip() == \
        "org.qemu.guest_agent.0"
    script = base64.b64encode(FAKE_AGENT.encode()).decode()
    xl("exec", "ga", f"echo {script} | base64 -d > /tmp/fa.sh && (setsid sh /tmp/fa.sh </dev/null "
                     f">/dev/null 2>&1 &) ; echo started", "--timeout", "60")
    deadline = time.monotonic() + 60
    while "ip: 192.0.2.9/24" not in xl("list", "-l").stdout:  # the address the agent reports
        assert time.monotonic() < deadline, xl("list", "-l").stdout
        time.sleep(1)
    r = xl("exec", "ga", "this is never run by a shell", check=False, timeout=120)
    assert (r.returncode, r.stdout) == (5, "agent-said-hi\n"), r  # the agent's canned answer
    # the fake agent exits after one exec: the console again
    r = xl("exec", "ga", "echo console-$((6*7))", "--timeout", "120")
    assert "console-42" in r.stdout, r
    xl("destroy", "ga")
