#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest (CPU, generated data).
set -euo pipefail
cd "$(dirname "$0")/.."
REPDIAG_SKIP_DATA=${REPDIAG_SKIP_DATA:-1} bash scripts/setup.sh
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest "$@"
