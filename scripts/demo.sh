#!/usr/bin/env bash
# The main job: set up .venv, train SimCLR with no, linear and MLP heads on Fashion-MNIST
# (cpu scale on a machine without a GPU, gpu scale with one), print paper G's diagnostic
# table (rank h, rank z, deficit, kNN and linear probes on h, h_r, h_n, z) against the
# untrained backbone, and write the report page. Reruns reuse finished runs and evaluations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python analyses/main_job.py "$@"
