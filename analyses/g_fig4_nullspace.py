"""Paper G Fig. 4: linear evaluation on h, its range part h_r, its null-space part h_n and z.

h = h_r + h_n with h_r = A⁺A h for the head's first linear map A (G eq. 4). G's
claims: h is the best; h_n is "competitive" and, except on ImageNet, beats z; h_n
is far above chance. G makes them for the linear head z = A h, without a bias
(G §3.2): that head is the first row; the linear head with a bias and the MLP head
(ours) follow as extra rows. kNN (k = 200) beside the linear probe; mean ± std over
seeds, test split.

The probe's own error is measured on a control whose answer is known: for a linear
head of full row rank, z = A h_r (+ b) is an invertible affine map of h_r's
coordinates in A's row space, so a perfect probe scores h_r and z equally; the
column "h_r − z" shows how far the probe is from that, beside "h_n − z".

    python analyses/g_fig4_nullspace.py --scale cpu
"""

from __future__ import annotations

import common
import outputs
import plotting

FEATURES = ("h", "h_r", "h_n", "z")


HEADS = {"linear-nobias": "linear head, no bias (G)", "linear": "linear head, with bias (ours)",
         "mlp": "MLP head (ours)"}


def compute(ctx: common.Context) -> dict:
    """Accuracies of both probes on h, h_r, h_n, z per head and seed."""
    runs = common.g_head_runs(ctx)
    runs["linear-nobias"] = [common.ensure_run(ctx, "g", "linear-nobias",
                                               common.g_head(ctx, "linear") + ["head.bias=false"], seed)
                             for seed in ctx.seeds]
    return {kind: [common.evaluate(ctx, common.last(f)) for f in runs[kind]] for kind in HEADS}


def per_seed(evs: list[dict], probe: str, a: str, b: str) -> str:
    """'a − b' per seed in points, e.g. '+1.03 -0.24'."""
    return " ".join(f"{100 * (e['accuracy'][probe][a] - e['accuracy'][probe][b]):+.2f}" for e in evs)


def plot(res: dict, probe: str):
    """Grouped bars per head: h, h_r, h_n, z, error bars = std over seeds."""
    import matplotlib.pyplot as plt

    from repdiag.plots import FEATURE_LABELS

    fig, ax = plt.subplots(figsize=(7, 3.8))
    plotting.grouped_bars(ax, [HEADS[k] for k in res],
                          {FEATURE_LABELS[f]: [[100 * e["accuracy"][probe][f] for e in evs
                                                if e["accuracy"][probe].get(f) is not None]
                                               for evs in res.values()] for f in FEATURES}, width=0.8)
    ax.axhline(10, color="grey", lw=0.8, ls=":", label="chance (10 classes)")
    ax.set_ylabel(f"{'linear' if probe == 'linear' else 'kNN'} test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("G Fig. 4: h, range h_r, null space h_n, head output z")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    return fig


def main() -> int:
    import pandas as pd

    ctx = common.cli_context(__doc__)
    res = compute(ctx)
    outputs.write_figure(ctx, "g_fig4_nullspace", plot(res, "linear"),
                        title="G Fig. 4: linear probes on h, h_r, h_n, z", evaluations=res)
    rows = []
    for kind, evs in res.items():
        for probe in ("linear", "knn"):
            row = {"head": HEADS[kind], "probe": probe}
            for f in FEATURES:
                row[f"{f} (%)"] = outputs.pm([e["accuracy"][probe].get(f) for e in evs])
            row["h_n - z (pt), per seed"] = per_seed(evs, probe, "h_n", "z")
            row["control h_r - z (pt), per seed"] = per_seed(evs, probe, "h_r", "z") \
                if kind != "mlp" else "—"
            row["dim null space"] = evs[0]["nullspace"]["head_shape"][1] - evs[0]["nullspace"]["head_rank"]
            rows.append(row)
    outputs.write_table(ctx, "g_fig4_nullspace_table", pd.DataFrame(rows),
                       title="G Fig. 4: probes on h, h_r, h_n, z (mean ± std over seeds)",
                       notes=[f"Linear probe preset `{ctx.scale.linear_preset}`; kNN k = 200, T = 0.5. "
                              "h_r = A⁺A h, h_n = h − h_r for the head's first linear map A.",
                              "Control: for a linear head z = A h_r (+ b) is an invertible map of "
                              "h_r, so a perfect probe gives h_r − z = 0; its spread is the probe's "
                              "own error (not defined for the MLP head, whose z is non-linear)."],
                       evaluations=res)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
