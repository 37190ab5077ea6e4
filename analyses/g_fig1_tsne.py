"""Paper G Fig. 1: t-SNE maps of the backbone features h with no, linear and MLP heads.

G's claim: "the feature representations learned with no projection head are tightly
clustered compared to the non-linear projection head which yields features spread
across the whole space". Beside the maps (seed 0, test split) the script measures
what the eye reads, on h itself and over all seeds: the share of the variance of
the L2-normalised h that lies within classes (higher = less tightly clustered), the
effective rank (RankMe) of h, and the leave-one-out 10-NN class accuracy in the map.

    python analyses/g_fig1_tsne.py --scale cpu
"""

from __future__ import annotations

import common
import numpy as np
import outputs
import torch


def within_class_share(h: torch.Tensor, y: torch.Tensor) -> float:
    """tr(S_within) / tr(S_total) of the L2-normalised features (1 = no class structure)."""
    x = torch.nn.functional.normalize(h.double(), dim=1)
    total = ((x - x.mean(0)) ** 2).sum()
    within = sum(((x[y == c] - x[y == c].mean(0)) ** 2).sum() for c in torch.unique(y))
    return float(within / total)


def map_knn_accuracy(emb: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN (majority vote) class accuracy of a 2-D map."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=k + 1).fit(emb, y)
    idx = knn.kneighbors(emb, return_distance=False)[:, 1:]
    votes = y[idx]
    pred = np.array([np.bincount(v, minlength=y.max() + 1).argmax() for v in votes])
    return float((pred == y).mean())


def compute(ctx: common.Context) -> dict:
    """Maps of seed 0 and the clustering measures of every seed, per head."""
    from repdiag.diagnostics import rank, tsne

    runs = common.g_head_runs(ctx)
    out = {"maps": {}, "measures": {k: [] for k in runs}, "classes": None}
    for kind, folders in runs.items():
        for i, folder in enumerate(folders):
            src = common.source(ctx, common.last(folder))
            test = src.get("test")
            m = {"within_class_share": within_class_share(test.h, test.y),
                 "rankme_h": float(rank(test.h).effective_rank)}
            if i == 0:
                gen = torch.Generator().manual_seed(0)
                idx = torch.randperm(len(test.y), generator=gen)[:ctx.scale.tsne_points]
                res = tsne(test.h[idx], test.y[idx], seed=0)
                out["maps"][kind] = (res.embedding, res.labels)
                m["map_10nn_accuracy"] = map_knn_accuracy(res.embedding, np.asarray(res.labels))
                out["classes"] = src.class_names()
            out["measures"][kind].append(m)
    return out


def plot(maps: dict, classes: list[str] | None):
    """Three t-SNE panels side by side, one legend with the class names."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4.6))
    for ax, (kind, (emb, y)) in zip(np.atleast_1d(axes), maps.items(), strict=True):
        y = np.asarray(y)
        for c in np.unique(y):
            name = classes[c] if classes else str(c)
            ax.scatter(emb[y == c, 0], emb[y == c, 1], s=1.5, label=name)
        ax.set_title(common.G_HEADS[kind])
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, markerscale=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def main() -> int:
    import pandas as pd

    ctx = common.cli_context(__doc__)
    res = compute(ctx)
    outputs.write_figure(ctx, "g_fig1_tsne", plot(res["maps"], res["classes"]),
                        title="G Fig. 1: t-SNE of h (test split, seed 0)",
                        measures=res["measures"])
    rows = []
    for kind, ms in res["measures"].items():
        rows.append({"head": common.G_HEADS[kind],
                     "within-class share of variance (%)": outputs.pm(
                         [m["within_class_share"] for m in ms]),
                     "RankMe of h": "{:.1f} ± {:.1f}".format(
                         *outputs.mean_spread([m["rankme_h"] for m in ms])),
                     "10-NN accuracy in the map, seed 0 (%)": round(
                         100 * ms[0]["map_10nn_accuracy"], 2)})
    outputs.write_table(ctx, "g_fig1_tsne_measures", pd.DataFrame(rows),
                       title="G Fig. 1, measured: how tightly h clusters by class",
                       notes=["Within-class share = tr(S_within)/tr(S_total) of the L2-normalised "
                              "test features h, mean ± std over seeds; G's claim predicts it grows "
                              "from no head to linear to MLP."])
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
