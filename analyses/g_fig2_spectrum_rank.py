"""Paper G Fig. 2: covariance spectra of Z and H and the ranks of H and Z per head.

G's claims: (a, b) the spectra; (c) "with no projection head, to linear, to
non-linear projection, the rank of H increases and the rank of Z decreases", so
rank(Z) < rank(H) (the rank deficit) for linear and MLP heads. Ranks are
torch.linalg.matrix_rank's numerical rank of the test-split feature matrix (its
default cut-off, float32), mean ± std over seeds; the spectra are seed 0's.
With no head the loss acts on h, so Z = H there (G shows its top-k eigenvalues).

    python analyses/g_fig2_spectrum_rank.py --scale cpu
"""

from __future__ import annotations

import common
import numpy as np
import outputs
import plotting


def compute(ctx: common.Context) -> dict:
    """Spectra (seed 0) and rank / effective rank of H and Z (every seed) per head."""
    from repdiag.diagnose import rank_report, spectrum_report

    runs = common.g_head_runs(ctx)
    out = {"spectra": {}, "ranks": {k: [] for k in runs}}
    for kind, folders in runs.items():
        for i, folder in enumerate(folders):
            src = common.source(ctx, common.last(folder))
            r = rank_report(src)
            z = r.get("z", r["h"])  # no head: the loss sees h itself
            out["ranks"][kind].append({"rank_h": r["h"]["rank"], "rank_z": z["rank"],
                                       "rankme_h": r["h"]["effective_rank"],
                                       "rankme_z": z["effective_rank"],
                                       "m": int(src.get("test").h.shape[1]),
                                       "d": int((src.get("test").z if src.get("test").z is not None
                                                 else src.get("test").h).shape[1])})
            out["n_test"] = len(src.get("test").y)
            if i == 0:
                sp = spectrum_report(src)
                out["spectra"][kind] = {"h": sp["h"], "z": sp.get("z", sp["h"])}
    return out


def plot(spectra: dict, ranks: dict, out_dim: int):
    """(a) Z spectra, (b) H spectra, (c) rank bars with seed spread."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for kind, sp in spectra.items():
        z = np.clip(np.asarray(sp["z"], float), 1e-12, None)
        if kind == "none":
            z = z[:out_dim]  # G: "for no projection head, we only show top-128 eigenvalues"
        axes[0].semilogy(np.arange(1, len(z) + 1), z, label=common.G_HEADS[kind])
        h = np.clip(np.asarray(sp["h"], float), 1e-12, None)
        axes[1].semilogy(np.arange(1, len(h) + 1), h, label=common.G_HEADS[kind])
    axes[0].set_title("(a) eigenvalues of cov(Z)")
    axes[1].set_title("(b) eigenvalues of cov(H)")
    for ax in axes[:2]:
        ax.set_xlabel("index")
        ax.legend(fontsize=8)
    plotting.grouped_bars(axes[2], [common.G_HEADS[k] for k in ranks],
                          {name: [[r[key] for r in rs] for rs in ranks.values()]
                           for key, name in (("rank_z", "rank(Z)"), ("rank_h", "rank(H)"))}, rotation=12)
    axes[2].set_title("(c) numerical rank (test split)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> int:
    import pandas as pd

    ctx = common.cli_context(__doc__)
    res = compute(ctx)
    outputs.write_figure(ctx, "g_fig2_spectrum_rank", plot(res["spectra"], res["ranks"], ctx.scale.g_out),
                        title="G Fig. 2: spectra of Z and H, ranks", ranks=res["ranks"])
    rows = []
    for kind, rs in res["ranks"].items():
        def ms(key, rs=rs):
            return "{:.1f} ± {:.1f}".format(*outputs.mean_spread([float(r[key]) for r in rs]))
        rows.append({"head": common.G_HEADS[kind], "m": rs[0]["m"], "dim z": rs[0]["d"],
                     "rank(H)": ms("rank_h"), "rank(Z)": ms("rank_z"),
                     "deficit rank(H) - rank(Z)": "{:.1f} ± {:.1f}".format(*outputs.mean_spread(
                         [float(r["rank_h"] - r["rank_z"]) for r in rs])),
                     "RankMe(H)": ms("rankme_h"), "RankMe(Z)": ms("rankme_z"),
                     "per seed rank(H)/rank(Z)": " ".join(f"{r['rank_h']}/{r['rank_z']}" for r in rs)})
    outputs.write_table(ctx, "g_fig2_ranks", pd.DataFrame(rows),
                       title="G Fig. 2c: numerical and effective ranks of H and Z (test split)",
                       notes=["No head: Z = H (the loss acts on h). Rank: torch.linalg.matrix_rank "
                              "default cut-off on the float32 features of the "
                              f"{res['n_test']} test images."])
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
