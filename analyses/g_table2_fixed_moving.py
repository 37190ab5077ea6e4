"""Paper G Table 2: fixed, moving and trainable *linear* heads, kNN (k = 200) on h.

G's claims (TinyImageNet, ResNet-50): both trainable heads (SimCLR, Ours) beat every
fixed and slow-moving head; every head beats no head; DirectCLR ≈ the fixed random
head; a pre-trained fixed head is no better than a random one. Rows: no head; fixed
random (Glorot), DirectCLR (z = h[:d0]), the final head of this seed's SimCLR linear
run frozen; PCA top-k / bottom-k refitted each epoch; slow-single and slow-optimal;
joint SimCLR and the bilevel scheme. k = the head's output size. Mean ± std over
seeds with the paired difference to SimCLR.

    python analyses/g_table2_fixed_moving.py --scale cpu
    python analyses/g_table2_fixed_moving.py --scale cpu-long --rows none,linear-fixed-random,directclr,linear

``--rows`` keeps only the named runs (a comma list of run names; SimCLR's ``linear`` row,
the reference of the differences, is required): the long scale trains the rows its claims
need, not all ten.
"""

from __future__ import annotations

import common
import outputs

from repdiag.errors import UserError

REFERENCE = "Trainable: SimCLR"


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


def select_rows(rows: list, names: str | None) -> list:
    """The rows of ``rows`` whose run name is in the comma list ``names`` (all when None);
    a one-line error names an unknown run or a missing reference row."""
    if names is None:
        return rows
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [name for _, name, _ in rows]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UserError(f"--rows: unknown run {unknown[0]!r}; valid: {', '.join(known)}")
    ref = next(name for label, name, _ in rows if label == REFERENCE)
    if ref not in wanted:
        raise UserError(f"--rows must include {ref!r} (the differences are taken to it)")
    return [r for r in rows if r[1] in wanted]


def main() -> int:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--rows", help="comma list of run names to keep (default: every row)")
    args = ap.parse_args()
    ctx = common.context(args)
    rows = select_rows(methods(ctx), args.rows)
    df, raw, training = common.method_table(ctx, "g", rows, reference=REFERENCE, probes=("knn",))
    outputs.write_table(ctx, "g_table2_fixed_moving", df,
                       title="G Table 2: fixed, moving and trainable linear heads "
                             "(kNN test accuracy on h, mean ± std over seeds)",
                       notes=["kNN k = 200, cosine, T = 0.5; differences paired by seed."],
                       accuracy=raw, training=training)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
