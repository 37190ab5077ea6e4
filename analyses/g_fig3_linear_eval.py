"""Paper G Fig. 3: linear evaluation of the backbone features h with no, linear and MLP heads.

G's claim (CIFAR-10, STL-10, TinyImageNet, ImageNet): a head helps: the MLP head
gives the best linear accuracy on h, no head the worst. Linear probe: the scale's
preset (cpu: L-BFGS on standardised features, "fast"; gpu/paper: G's 200 epochs of
Adam 1e-3); kNN (k = 200) beside it. Mean ± std over seeds, test split.

    python analyses/g_fig3_linear_eval.py --scale cpu
"""

from __future__ import annotations

import common
import outputs
import plotting


def compute(ctx: common.Context) -> dict:
    """Per head, per seed: linear and kNN accuracy on h (plus the untrained backbone's)."""
    runs = common.g_head_runs(ctx)
    acc = {}
    for kind, folders in runs.items():
        acc[kind] = [common.evaluate(ctx, common.last(f), on=None if kind != "none" else ("h",))
                     ["accuracy"] for f in folders]
    init = [common.evaluate(ctx, common.epoch0(f), on=("h",), rank=False)["accuracy"]
            for f in runs["mlp"]]
    return {"acc": acc, "init": init}


def plot(acc: dict, init: list):
    """Bars of linear and kNN accuracy on h per head, error bars = std over seeds."""
    import matplotlib.pyplot as plt

    labels = ["untrained backbone"] + [common.G_HEADS[k] for k in acc]
    groups = [init] + list(acc.values())
    fig, ax = plt.subplots(figsize=(7, 3.8))
    plotting.grouped_bars(ax, labels, {name: [[100 * a[probe]["h"] for a in g] for g in groups]
                                       for probe, name in (("linear", "linear probe"),
                                                           ("knn", "kNN (k=200)"))}, rotation=12)
    lo = min(100 * a[p]["h"] for g in groups for a in g for p in ("linear", "knn"))
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_ylabel("test accuracy on h (%)")
    ax.set_title("G Fig. 3: evaluation of h by head")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> int:
    import pandas as pd

    ctx = common.cli_context(__doc__)
    res = compute(ctx)
    outputs.write_figure(ctx, "g_fig3_linear_eval", plot(res["acc"], res["init"]),
                        title="G Fig. 3: linear evaluation of h by head", accuracy=res)
    rows = [{"model": "untrained backbone (epoch 0)",
             "linear on h (%)": outputs.pm([a["linear"]["h"] for a in res["init"]]),
             "kNN on h (%)": outputs.pm([a["knn"]["h"] for a in res["init"]])}]
    rows += [{"model": common.G_HEADS[k],
              "linear on h (%)": outputs.pm([a["linear"]["h"] for a in accs]),
              "kNN on h (%)": outputs.pm([a["knn"]["h"] for a in accs])} for k, accs in res["acc"].items()]
    outputs.write_table(ctx, "g_fig3_linear_eval_table", pd.DataFrame(rows),
                       title="G Fig. 3: test accuracy on h (mean ± std over seeds)",
                       notes=[f"Linear probe preset `{ctx.scale.linear_preset}`; kNN k = 200, "
                              "cosine, T = 0.5; train split = probe training set."])
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
