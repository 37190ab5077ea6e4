"""Paper G Fig. 4: linear evaluation on h, its range part h_r, its null-space part h_n and z.

h = h_r + h_n with h_r = A⁺A h for the head's first linear map A (G eq. 4). G's
claims: h is the best; h_n is "competitive" and, except on ImageNet, beats z; h_n
is far above chance. Linear and MLP heads (no head has no null space), mean ± std
over seeds, test split; kNN (k = 200) beside the linear probe.

    python analyses/g_fig4_nullspace.py --scale cpu
"""

from __future__ import annotations

import common
import plotting

FEATURES = ("h", "h_r", "h_n", "z")


def compute(ctx: common.Context) -> dict:
    """Accuracies of both probes on h, h_r, h_n, z per head and seed."""
    runs = common.g_head_runs(ctx)
    return {kind: [common.evaluate(ctx, common.last(f)) for f in folders]
            for kind, folders in runs.items() if kind != "none"}


def plot(res: dict, probe: str):
    """Grouped bars per head: h, h_r, h_n, z, error bars = std over seeds."""
    import matplotlib.pyplot as plt

    from repdiag.plots import FEATURE_LABELS

    fig, ax = plt.subplots(figsize=(7, 3.8))
    plotting.grouped_bars(ax, [common.G_HEADS[k] for k in res],
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
    common.write_figure(ctx, "g_fig4_nullspace", plot(res, "linear"),
                        title="G Fig. 4: linear probes on h, h_r, h_n, z", evaluations=res)
    rows = []
    for kind, evs in res.items():
        for probe in ("linear", "knn"):
            row = {"head": common.G_HEADS[kind], "probe": probe}
            for f in FEATURES:
                row[f"{f} (%)"] = common.pm([e["accuracy"][probe].get(f) for e in evs])
            row["h_n - z (pt), per seed"] = " ".join(
                f"{100 * (e['accuracy'][probe]['h_n'] - e['accuracy'][probe]['z']):+.2f}" for e in evs)
            row["dim null space"] = evs[0]["nullspace"]["head_shape"][1] - evs[0]["nullspace"]["head_rank"]
            rows.append(row)
    common.write_table(ctx, "g_fig4_nullspace_table", pd.DataFrame(rows),
                       title="G Fig. 4: probes on h, h_r, h_n, z (mean ± std over seeds)",
                       notes=[f"Linear probe preset `{ctx.scale.linear_preset}`; kNN k = 200. "
                              "h_r = A⁺A h, h_n = h − h_r for the head's first linear map A."])
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
