"""Paper S Table 5: average test accuracy over runs by projector activation (ReLU, SiLU,
sigmoid, tanh), per projector.

S's claim: on average ae prefers tanh; mlp does best with sigmoid on 3 of 5 datasets.

    python analyses/s_table5_activation.py --scale cpu
"""

from __future__ import annotations

import common


def activation_rows(df) -> list[dict]:
    """Average (and count) of test accuracy per activation and projector."""
    rows = []
    for act in common.S_ACTIVATIONS:
        part = df[df["activation"] == act]
        row = {"activation": act}
        for head, g in part.groupby("head", sort=False):
            row[f"{head} avg (%)"] = round(float(g["test"].mean()), 2)
            row[f"{head} runs"] = len(g)
        rows.append(row)
    return rows


def main() -> int:
    return common.s_table_main(__doc__, "s_table5_activation", activation_rows,
                               title="S Table 5: average test accuracy by projector activation")

if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
