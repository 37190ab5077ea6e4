"""Paper S Table 4: average test accuracy as a function of projector width, dim(g) (the
first layer's output) and dim(z) (the projection's size), per projector.

S's claim: ae needs fewer output features in both layers for better accuracy: with
the narrow widths, ae beats the wider mlp.

    python analyses/s_table4_width.py --scale cpu
"""

from __future__ import annotations

import common
import s_grid


def width_rows(df, base: dict, col: str = "test") -> list[dict]:
    """Like for like, by dim(g) and then by dim(z): the runs whose other factors sit at the
    base (``s_grid.at_base``), per projector the average of ``col`` (its spread over seeds, the
    run count) and the change from the base width paired by seed and Z-score; last, ae − mlp
    at that width, paired the same way."""
    rows = []
    for factor, label in (("dim_g", "dim(g)"), ("dim_z", "dim(z)")):
        part = s_grid.at_base(df, base, factor)
        for value in sorted(part[factor].unique()):
            rows.append({"factor": label, "value": int(value),
                         **s_grid.factor_row(part, factor, value, base[factor], col)})
    return rows


def main() -> int:
    return s_grid.s_table_main(
        __doc__, "s_table4_width", width_rows,
        title="S Table 4: average test accuracy by projector width",
        notes=["Like for like: each width is compared on the runs whose other factors sit at the "
               "base (activation, the other width); 'Δ vs base' and 'ae − mlp' are per-seed paired "
               "differences (mean ± SD over seeds, seeds above 0 / seeds)."])

if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
