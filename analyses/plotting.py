"""Plot pieces shared by the analysis scripts (drawing only; the numbers come from common)."""

from __future__ import annotations

import numpy as np


def grouped_bars(ax, groups: list[str], series: dict[str, list[list[float]]], *,
                 width: float = 0.76, rotation: float = 0) -> None:
    """Draw one bar per series in each group: height = mean over seeds, error bar = sample
    standard deviation (ddof = 1; none for a single seed). ``series[name][i]`` holds the
    per-seed values of group ``i``; an empty list draws no bar. ``width`` is the total width
    the series share in a group."""
    x = np.arange(len(groups))
    w = width / len(series)
    for j, (name, per_group) in enumerate(series.items()):
        means = [np.mean(v) if len(v) else np.nan for v in per_group]
        spread = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in per_group]
        ax.bar(x + (j - (len(series) - 1) / 2) * w, means, w, yerr=spread, capsize=3, label=name)
    ax.set_xticks(x, groups, rotation=rotation)
