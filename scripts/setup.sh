#!/usr/bin/env bash
# Installs what hyperdisco needs on a fresh Debian/Ubuntu machine (run as root): a C compiler and cmake for
# the tcg engine (its fast path, and the project's patched unicorn built into the cache), apt/dpkg tooling for the default guest images, and a virtualenv in .venv holding
# the package and its development tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v cmake >/dev/null || need_apt+=(cmake)           # the patched unicorn (engine/tcg/unicorn_build.py)
command -v make >/dev/null || need_apt+=(make)             # cmake's default generator
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)   # images rootfs, disk tests, pygrub's debugfs
command -v sfdisk >/dev/null || [ -x /usr/sbin/sfdisk ] || [ -x /sbin/sfdisk ] || need_apt+=(fdisk)  # pygrub: partitions
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)  # images debian
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)   # qcow2 interoperability tests
command -v passt >/dev/null || need_apt+=(passt)           # the virtual network's uplink to the host
command -v xenstore-ls >/dev/null || need_apt+=(xenstore-utils)  # Xen's own tools on xenstored's socket
command -v python3 >/dev/null || need_apt+=(python3)
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then need_apt+=(python3-venv); fi
if [ ! -d /var/lib/apt/lists ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ] \
   || [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: apt-get update" >&2
  apt-get update -qq
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: hyperdisco needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import hyperdisco, unicorn, pytest, ruff, mypy, hypothesis, importlinter' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing hyperdisco into .venv" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.installed
fi
# the tcg engine's patched unicorn (engine/tcg/unicorn_patches.py), once per patch set, into the cache
.venv/bin/python -m hyperdisco.engine.tcg.unicorn_build >/dev/null
