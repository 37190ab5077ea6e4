"""Paper G Table 1: the bilevel scheme ("Ours", eq. 8) against joint SimCLR, a fixed random
MLP head and DirectCLR, on kNN (k = 200) and linear evaluation of h.

G's claim: the bilevel scheme beats standard SimCLR on both evaluations (by ~1 pt
kNN on CIFAR-10, ~2 pt on CIFAR-100 and TinyImageNet), and beats the fixed random
head and DirectCLR. MLP head (G: 2048 -> 512 -> 128; scaled at cpu scale), bilevel
with 5 inner Adam steps at the outer learning rate (G §5), λ = 1. Mean ± std over
seeds, with the paired per-seed difference to SimCLR.

    python analyses/g_table1_bilevel.py --scale cpu
"""

from __future__ import annotations

import common
import outputs


def methods(ctx: common.Context) -> list:
    """(label, run name, overrides) of Table 1's rows."""
    mlp = common.g_head(ctx, "mlp")
    return [
        ("SimCLR", "mlp", mlp),
        ("Random Proj.", "mlp-fixed-random", mlp + ["scheme.kind=fixed", "head.init=glorot"]),
        ("DirectCLR", "directclr", ["head.kind=directclr"]),
        ("Ours (bilevel)", "mlp-bilevel", mlp + ["scheme.kind=bilevel"]),
    ]


def main() -> int:
    ctx = common.cli_context(__doc__)
    df, raw, training = common.method_table(ctx, "g", methods(ctx), reference="SimCLR")
    outputs.write_table(ctx, "g_table1_bilevel", df,
                       title="G Table 1: bilevel vs SimCLR, fixed random head, DirectCLR "
                             "(test accuracy on h, mean ± std over seeds)",
                       notes=[f"Linear probe preset `{ctx.scale.linear_preset}`; kNN k = {common.KNN['k']}. "
                              "Differences are paired by seed (same initialisation and data order)."],
                       accuracy=raw, training=training)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
