"""Figures of paper G §3, drawn from result objects; each returns a matplotlib Figure.

Plotting is kept apart from computing: every function takes plain numbers or
result dicts (as the reports return them) and never touches a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from repdiag.errors import user_error  # noqa: E402
from repdiag.files import staged_write, sync_folder  # noqa: E402

FEATURE_LABELS = {"h": "h (backbone)", "h_r": "h_r (range)", "h_n": "h_n (null space)",
                  "z": "z (head)"}


def spectrum_figure(spectra: Mapping[str, Sequence[float]], title: str = "") -> plt.Figure:
    """Log-scale covariance eigenvalues by index for H and Z (paper G Fig. 2a/b)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, eig in spectra.items():
        eig = np.asarray(eig, dtype=float)
        eig = np.clip(eig, np.finfo(float).tiny, None)
        ax.semilogy(np.arange(1, len(eig) + 1), eig, label=FEATURE_LABELS.get(name, name))
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue of the covariance")
    ax.set_title(title or "covariance spectrum")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def curves_figure(metrics: Mapping[str, Sequence[Mapping]], title: str = "") -> plt.Figure:
    """Per-epoch training curves of one or several runs: training and validation
    contrastive loss, and the kNN monitor (validation, or test marked as not used)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, lines in metrics.items():
        epochs = [m["epoch"] for m in lines]
        axes[0].plot(epochs, [m.get("loss", np.nan) for m in lines], marker="o", label=f"{label} train")
        if any("val_loss" in m for m in lines):
            axes[0].plot(epochs, [m.get("val_loss", np.nan) for m in lines], marker="s",
                         linestyle="--", label=f"{label} val")
        for key, what in (("knn_val", "val"), ("knn_test", "test, not used for selection")):
            if any(key in m for m in lines):
                axes[1].plot(epochs, [100 * m[key] if key in m else np.nan for m in lines],
                             marker="o", label=f"{label} ({what})")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("contrastive loss")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("kNN monitor accuracy (%)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    return fig


def rank_figure(ranks: Mapping[str, Mapping[str, float]], title: str = "") -> plt.Figure:
    """Numerical rank of H and Z per model, with the deficit annotated (paper G Fig. 2c).

    ``ranks`` maps a model label to ``{"h": rank_h, "z": rank_z}``.
    """
    labels = list(ranks)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels) + 2), 3.6))
    rh = [ranks[k]["h"] for k in labels]
    rz = [ranks[k].get("z", np.nan) for k in labels]
    ax.bar(x - 0.2, rh, 0.4, label="rank(H)")
    ax.bar(x + 0.2, rz, 0.4, label="rank(Z)")
    for i, (a, b) in enumerate(zip(rh, rz, strict=True)):
        if np.isfinite(b):
            ax.annotate(f"deficit {int(a - b)}", (i, max(a, b)), ha="center", va="bottom",
                        fontsize=8)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("numerical rank")
    ax.set_title(title or "rank of H and Z")
    ax.legend()
    fig.tight_layout()
    return fig


def probe_figure(accuracies: Mapping[str, Mapping[str, float]], probe: str = "knn",
                 title: str = "") -> plt.Figure:
    """Grouped bars of probe accuracy (%) on h, h_r, h_n, z per model (paper G Fig. 3-4).

    ``accuracies`` maps a model label to ``{feature name: accuracy fraction}``;
    a missing or None accuracy (e.g. h_n of a head without null space) draws no bar.
    """
    labels = list(accuracies)
    names = [n for n in FEATURE_LABELS if any(n in accuracies[m] for m in labels)]
    width = 0.8 / max(1, len(names))
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(labels) + 2), 3.6))
    for j, n in enumerate(names):
        vals = [np.nan if accuracies[m].get(n) is None else 100 * accuracies[m][n] for m in labels]
        ax.bar(x + (j - (len(names) - 1) / 2) * width, vals, width, label=FEATURE_LABELS[n])
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel(f"{probe} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"{probe} probe accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def layers_figure(stages: Mapping[str, Sequence[Mapping]], title: str = "") -> plt.Figure:
    """Probe accuracy and rank against depth in the head, one line per model.

    ``stages`` maps a model label to the stage dicts of
    :func:`repdiag.layers.layer_report` (depth 0 is h, the last stage z):
    left, kNN accuracy (solid) and linear-probe accuracy (dashed, when
    measured); right, numerical rank (solid) and RankMe (dotted).
    """
    fig, (acc_ax, rank_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    longest: Sequence[Mapping] = ()
    for i, (label, rows) in enumerate(stages.items()):
        color = f"C{i % 10}"
        depth = [r["depth"] for r in rows]
        longest = rows if len(rows) > len(longest) else longest
        for probe, style in (("knn", "-"), ("linear", "--")):
            if any(probe in r for r in rows):
                acc_ax.plot(depth, [100 * r[probe] if r.get(probe) is not None else np.nan
                                    for r in rows], style, marker="o", color=color,
                            label=f"{label} ({probe})")
        rank_ax.plot(depth, [r["rank"] for r in rows], "-", marker="o", color=color,
                     label=f"{label} rank")
        rank_ax.plot(depth, [r["rankme"] for r in rows], ":", marker="s", color=color,
                     label=f"{label} RankMe")
    ticks = [r["depth"] for r in longest]
    names = ["h" if r["depth"] == 0 else r["layer"] for r in longest]
    if names:
        names[-1] = "z" if len(names) == 1 else f"{names[-1]} = z"
    for ax in (acc_ax, rank_ax):
        ax.set_xticks(ticks, names, rotation=30, ha="right")
        ax.set_xlabel("depth in the head (output of each layer)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    acc_ax.set_ylabel("test accuracy (%)")
    rank_ax.set_ylabel("rank of the test features")
    rank_ax.set_yscale("log")
    fig.suptitle(title or "accuracy and rank through the head")
    fig.tight_layout()
    return fig


def monitor_figure(lines: Mapping[str, Sequence[Mapping]], title: str = "") -> plt.Figure:
    """Training-time curves of :class:`repdiag.monitor.HeadMonitor` lines, one colour per run.

    Left: kNN accuracy on h (solid), h_r (dash-dot), h_n (dotted), z (dashed);
    middle: RankMe of H (solid) and Z (dashed); right: the rank deficit
    rank(H) − rank(Z) (paper G eq. 3). Undefined values (None) leave gaps.
    """
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))

    def col(rows, key, scale=1.0):
        return [np.nan if r.get(key) is None else scale * r[key] for r in rows]

    for i, (label, rows) in enumerate(lines.items()):
        c = f"C{i % 10}"
        ep = [r["epoch"] for r in rows]
        for key, style in (("knn_h", "-"), ("knn_h_r", "-."), ("knn_h_n", ":"), ("knn_z", "--")):
            if any(r.get(key) is not None for r in rows):
                axes[0].plot(ep, col(rows, key, 100), style, marker="o", color=c,
                             label=f"{label} {key[4:]}")
        axes[1].plot(ep, col(rows, "rankme_h"), "-", marker="o", color=c, label=f"{label} H")
        axes[1].plot(ep, col(rows, "rankme_z"), "--", marker="s", color=c, label=f"{label} Z")
        axes[2].plot(ep, col(rows, "rank_deficit"), "-", marker="o", color=c, label=label)
    for ax, ylabel in zip(axes, ("kNN accuracy (%)", "RankMe", "rank deficit"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle(title or "the head during training")
    fig.tight_layout()
    return fig


def tsne_figure(embedding: np.ndarray, labels: np.ndarray | None = None,
                classes: Sequence[str] | None = None, title: str = "") -> plt.Figure:
    """2-D t-SNE scatter coloured by class (paper G Fig. 1 style)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    emb = np.asarray(embedding)
    if labels is None:
        ax.scatter(emb[:, 0], emb[:, 1], s=2)
    else:
        labels = np.asarray(labels)
        for c in np.unique(labels):
            sel = labels == c
            name = classes[c] if classes is not None and c < len(classes) else str(c)
            ax.scatter(emb[sel, 0], emb[sel, 1], s=2, label=name)
        if len(np.unique(labels)) <= 20:
            ax.legend(markerscale=4, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, stem: str | os.PathLike, formats=("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf``: every format is written to a temp file
    first and renamed only when all are written, so a failure (a full disk, say) leaves no
    temp file and no PNG without its PDF; it raises a UserError naming the file."""
    stem = Path(stem)
    finals = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    temps: list[Path] = []
    try:
        for fmt, final in zip(formats, finals, strict=True):
            temps.append(staged_write(final, lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=150)))
        for tmp, final in zip(temps, finals, strict=True):
            os.replace(tmp, final)
        sync_folder(stem.parent)
    except OSError as e:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise user_error(f"cannot write figure {finals[0]}", e) from None
    finally:
        plt.close(fig)
    return finals
