"""Why a linear probe on h can lose to one on h_n, and which protocol keeps h ≥ h_n.

h_n = (I − QQᵀ) h is a linear function of h (paper G eq. 4). A probe on h_n
with weights W_n is the probe on h with weights W_n (I − QQᵀ), so on raw
(unstandardised) features with an L2 penalty the h_n problem is the h problem
restricted to weights in the null space: its optimal *training objective* can
never be below h's. Nothing orders *test* accuracy, and two things break even
the training-objective order:

- per-coordinate standardisation (the ``fast`` preset) rescales h and h_n by
  different diagonal matrices, so the two problems are no longer nested and
  the same penalty λ‖W‖² means different things on each;
- stopping before the optimum (L-BFGS's 100 iterations, Adam's 200 epochs).

This script fits the probes on h and h_n of one checkpoint under several
protocols and reports test accuracy, the final training objective and the
gradient norm, so the cause of an h_n > h result can be read off::

    python analyses/probe_nesting.py runs/x/last.pt [--limit N] [--out figures]

It writes ``probe_nesting.{csv,md,json}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from repdiag.diagnostics import head_svd, linear_probe_split
from repdiag.features import FeatureSource

PROTOCOLS = {  # name: (what it is, linear_probe_split arguments)
    "fast": ("standardised, C=1, <= 100 L-BFGS it.", dict(preset="fast")),
    "fast-raw": ("raw features, C=1, <= 100 it.", dict(preset="fast", standardize=False)),
    "fast-raw-C100": ("raw, C=100, <= 1000 it.",
                      dict(preset="fast", standardize=False, C=100.0, max_iter=1000)),
    "g": ("paper G: raw, Adam 1e-3, wd 1e-6, 200 epochs", dict(preset="g")),
}


def markdown(table: pd.DataFrame) -> str:
    """A GitHub table of ``table`` (floats to 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--limit", type=int, help="cap each split at this many images")
    ap.add_argument("--out", default="figures", help="folder for probe_nesting.{csv,md,json}")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS),
                    help="comma list of protocol names to run (default: all)")
    args = ap.parse_args(argv)
    t0 = time.time()
    src = FeatureSource(args.checkpoint, limit=args.limit)
    tr, te = src.get("train"), src.get("test")
    svd = head_svd(tr.weight)
    rows = []
    for name in args.protocols.split(","):
        if name not in PROTOCOLS:
            ap.error(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
        what, kw = PROTOCOLS[name]
        res = linear_probe_split(tr.h, tr.y, te.h, te.y, svd.basis, seed=0, **kw)
        for feat in ("h", "h_n"):
            d = res[feat].details
            rows.append({"protocol": name, "settings": what, "features": feat,
                         "test accuracy (%)": round(100 * res[feat].accuracy, 2),
                         "train accuracy (%)": round(100 * d["train_accuracy"], 2),
                         "final training objective": d["final_loss"],
                         "gradient norm": d["grad_norm"]})
        print(pd.DataFrame(rows[-2:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "probe_nesting.csv", index=False)
    (out / "probe_nesting.md").write_text(markdown(table))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain", "--", "repdiag", "analyses"],
                      capture_output=True, text=True).stdout.strip():
        commit += "+uncommitted changes"
    meta = {"command": " ".join(["python analyses/probe_nesting.py", *(argv or sys.argv[1:])]),
            "checkpoint": str(args.checkpoint), "head_shape": list(tr.weight.shape),
            "head_rank": svd.rank, "n_train": len(tr), "n_test": len(te), "git": commit,
            "machine": f"{platform.machine()} {platform.processor()} ({torch.get_num_threads()} threads)",
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1)}
    (out / "probe_nesting.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
