#!/usr/bin/env bash
# The GPU acceptance run on a machine without a package index, from the repository root, with the
# .gpu/ folder that bench/gpu_prepare.sh built carried along:
#   bash bench/gpu_acceptance.sh OUT_DIR [gpu_acceptance.py options, default --device cuda]
# Installs only the wheels of .gpu/whl whose module this Python cannot import, into $GPU_SITE
# (default /tmp/repdiag-gpu-site: outside the tree and OUT_DIR, so they do not travel back),
# reads the images from .gpu/data (never downloads), then runs bench/gpu_acceptance.py, whose
# exit status it returns. Never `pip install -e .` there: it would try to fetch torch==2.14.1.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu_acceptance.sh OUT_DIR [gpu_acceptance.py options]}
shift
py=${PYTHON:-python3}
site=${GPU_SITE:-/tmp/repdiag-gpu-site}
declare -A module=([opentsne]=openTSNE [lightning_utilities]=lightning_utilities
                   [python_dateutil]=dateutil [pyyaml]=yaml)
missing=()
for whl in .gpu/whl/*.whl; do
  [[ -e "$whl" ]] || continue
  dist=$(basename "$whl" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')
  "$py" -c "import ${module[$dist]:-$dist}" 2>/dev/null || missing+=("$whl")
done
if ((${#missing[@]})); then
  echo "gpu_acceptance.sh: installing into $site: ${missing[*]##*/}"
  "$py" -m pip install -q --no-index --no-deps --target "$site" "${missing[@]}"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d .gpu/data ]]; then export REPDIAG_DATA="$PWD/.gpu/data"; fi
export REPDIAG_NO_DOWNLOAD=1
args=("$@")
[[ " ${args[*]} " == *" --device "* ]] || args=(--device cuda "${args[@]}")
exec "$py" bench/gpu_acceptance.py --out "$out" "${args[@]}"
