"""Paper S's projector grid: the configurations, their runs and their linear-probe scores.

S varies four factors of the projector (§3.5: activation, dim(g), dim(z), Z-score) for the
autoencoder-initialised head ("ae") and S's plain MLP baseline; :func:`s_grid` varies each
around a base configuration of the scale. Each configuration is trained (or reused) per seed
and scored by a linear probe on h, validation and test (:func:`s_evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import common
import outputs
from common import Context

S_ACTIVATIONS = ("relu", "silu", "sigmoid", "tanh")


@dataclass(frozen=True)
class SConfig:
    """One projector configuration of paper S (§3.5's four factors, the head kind, frozen)."""

    head: str  # "ae" (autoencoder embedding as first layer) or "mlp" (S's baseline, no BN)
    activation: str
    dim_g: int
    dim_z: int
    zscore: bool
    frozen: bool = True

    @property
    def name(self) -> str:
        return (f"{self.head}-{self.activation}-g{self.dim_g}-z{self.dim_z}-"
                f"{'zscore' if self.zscore else 'raw'}" + ("" if self.frozen else "-unfrozen"))

    def overrides(self) -> list[str]:
        ov = [f"head.kind={self.head}", f"head.hidden_dim={self.dim_g}", f"head.out_dim={self.dim_z}",
              f"head.activation={self.activation}", "head.batchnorm=false",
              f"augment.zscore={str(self.zscore).lower()}"]
        if self.head == "ae":
            ov.append(f"head.ae_frozen={str(self.frozen).lower()}")
        return ov


def s_grid(ctx: Context) -> list[SConfig]:
    """The projector grid: S's full factorial (144 configurations) is far beyond a CPU, so
    each factor is varied one at a time around a base configuration, crossed with Z-score
    on/off, for both heads: 2 x 2 x (1 + 3 activations + dims of g and z) configurations."""
    b = ctx.scale.s_base
    variants = [dict(b)]
    variants += [dict(b, activation=a) for a in S_ACTIVATIONS if a != b["activation"]]
    variants += [dict(b, dim_g=g) for g in ctx.scale.s_dim_g if g != b["dim_g"]]
    variants += [dict(b, dim_z=z) for z in ctx.scale.s_dim_z if z != b["dim_z"]]
    out = []
    for head in ("ae", "mlp"):
        for zscore in (False, True):
            for v in variants:
                out.append(SConfig(head, v["activation"], v["dim_g"], v["dim_z"], zscore))
    return out


def s_evaluate(ctx: Context, folder: Path) -> dict:
    """Linear probe on h (the scale's preset) trained on the train split, scored on the
    validation and the test split of S's 70/10/20 split (so a configuration can be chosen on
    validation and reported on test); cached beside the checkpoint."""
    from train.runstore import cached_evaluation

    ck = common.last(folder)
    settings = [ctx.scale.linear_preset, ctx.scale.eval_limit, "s-v1"]
    return cached_evaluation(ck, settings, lambda: _measure(ctx, ck), prefix="eval-s")


def _measure(ctx: Context, ck: Path) -> dict:
    from repdiag.diagnostics import linear_probe

    src = common.source(ctx, ck)
    tr, va, te = src.get("train"), src.get("val"), src.get("test")
    out = {}
    for split, fs in (("val", va), ("test", te)):
        res = linear_probe(tr.h, tr.y, fs.h, fs.y, preset=ctx.scale.linear_preset, seed=0)
        out[split] = float(res.accuracy)
    out["protocol"] = res.protocol
    return out


def s_results(ctx: Context, configs: list[SConfig] | None = None):
    """Train (or reuse) every configuration for every seed; one row per run (a DataFrame)."""
    import pandas as pd

    rows = []
    for c in configs if configs is not None else s_grid(ctx):
        for seed in ctx.seeds:
            folder = common.ensure_run(ctx, "s", c.name, c.overrides(), seed)
            acc = s_evaluate(ctx, folder)
            rows.append({"head": c.head, "activation": c.activation, "dim_g": c.dim_g, "dim_z": c.dim_z,
                         "zscore": c.zscore, "frozen": c.frozen, "seed": seed,
                         "val": 100 * acc["val"], "test": 100 * acc["test"], "run": c.name})
    return pd.DataFrame(rows)


def s_head_averages(part) -> dict:
    """Per projector in ``part`` (rows of ``s_results``): the average test accuracy over its
    runs (as S's Tables 4-5), the spread of that average over seeds (sample std of the
    per-seed averages, None for one seed) and the number of runs."""
    row = {}
    for head, g in part.groupby("head", sort=False):
        per_seed = g.groupby("seed")["test"].mean()
        row[f"{head} avg (%)"] = round(float(g["test"].mean()), 2)
        row[f"{head} ± seeds (pt)"] = round(float(per_seed.std(ddof=1)), 2) if len(per_seed) > 1 else None
        row[f"{head} runs"] = len(g)
    return row


def s_table_main(doc: str, name: str, build_rows, *, title: str, notes=()) -> int:
    """The body of an S grid table script: parse the options, train or reuse the grid's runs
    (frozen embeddings), turn them into rows with ``build_rows(df)`` and write the table.
    ``notes`` is a list of lines or a function of the Context returning one."""
    import pandas as pd

    ctx = common.cli_context(doc)
    df = s_results(ctx)
    df = df[df["frozen"]]
    outputs.write_table(ctx, name, pd.DataFrame(build_rows(df)), title=title,
                notes=list(notes(ctx) if callable(notes) else notes), runs=df.to_dict("records"))
    return 0
