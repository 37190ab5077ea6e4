#!/usr/bin/env bash
# Build .gpu/ (git-ignored) on this machine for the GPU acceptance run (bench/gpu_acceptance.sh):
#   .gpu/whl/   wheels for the GPU machine's Python 3.12 (manylinux x86_64) of the packages it may
#               lack -- the versions installed here when they are, so it runs what was tested here;
#               torch, torchvision, numpy, scipy, scikit-learn and matplotlib are already there
#   .gpu/data/fashion-mnist/
#               the four .gz IDX files of Debian's dataset-fashion-mnist when it is installed,
#               else generated images (repdiag.data.make_synthetic, 10 classes, 28 px grey,
#               30,000 train / 10,000 test) in the same format, with a NOTE saying so
# Needs pip and a package index; about 47 MB in all (the device run carries at most 64 MiB).
# PYTHON=... picks the interpreter whose package versions are pinned (default .venv/bin/python).
#   bash bench/gpu_prepare.sh            # from anywhere; writes <repository>/.gpu
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3
fi
packages=(openTSNE lightly lightning-utilities pandas python-dateutil six PyYAML tqdm threadpoolctl
          packaging)
rm -rf .gpu/whl && mkdir -p .gpu/whl .gpu/data
specs=()
for p in "${packages[@]}"; do
  v=$("$py" -c "from importlib.metadata import version; print(version('$p'))" 2>/dev/null || true)
  specs+=("$p${v:+==$v}")
done
echo "gpu_prepare: downloading ${specs[*]}"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/whl "${specs[@]}"

fm=.gpu/data/fashion-mnist
rm -rf "$fm" && mkdir -p "$fm"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
       t10k-labels-idx1-ubyte.gz)
src=""
if command -v dpkg >/dev/null && dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  src=$(dirname "$(dpkg -L dataset-fashion-mnist | grep 'train-images-idx3-ubyte.gz$' | head -1)")
fi
if [[ -n "$src" ]]; then
  for f in "${files[@]}"; do cp "$src/$f" "$fm/"; done
  echo "gpu_prepare: Fashion-MNIST from $src"
else
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$py" - "$fm" <<'PY'
import sys
from pathlib import Path

from repdiag.data import make_synthetic
from repdiag.data.idx import write_idx

out = Path(sys.argv[1])
# 30,000 training images (all the acceptance run trains on): noise compresses badly, and 60,000
# would take the carried folder past its 64 MiB
train, test = make_synthetic(30000, 10000, num_classes=10, image_size=28, seed=0)
for stem, split in (("train", train), ("t10k", test)):
    grey = split.images.float().mean(dim=1).round().to("cpu").numpy().astype("uint8")
    write_idx(out / f"{stem}-images-idx3-ubyte.gz", grey)
    write_idx(out / f"{stem}-labels-idx1-ubyte.gz", split.labels.numpy().astype("uint8"))
(out / "NOTE").write_text("generated images (repdiag.data.make_synthetic, seed 0), not "
                          "Fashion-MNIST: dataset-fashion-mnist was not installed\n")
PY
  echo "gpu_prepare: dataset-fashion-mnist not installed: generated images in $fm (see NOTE)"
fi
du -sh .gpu/whl .gpu/data
