#!/usr/bin/env bash
# Shared set-up for the README's two commands: a local virtual environment in
# .venv with repdiag installed (editable, with the test tools), and the
# Fashion-MNIST data from the Debian package where apt-get is usable.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.repdiag-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing repdiag and its dependencies into .venv (torch is large: a few minutes)"
  # this machine's pip prints a warning per missing local index folder: hide those only
  pip_install() { .venv/bin/python -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored" || true; }; }
  pip_install -e ".[dev]"
  .venv/bin/python -c "import repdiag, train, torch, torchvision, openTSNE" 
  touch "$stamp"
fi

# Fashion-MNIST: the Debian package installs the gzipped IDX files offline.
if [ "${REPDIAG_SKIP_DATA:-0}" != "1" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing the Debian package dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
      >/dev/null 2>&1 || echo "[setup] apt-get could not install dataset-fashion-mnist; torchvision will try to download it"
  else
    echo "[setup] not root or no apt-get: Fashion-MNIST will be downloaded by torchvision when first used"
  fi
fi
