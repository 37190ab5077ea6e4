"""Paper G Table 2: fixed, moving and trainable *linear* heads, kNN (k = 200) on h.

G's claims (TinyImageNet, ResNet-50): both trainable heads (SimCLR, Ours) beat every
fixed and slow-moving head; every head beats no head; DirectCLR ≈ the fixed random
head; a pre-trained fixed head is no better than a random one. Rows: no head; fixed
random (Glorot), DirectCLR (z = h[:d0]), the final head of this seed's SimCLR linear
run frozen; PCA top-k / bottom-k refitted each epoch; slow-single and slow-optimal;
joint SimCLR and the bilevel scheme. k = the head's output size. Mean ± std over
seeds with the paired difference to SimCLR.

    python analyses/g_table2_fixed_moving.py --scale cpu
"""

from __future__ import annotations

import common
import outputs


def methods(ctx: common.Context) -> list:
    """(label, run name, overrides) of Table 2's rows."""
    lin = common.g_head(ctx, "linear")
    k = ctx.scale.g_out

    def pretrained(seed):  # the head SimCLR learned with this seed, frozen from the start
        folder = common.ensure_run(ctx, "g", "linear", lin, seed)
        return lin + ["scheme.kind=fixed", f"head.pretrained={common.last(folder)}"]

    return [
        ("No projection", "none", common.g_head(ctx, "none")),
        ("Fixed: random init", "linear-fixed-random", lin + ["scheme.kind=fixed", "head.init=glorot"]),
        ("Fixed: DirectCLR", "directclr", ["head.kind=directclr"]),
        ("Fixed: pre-trained SimCLR", "linear-fixed-pretrained", pretrained),
        (f"Moving: PCA top-{k}", "linear-pca-top", lin + ["scheme.kind=pca-top"]),
        (f"Moving: PCA bottom-{k}", "linear-pca-bottom", lin + ["scheme.kind=pca-bottom"]),
        ("Moving: slow-single", "linear-slow-single", lin + ["scheme.kind=slow-single"]),
        ("Moving: slow-optimal", "linear-slow-optimal", lin + ["scheme.kind=slow-optimal"]),
        ("Trainable: SimCLR", "linear", lin),
        ("Trainable: Ours (bilevel)", "linear-bilevel", lin + ["scheme.kind=bilevel"]),
    ]


def main() -> int:
    ctx = common.cli_context(__doc__)
    df, raw = common.method_table(ctx, "g", methods(ctx), reference="Trainable: SimCLR",
                                  probes=("knn",))
    outputs.write_table(ctx, "g_table2_fixed_moving", df,
                       title="G Table 2: fixed, moving and trainable linear heads "
                             "(kNN test accuracy on h, mean ± std over seeds)",
                       notes=["kNN k = 200, cosine, T = 0.5; differences paired by seed."],
                       accuracy=raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
