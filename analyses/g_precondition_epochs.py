"""Paper G Fig. 1's precondition over training: does h without a projection head collapse?

G Fig. 1 reads "tightly clustered" features with no head against features "spread across
the whole space" with an MLP head. That presupposes training long enough for the no-head
model's h to contract. This script trains (or reuses) the no-head and MLP-head runs of
the scale (``--scale cpu-long``: 30 epochs, every 5th epoch saved) and measures, on the
test split at every saved epoch, the RankMe (effective rank) of h and the within-class
share of the variance of the L2-normalised h (as G Fig. 1's measures). Mean ± std over
seeds, and the paired difference MLP − none per epoch.

    OMP_NUM_THREADS=1 python analyses/g_precondition_epochs.py --scale cpu-long
"""

from __future__ import annotations

import re

import common
import outputs

KINDS = ("none", "mlp")


def epoch_checkpoints(folder) -> dict[int, object]:
    """The saved ``checkpoints/epoch_NNN.pt`` of a run folder, by epoch."""
    out = {}
    for p in sorted((folder / "checkpoints").glob("epoch_*.pt")):
        m = re.fullmatch(r"epoch_(\d+)\.pt", p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def measure(ctx: common.Context, checkpoint) -> dict:
    """RankMe of h and the within-class share of the L2-normalised h on the test split."""
    from g_fig1_tsne import within_class_share

    from repdiag.diagnostics import rank

    test = common.source(ctx, checkpoint).get("test")
    return {"rankme_h": float(rank(test.h).effective_rank),
            "within_class_share": within_class_share(test.h, test.y)}


def main() -> int:
    import pandas as pd

    ctx = common.cli_context(__doc__)
    folders = {}
    for seed in ctx.seeds:  # seed-major, so a stopped job leaves both heads of its first seeds
        for kind in KINDS:
            folders[kind, seed] = common.ensure_run(ctx, "g", kind, common.g_head(ctx, kind), seed)
    values: dict[tuple[str, int], dict[int, dict]] = {}
    for (kind, seed), folder in folders.items():
        values[kind, seed] = {ep: measure(ctx, ck) for ep, ck in epoch_checkpoints(folder).items()}
        outputs.log(f"measured {kind} seed {seed} at epochs {sorted(values[kind, seed])}")
    epochs = sorted(set.intersection(*(set(v) for v in values.values())))
    rows = []
    for ep in epochs:
        row = {"epoch": ep}
        for kind in KINDS:
            ms = [values[kind, s][ep] for s in ctx.seeds]
            row[f"RankMe h, {kind}"] = "{:.1f} ± {:.1f}".format(
                *outputs.mean_spread([m["rankme_h"] for m in ms]))
            row[f"within-class %, {kind}"] = outputs.pm([m["within_class_share"] for m in ms])
        row["RankMe mlp − none"] = "{:+.1f} ± {:.1f}".format(*outputs.mean_spread(
            [values["mlp", s][ep]["rankme_h"] - values["none", s][ep]["rankme_h"] for s in ctx.seeds]))
        row["within-class mlp − none (pt)"] = outputs.pm(
            [values["mlp", s][ep]["within_class_share"] - values["none", s][ep]["within_class_share"]
             for s in ctx.seeds], signed=True)
        rows.append(row)
    raw = {f"{kind}-s{seed}": {str(ep): m for ep, m in v.items()} for (kind, seed), v in values.items()}
    outputs.write_table(
        ctx, "g_precondition_epochs", pd.DataFrame(rows),
        title="G Fig. 1's precondition over training: RankMe and within-class share of h, "
              "no head vs MLP head (test split)",
        notes=["RankMe = exp(entropy of the normalised singular values) of h (m = 64 at this "
               "width); within-class share = tr(S_within)/tr(S_total) of the L2-normalised h "
               "(lower = tighter class clusters). Mean ± std over seeds; differences paired by "
               "seed. Epoch 0 is the untrained backbone (the same for both heads of a seed)."],
        measures=raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
