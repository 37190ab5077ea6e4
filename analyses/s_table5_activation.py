"""Paper S Table 5: average test accuracy over runs by projector activation (ReLU, SiLU,
sigmoid, tanh), per projector.

S's claim: on average ae prefers tanh; mlp does best with sigmoid on 3 of 5 datasets.

    python analyses/s_table5_activation.py --scale cpu
"""

from __future__ import annotations

import common
import s_grid


def activation_rows(df) -> list[dict]:
    """Average test accuracy (its spread over seeds, and the run count) per activation and
    projector."""
    return [{"activation": act, **s_grid.s_head_averages(df[df["activation"] == act])}
            for act in s_grid.S_ACTIVATIONS]


def main() -> int:
    return s_grid.s_table_main(__doc__, "s_table5_activation", activation_rows,
                               title="S Table 5: average test accuracy by projector activation")

if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
