"""Paper S Table 3: statistics of the test accuracies over all runs, per projector, with
and without Z-score normalisation: minimum, maximum, average, range, midspread (IQR),
standard deviation.

S's claims: ae has the higher average (every dataset) and a smaller midspread
("improvement in model stability").

    python analyses/s_table3_stats.py --scale cpu
"""

from __future__ import annotations

import common
import s_grid


def stats_rows(df, base: dict | None = None, col: str = "test") -> list[dict]:
    """One row per (Z-score, statistic) with a column per projector, of the test-accuracy
    column ``col`` over every run (``base`` unused: both projectors share the configurations,
    so the cells are balanced)."""
    rows = []
    for zscore in (True, False):
        part = df[df["zscore"] == zscore]
        stats = {}
        for head, g in part.groupby("head", sort=False):
            t = g[col]
            stats[head] = {"minimum": t.min(), "maximum": t.max(), "average": t.mean(),
                           "range": t.max() - t.min(),
                           "midspread": t.quantile(0.75) - t.quantile(0.25),
                           "std. dev.": t.std(ddof=1), "runs": float(len(t))}
        for stat in ("minimum", "maximum", "average", "range", "midspread", "std. dev.", "runs"):
            rows.append({"Z-score": zscore, "statistic": stat,
                         **{h: round(float(s[stat]), 2) for h, s in stats.items()}})
    return rows


def main() -> int:
    return s_grid.s_table_main(
        __doc__, "s_table3_stats", stats_rows,
        title="S Table 3: test accuracy (%) statistics over runs, with (top) and without (bottom) "
              "Z-score",
        notes=["Runs = configurations of the one-factor-at-a-time grid x seeds."])

if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
