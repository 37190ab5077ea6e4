"""Paper S's projector grid: the configurations, their runs and their linear-probe scores.

S varies four factors of the projector (§3.5: activation, dim(g), dim(z), Z-score) for the
autoencoder-initialised head ("ae") and S's plain MLP baseline; :func:`s_grid` varies each
around a base configuration of the scale. Each configuration is trained (or reused) per seed
and scored by two linear probes on h (:data:`PROTOCOLS`): the scale's preset trained on the
train split and scored on validation and test (:func:`s_evaluate`), and S's own probe
(§3.6, preset ``s``) on the test split (:func:`s_probe_evaluate`).

Comparisons are like for like (:func:`at_base`, :func:`paired_change`): the grid varies one
factor at a time, so a factor's values are compared on the runs whose other factors sit at
the base, paired by seed and Z-score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import common
import outputs
from common import Context
from s_pairs import S_VARIED, at_base, paired_change  # noqa: F401 (re-exported)

S_ACTIVATIONS = ("relu", "silu", "sigmoid", "tanh")
#: the test-accuracy columns of :func:`s_results`, one per probe protocol, and their labels
PROTOCOLS = {
    "test": "fast: L-BFGS probe trained on the train split, scored on the test split",
    "test_s": ("s (paper S §3.6): SGD probe trained on 70 % of the test split's features, "
               "scored on its last 20 %"),
}
PROTOCOL_NAMES = {"test": "fast", "test_s": "s (S's probe)"}


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


def s_probe_evaluate(ctx: Context, folder: Path) -> dict:
    """Paper S's own probe (§3.6, preset ``s``) on h of the run's test split: trained on 70 %
    of the test features, the weights of the best loss on the next 10 %, accuracy on the last
    20 % (one permutation, seed 0: the runs of one seed share their test images, so paired
    comparisons score the same images); cached beside the checkpoint."""
    from train.runstore import cached_evaluation

    ck = common.last(folder)
    return cached_evaluation(ck, ["linear:s", ctx.scale.eval_limit, "s-probe-v1"],
                             lambda: _measure_s(ctx, ck), prefix="eval-sprobe")


def _measure_s(ctx: Context, ck: Path) -> dict:
    from repdiag.diagnostics import linear_probe

    te = common.source(ctx, ck).get("test")
    res = linear_probe(None, None, te.h, te.y, preset="s", seed=0)
    return {"test": float(res.accuracy), "protocol": res.protocol}


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
            acc_s = s_probe_evaluate(ctx, folder)
            rows.append({"head": c.head, "activation": c.activation, "dim_g": c.dim_g, "dim_z": c.dim_z,
                         "zscore": c.zscore, "frozen": c.frozen, "seed": seed,
                         "val": 100 * acc["val"], "test": 100 * acc["test"],
                         "test_s": 100 * acc_s["test"], "run": c.name})
    return pd.DataFrame(rows)


def pm_points(values: list[float]) -> str:
    """'mean ± SD (k/n)' of per-seed differences in points: k = the seeds above 0."""
    if not values:
        return "—"
    m, s = outputs.mean_spread(values)
    spread = f" ± {s:.2f}" if len(values) > 1 else ""
    return f"{m:+.2f}{spread} ({sum(v > 0 for v in values)}/{len(values)})"


def s_head_averages(part, col: str = "test") -> dict:
    """Per projector in ``part`` (rows of ``s_results``): the average of ``col`` over its
    runs (as S's Tables 4-5), the spread of that average over seeds (sample std of the
    per-seed averages, None for one seed) and the number of runs."""
    row = {}
    for head, g in part.groupby("head", sort=False):
        per_seed = g.groupby("seed")[col].mean()
        row[f"{head} avg (%)"] = round(float(g[col].mean()), 2)
        row[f"{head} ± seeds (pt)"] = round(float(per_seed.std(ddof=1)), 2) if len(per_seed) > 1 else None
        row[f"{head} runs"] = len(g)
    return row


def factor_row(part, factor: str, value, base_value, col: str = "test") -> dict:
    """One row of S Tables 4-5 for ``factor`` = ``value`` within the like-for-like slice
    ``part``: per projector the averages (:func:`s_head_averages`) and the paired change from
    ``base_value`` ('—' at the base), then ae − mlp paired by seed and Z-score."""
    cell = part[part[factor] == value]
    row = s_head_averages(cell, col)
    for head in cell["head"].unique():
        row[f"{head} Δ vs base (pt)"] = "—" if value == base_value else _paired_text(
            part, {"head": head, factor: value}, {"head": head, factor: base_value}, col)
    row["ae − mlp (pt)"] = _paired_text(cell, {"head": "ae"}, {"head": "mlp"}, col)
    return row


def _paired_text(df, sel_a: dict, sel_b: dict, col: str) -> str:
    try:
        return pm_points(paired_change(df, sel_a, sel_b, col))
    except KeyError:  # no run on one side: nothing to pair
        return "—"


def s_table_main(doc: str, name: str, build_rows, *, title: str, notes=()) -> int:
    """The body of an S grid table script: parse the options, train or reuse the grid's runs
    (frozen embeddings), turn them into rows with ``build_rows(df, base, col)`` once per probe
    protocol (``col``, a key of :data:`PROTOCOLS`; ``base`` the scale's base configuration)
    and write the table, a ``probe`` column first. ``notes`` is a list of lines or a function
    of the Context returning one."""
    import pandas as pd

    ctx = common.cli_context(doc)
    df = s_results(ctx)
    df = df[df["frozen"]]
    rows = []
    for col in PROTOCOLS:
        rows += [{"probe": PROTOCOL_NAMES[col], **r} for r in build_rows(df, ctx.scale.s_base, col)]
    notes = list(notes(ctx) if callable(notes) else notes)
    notes += [f"Probe {PROTOCOL_NAMES[c]}: {PROTOCOLS[c]}." for c in PROTOCOLS]
    outputs.write_table(ctx, name, pd.DataFrame(rows), title=title,
                notes=notes, runs=df.to_dict("records"))
    return 0
