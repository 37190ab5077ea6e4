"""Paper S Table 5: average test accuracy over runs by projector activation (ReLU, SiLU,
sigmoid, tanh), per projector.

S's claim: on average ae prefers tanh; mlp does best with sigmoid on 3 of 5 datasets.

    python analyses/s_table5_activation.py --scale cpu
"""

from __future__ import annotations

import common
import s_grid


def activation_rows(df, base: dict, col: str = "test") -> list[dict]:
    """Like for like: the runs at the base widths (``s_grid.at_base``); per activation and
    projector the average of ``col`` (its spread over seeds, the run count), the change from
    the base activation paired by seed and Z-score, and ae − mlp paired the same way."""
    part = s_grid.at_base(df, base, "activation")
    return [{"activation": act, **s_grid.factor_row(part, "activation", act, base["activation"], col)}
            for act in s_grid.S_ACTIVATIONS if act in set(part["activation"])]


def main() -> int:
    return s_grid.s_table_main(__doc__, "s_table5_activation", activation_rows,
                               title="S Table 5: average test accuracy by projector activation",
                               notes=["Like for like: the runs at the base widths; 'Δ vs base' and "
                                      "'ae − mlp' are per-seed paired differences (mean ± SD over "
                                      "seeds, seeds above 0 / seeds)."])

if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
