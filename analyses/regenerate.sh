#!/usr/bin/env bash
# Regenerate every committed output of figures/cpu/ and figures/cpu-long/, then the claim
# tables and figures/README.md's generated blocks (claims, quoted tables, provenance).
#
#   bash analyses/regenerate.sh            # one thread, one script after another
#
# Runs under runs/analyses/<scale>/ are reused where they exist and trained where they do
# not (figures/README.md's provenance table gives each output's training time). Commit
# first: each sidecar records the commit the command started from, +dirty for uncommitted
# changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
run() { echo "== $*" >&2; "$PY" "$@" --threads 1 --quiet; }

G5=0,1,2,3,4
run analyses/choose_cpu_config.py --scale cpu
for s in g_fig1_tsne g_fig2_spectrum_rank g_fig3_linear_eval g_fig4_nullspace g_table1_bilevel \
         g_table2_fixed_moving; do
  run "analyses/$s.py" --scale cpu --seeds "$G5"
done
for s in s_table2_peak s_table3_stats s_table4_width s_table5_activation s_table6_frozen; do
  run "analyses/$s.py" --scale cpu --seeds 0,1,2
done
for s in g_precondition_epochs g_fig1_tsne g_fig2_spectrum_rank g_fig3_linear_eval; do
  run "analyses/$s.py" --scale cpu-long --seeds 0,1,2
done
run analyses/g_table2_fixed_moving.py --scale cpu-long --seeds 0,1,2 --rows none,linear-fixed-random,directclr,linear-fixed-pretrained,linear-slow-single,linear
"$PY" analyses/claims.py --scale cpu-long --skip-missing
"$PY" analyses/claims.py --scale cpu --readme
