#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest (CPU, generated data).
# The report test loads a page in Debian's headless Chromium: installed here as root if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPDIAG_SKIP_DATA=${REPDIAG_SKIP_DATA:-1} bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing Debian's chromium for the headless report test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/dev/null 2>&1 || { echo "[test] could not install chromium: the browser test will be skipped";
                           export REPDIAG_SKIP_BROWSER=1; }
  else
    echo "[test] chromium missing and not root: the browser test will be skipped"
    export REPDIAG_SKIP_BROWSER=1
  fi
fi
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest "$@"
