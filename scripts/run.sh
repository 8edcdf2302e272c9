#!/usr/bin/env bash
# Set up (once) and boot the default guest: a Debian kernel and a busybox initramfs, fetched and built
# into ~/.cache/hyperdisco on first use. Extra arguments go to `hyperdisco run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hyperdisco run "$@"
