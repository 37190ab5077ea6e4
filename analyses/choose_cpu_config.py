"""Choose the cpu scale's Adam learning rate and temperature on held-out *training* images.

The cpu scale trains G's MLP-head SimCLR run for 3 epochs on 6,000 Fashion-MNIST
training images. This script trains that run over a small grid (lr x T, seeds 0 and 1
by default; the grid point equal to the scale's own setting reuses the shared ``g/mlp``
runs) and scores kNN(h) (k = 200, cosine, T = 0.5, G's protocol) with a bank and
queries drawn, class-stratified, from the training images that no run of the grid
trained on. The test split is never read. The chosen configuration is the grid point
with the highest mean accuracy over the seeds.

    OMP_NUM_THREADS=1 python analyses/choose_cpu_config.py --scale cpu
"""

from __future__ import annotations

import sys

import common
import outputs
import torch

LRS = (1e-3, 3e-3, 1e-2)
TEMPERATURES = (0.2, 0.5)
SELECT_SEED = 20261201  # seeds the stratified draw of the bank and the queries


def grid_overrides(ctx: common.Context, lr: float, temperature: float) -> tuple[str, list[str]]:
    """Run name and overrides of the scale's G MLP-head run with this lr and temperature; the
    scale's own setting keeps the name ``mlp`` (the run the G figures share)."""
    base = common.run_config(ctx, "g", "mlp", common.g_head(ctx, "mlp"), 0)
    own = abs(base.optim.lr - lr) < 1e-12 and abs(base.temperature - temperature) < 1e-12
    name = "mlp" if own else f"mlp-lr{lr:g}-T{temperature:g}"
    return name, common.g_head(ctx, "mlp") + [f"optim.lr={lr:g}", f"temperature={temperature:g}"]


def full_train_split(ctx: common.Context):
    """The whole training split the runs draw their ``data_limit`` images from (never the
    test split: only ``.train`` of the loaded dataset is kept)."""
    from repdiag.data import dataset_kwargs, load_dataset

    cfg = common.run_config(ctx, "g", "mlp", common.g_head(ctx, "mlp"), ctx.seeds[0])
    if cfg.val_fraction:
        raise common.UserError("the held-out set is carved from the training split as the runs "
                               f"see it: needs val_fraction=0, the scale has {cfg.val_fraction}")
    if cfg.data_limit is None:
        raise common.UserError(f"scale {ctx.scale.name} trains on the whole training split "
                               "(data_limit=null): no training image is left to hold out")
    train = load_dataset(cfg.data, root=cfg.data_root, **dataset_kwargs(cfg.to_dict())).train
    for seed in ctx.seeds[1:]:  # the limit subsets of all seeds index one and the same split
        other = common.run_config(ctx, "g", "mlp", common.g_head(ctx, "mlp"), seed)
        again = load_dataset(other.data, root=other.data_root, **dataset_kwargs(other.to_dict())).train
        if not torch.equal(again.images, train.images):
            raise common.UserError(f"dataset {cfg.data!r}'s training split depends on the seed: "
                                   "choose with one seed (--seeds)")
    return train, cfg.data_limit


def training_indices(labels: torch.Tensor, limit: int, seeds: tuple[int, ...]) -> torch.Tensor:
    """Indices (into the training split) of the images a run with any of ``seeds`` trains on:
    ``load_dataset``'s ``limit`` subset (``repdiag.data.splits.apply_limit``) per seed, united."""
    from repdiag.data.splits import _SALT_LIMIT, generator, stratified_partition

    if len(labels) <= limit:
        return torch.arange(len(labels))
    parts = [stratified_partition(labels, [limit], generator(s, _SALT_LIMIT))[0] for s in seeds]
    return torch.unique(torch.cat(parts))


def heldout_indices(labels: torch.Tensor, exclude: torch.Tensor, n_queries: int, n_bank: int,
                    seed: int = SELECT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint class-stratified (queries, bank) index sets from the indices not in ``exclude``."""
    from repdiag.data.splits import generator, stratified_partition

    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[exclude] = False
    pool = torch.nonzero(keep).flatten()
    if n_queries + n_bank > len(pool):
        raise common.UserError(f"--queries {n_queries} + --bank {n_bank} exceed the "
                               f"{len(pool)} training images no run trains on")
    q, b = stratified_partition(labels[pool], [n_queries, n_bank], generator(seed))
    return pool[q], pool[b]


def knn_h(checkpoint, images: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
          bank: torch.Tensor) -> float:
    """kNN(h) accuracy (G's preset: k = 200, cosine, T = 0.5) of the checkpoint's backbone,
    bank and queries given as indices into ``images``."""
    from repdiag.augment import eval_transform
    from repdiag.checkpoint import load_checkpoint
    from repdiag.diagnostics import knn_probe
    from repdiag.features import _normalization
    from repdiag.monitor import embed

    ck = load_checkpoint(checkpoint)
    mean, std = _normalization(ck, "auto")
    backbone, head = ck.build_backbone(), ck.build_head()
    h = {}
    for part, idx in (("bank", bank), ("queries", queries)):
        h[part] = embed(backbone, head, eval_transform(images[idx], mean=mean, std=std))[0]
    return float(knn_probe(h["bank"], labels[bank], h["queries"], labels[queries], preset="g").accuracy)


def choose(rows: list[dict]) -> dict:
    """The row with the highest mean accuracy over seeds (the first one on a tie)."""
    return max(rows, key=lambda r: r["mean"])


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=5000, help="held-out query images (default 5000)")
    ap.add_argument("--bank", type=int, default=10000, help="held-out kNN bank images (default 10000)")
    args = ap.parse_args(argv)
    if args.seeds is None:
        args.seeds = "0,1"
    ctx = common.context(args)
    if args.queries < 1 or args.bank < 1:
        raise common.UserError("--queries and --bank must be positive")
    train, limit = full_train_split(ctx)
    used = training_indices(train.labels, limit, ctx.seeds)
    queries, bank = heldout_indices(train.labels, used, args.queries, args.bank)
    outputs.log(f"held out {len(queries)} queries and {len(bank)} bank images of the "
               f"{len(train)} training images ({len(used)} trained on by seeds {ctx.seeds})")
    rows = []
    for lr in LRS:
        for temp in TEMPERATURES:
            name, overrides = grid_overrides(ctx, lr, temp)
            accs = []
            for seed in ctx.seeds:
                folder = common.ensure_run(ctx, "g", name, overrides, seed)
                accs.append(knn_h(common.last(folder), train.images, train.labels, queries, bank))
                outputs.log(f"lr {lr:g}, T {temp:g}, seed {seed}: kNN(h) {100 * accs[-1]:.2f} %")
            rows.append({"lr": lr, "temperature": temp, "run": name, "per_seed": accs,
                         "mean": sum(accs) / len(accs)})
    best = choose(rows)
    table = pd.DataFrame([{"Adam lr": f"{r['lr']:g}", "T (loss)": f"{r['temperature']:g}",
                           **{f"kNN(h) seed {s} (%)": round(100 * a, 2)
                              for s, a in zip(ctx.seeds, r["per_seed"], strict=True)},
                           "mean (%)": round(100 * r["mean"], 2),
                           "chosen": "yes" if r is best else ""} for r in rows])
    cfg = common.run_config(ctx, "g", "mlp", common.g_head(ctx, "mlp"), 0)
    outputs.write_table(
        ctx, "choose_cpu_config", table,
        title="Choosing the cpu scale's Adam lr and loss temperature on held-out training images",
        notes=[f"G's MLP-head SimCLR run of scale `{ctx.scale.name}` ({cfg.epochs} epochs on "
               f"{limit} training images). kNN(h): k = 200, cosine, T = 0.5; bank {len(bank)} and "
               f"queries {len(queries)} images drawn class-stratified from the "
               f"{len(train) - len(used)} training images that none of the runs trained on. The "
               "test split is not read. Chosen: the highest mean over seeds.",
               f"Chosen: lr {best['lr']:g}, T {best['temperature']:g} (the scale uses lr "
               f"{cfg.optim.lr:g}, T {cfg.temperature:g})."],
        choice={"lr": best["lr"], "temperature": best["temperature"]},
        scale_setting={"lr": cfg.optim.lr, "temperature": cfg.temperature},
        grid=rows, heldout={"queries": len(queries), "bank": len(bank), "trained_on": len(used),
                            "select_seed": SELECT_SEED})
    print(f"chosen: lr {best['lr']:g}, T {best['temperature']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(common.main_guard(main))
