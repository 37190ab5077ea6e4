"""Paper S Table 4: average test accuracy as a function of projector width, dim(g) (the
first layer's output) and dim(z) (the projection's size), per projector.

S's claim: ae needs fewer output features in both layers for better accuracy: with
the narrow widths, ae beats the wider mlp.

    python analyses/s_table4_width.py --scale cpu
"""

from __future__ import annotations

import common
import s_grid


def width_rows(df) -> list[dict]:
    """Average test accuracy (its spread over seeds, and the run count) by dim(g), then by
    dim(z), per projector."""
    rows = []
    for factor, label in (("dim_g", "dim(g)"), ("dim_z", "dim(z)")):
        for value in sorted(df[factor].unique()):
            rows.append({"factor": label, "value": int(value),
                         **s_grid.s_head_averages(df[df[factor] == value])})
    return rows


def main() -> int:
    return s_grid.s_table_main(
        __doc__, "s_table4_width", width_rows,
        title="S Table 4: average test accuracy by projector width",
        notes=["One-factor-at-a-time grid: the base width holds most runs; the other widths only "
               "the runs where that factor was varied."])

if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
