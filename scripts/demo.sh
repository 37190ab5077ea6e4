#!/usr/bin/env bash
# The main job: set up, train the fmnist-tiny preset on Fashion-MNIST (2 CPU
# cores: a few minutes), then print its kNN (k=200) test accuracy next to the
# same backbone untrained (its epoch-0 checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-runs/fmnist-tiny}
if [ -f "$OUT/last.pt" ]; then
  .venv/bin/repdiag train --resume "$OUT"
else
  .venv/bin/repdiag train --config fmnist-tiny --out "$OUT"
fi
echo "kNN (k=200, cosine, T=0.5) on the Fashion-MNIST test set, trained vs untrained (epoch 0):"
.venv/bin/repdiag probe "$OUT/last.pt" "$OUT/checkpoints/epoch_000.pt" --probe knn --on h,z
