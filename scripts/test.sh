#!/usr/bin/env bash
# Set up (once), then lint, type-check and run the whole test suite (unit layer, then the integration
# layer that boots real guests). `scripts/test.sh -m 'not slow'` runs the fast layer alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache   # the layers of README.md
.venv/bin/hyperdisco images fetch >/dev/null
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 600 "$@"
