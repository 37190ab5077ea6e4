"""What every analysis script shares: its command line and the runs and evaluations it uses.

The scale (:mod:`scales`) fixes the data, backbone and schedule of the runs behind papers G
and S. Runs live in ``runs/analyses/<scale>/<paper>/<name>-s<seed>/`` and are shared between
scripts (G Figs. 1-4 read the same none / linear / MLP runs): through the run store
(:mod:`train.runstore`) a finished run is reused, a stopped one resumed, and a folder holding
another configuration is refused. Probe results are cached beside each checkpoint
(``eval-*.json``, keyed by the checkpoint's digest and the probe settings). Outputs and their
sidecars: :mod:`outputs`; paper S's projector grid: :mod:`s_grid`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from outputs import ROOT, git_commit, log, pm
from scales import SCALE_TABLE, SCALES, Scale

from repdiag.devices import check_device
from repdiag.diagnostics.probes import DEFAULT_KNN_PRESET, KNN_PRESETS, PROBE_KINDS
from repdiag.errors import UserError


# --------------------------------------------------------------------------- command line
def parser(description: str) -> argparse.ArgumentParser:
    """The options every analysis script takes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--scale", choices=SCALES, default="cpu",
                    help="cpu: 2 CPU cores; cpu-long: cpu for 30 epochs; gpu: one GPU, the "
                         "papers' backbones; paper: the papers' data and schedules from "
                         "--data-root; smoke: seconds, generated data (for the tests)")
    ap.add_argument("--seeds", help="comma list of seeds (default: 0,1,2 at cpu/gpu scale, 0 at paper)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "analyses"),
                    help="root folder of the shared runs (default runs/analyses)")
    ap.add_argument("--out", default=str(ROOT / "figures"),
                    help="output root; files go to OUT/<scale>/ (default figures)")
    ap.add_argument("--data-root", help="folder holding the datasets (needed at --scale paper)")
    ap.add_argument("--device", default="auto", help="training device (auto: cuda if present)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch progress bars")
    ap.add_argument("--threads", type=int,
                    help="CPU threads for training and probes (default: torch's; the committed "
                         "cpu outputs use 1, as a run's numbers depend on the thread count)")
    return ap


@dataclass
class Context:
    """A parsed command line plus what the outputs need (start time, runs used)."""

    scale: Scale
    seeds: tuple[int, ...]
    runs: Path
    out: Path
    data_root: str | None
    device: str
    quiet: bool
    started: float = field(default_factory=time.time)
    configs: dict = field(default_factory=dict)
    # the checkout's commit when the command started, before it wrote any output of its own
    commit: str | None = field(default_factory=lambda: git_commit())


def context(args: argparse.Namespace) -> Context:
    """Validate the common options (before any work) and return the run context."""
    scale = SCALE_TABLE[args.scale]
    seeds = scale.seeds
    if args.seeds:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise UserError(f"--seeds takes a comma list of integers, got {args.seeds!r}") from None
    if args.scale == "paper" and not args.data_root:
        raise UserError("--scale paper trains on the papers' datasets: give --data-root DIR")
    if args.device != "auto":
        check_device(args.device, "--device")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads takes a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.scale == "gpu" and args.device == "auto" and not torch.cuda.is_available():
        print("[analyses] --scale gpu without a GPU: the runs will train on the CPU (slow)",
              file=sys.stderr)
    return Context(scale=scale, seeds=seeds, runs=Path(args.runs) / scale.name,
                   out=Path(args.out) / scale.name, data_root=args.data_root, device=args.device,
                   quiet=args.quiet)


def cli_context(doc: str) -> Context:
    """Parse a script's command line (the common options, described by the first line of
    ``doc``) and return its validated run context."""
    return context(parser(doc.splitlines()[0]).parse_args())


def main_guard(fn) -> int:
    """Run ``fn()``; a UserError becomes one line on stderr and exit code 2."""
    try:
        return fn() or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; rerun to resume", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- runs
def g_head(ctx: Context, kind: str) -> list[str]:
    """Overrides for one of G's heads at this scale: none, linear (m -> out), mlp (m -> hidden -> out)."""
    s = ctx.scale
    if kind == "none":
        return ["head.kind=none"]
    if kind == "linear":
        return ["head.kind=linear", f"head.out_dim={s.g_out}"]
    if kind == "mlp":
        return ["head.kind=mlp", f"head.hidden_dim={s.g_hidden}", f"head.out_dim={s.g_out}"]
    raise ValueError(kind)


def run_config(ctx: Context, paper: str, name: str, overrides: list[str], seed: int):
    """The TrainConfig of run ``name`` of paper ``paper`` ("g" or "s") with ``seed``."""
    from train.config import load_config

    s = ctx.scale
    preset, base = (s.g_preset, s.g_set) if paper == "g" else (s.s_preset, s.s_set)
    extra = [f"seed={seed}", f"name={paper}-{name}", f"device={ctx.device}"]
    if ctx.data_root:
        extra.append(f"data_root={ctx.data_root}")
    return load_config(preset, list(base) + list(overrides) + extra)


def ensure_run(ctx: Context, paper: str, name: str, overrides: list[str], seed: int,
               epoch_hooks=()) -> Path:
    """The folder of a finished run: trained now, resumed, or reused as it is
    (:func:`train.runstore.ensure_run`).

    A folder that holds a run with another configuration is refused (one line),
    never overwritten. ``epoch_hooks``: factories ``make(run_folder)`` returning a
    ``hook(trainer, epoch)`` that the trainer calls at epoch 0 and after each epoch,
    for a run trained or resumed now.
    """
    from train import runstore

    cfg = run_config(ctx, paper, name, overrides, seed)
    folder = ctx.runs / paper / f"{name}-s{seed}"
    started = []

    def starting(state):
        what = f"resuming at epoch {state.epoch}" if state is not None else "training"
        log(f"{paper}/{name} seed {seed}: {what} ({cfg.epochs} epochs) -> {folder}")
        started.append(time.time())

    done = runstore.ensure_run(cfg, folder, quiet=ctx.quiet, other="--runs",
                               epoch_hooks=[hook(folder) for hook in epoch_hooks],
                               before_training=starting)
    if done.action == "reused":
        log(f"{paper}/{name} seed {seed}: done already ({folder})")
        ctx.configs[f"{paper}/{name}-s{seed}"] = cfg.to_dict()
    else:
        log(f"{paper}/{name} seed {seed}: trained in {time.time() - started[0]:.0f} s")
        # the trainer writes the d0 / ae_checkpoint it used back into the config: record that
        ctx.configs[f"{paper}/{name}-s{seed}"] = done.run.config
    return folder


# --------------------------------------------------------------------------- evaluation
#: the kNN protocol :func:`evaluate` runs: repdiag's default preset, paper G's k = 200, cosine, T = 0.5
KNN = KNN_PRESETS[DEFAULT_KNN_PRESET]


def evaluate(ctx: Context, checkpoint: Path, *, probes: tuple[str, ...] = PROBE_KINDS,
             on: tuple[str, ...] | None = None, rank: bool = True, split_test: str = "test") -> dict:
    """Probe accuracies (kNN k=200 and linear, paper G §5) on h, h_r, h_n, z and ranks.

    Features of the whole training split form the probe's training set and the test
    split is scored (G's protocol); the linear probe is the scale's preset ("fast"
    L-BFGS at cpu scale, G's 200-epoch Adam otherwise). Cached beside the checkpoint.
    """
    from train.runstore import cached_evaluation

    settings = {"probes": list(probes), "on": list(on) if on else None, "rank": rank,
                "linear": ctx.scale.linear_preset, "limit": ctx.scale.eval_limit, "v": 1}
    return cached_evaluation(checkpoint, [settings],
                             lambda: _measure(ctx, checkpoint, probes, on, rank))


def _measure(ctx: Context, checkpoint: Path, probes: tuple[str, ...],
             on: tuple[str, ...] | None, rank: bool) -> dict:
    from repdiag.diagnose import probe_report, rank_report
    from repdiag.diagnostics import nullspace, probe_request

    t0 = time.time()
    src = source(ctx, checkpoint)
    test = src.get("test")
    has_split = test.weight is not None
    names = on or (("h", "h_r", "h_n", "z") if has_split and test.z is not None else ("h",))
    out: dict = {"checkpoint": str(checkpoint), "accuracy": {}}
    for probe in probes:
        rep = probe_report(src, probe_request(
            probe, ctx.scale.linear_preset if probe == "linear" else None), names)
        out["accuracy"][probe] = rep["accuracy"]
        out.setdefault("protocol", {})[probe] = rep["protocol"]
        if "undefined" in rep:
            out["undefined"] = rep["undefined"]
    if rank:
        out["rank"] = rank_report(src)
    if has_split and "h_n" in names:  # the split itself (G eq. 4); the probes above already ran
        ns = nullspace(test.h, test.weight)
        out["nullspace"] = {"head_rank": int(ns.head_rank), "energy_range": float(ns.energy_range),
                            "head_shape": list(test.weight.shape)}
    out["seconds"] = time.time() - t0
    return out


def source(ctx: Context, checkpoint: Path):
    """The FeatureSource of a checkpoint at this scale's evaluation limit."""
    from repdiag.features import FeatureSource

    return FeatureSource(checkpoint, limit=ctx.scale.eval_limit)


def epoch0(folder: Path) -> Path:
    """The untrained (epoch 0) checkpoint of a run folder."""
    return folder / "checkpoints" / "epoch_000.pt"


# --------------------------------------------------------------------------- paper G's head runs
G_HEADS = {"none": "no projection head", "linear": "linear head", "mlp": "non-linear (MLP) head"}


def g_head_runs(ctx: Context, seeds: tuple[int, ...] | None = None,
                epoch_hooks=()) -> dict[str, list[Path]]:
    """The none / linear / MLP runs of paper G Figs. 1-4 (shared by the four scripts).

    ``epoch_hooks``: factories ``make(run_folder) -> hook(trainer, epoch)`` for the
    runs trained now (see :func:`ensure_run`).
    """
    return {kind: [ensure_run(ctx, "g", kind, g_head(ctx, kind), seed, epoch_hooks)
                   for seed in (seeds if seeds is not None else ctx.seeds)]
            for kind in G_HEADS}


def last(folder: Path) -> Path:
    """The checkpoint that stands for a run (its config's ``select``: last.pt or best.pt)."""
    from repdiag.runs import run_checkpoint

    return run_checkpoint(folder)


def method_table(ctx: Context, paper: str, methods: list[tuple[str, str, list[str]]],
                 reference: str, probes: tuple[str, ...] = PROBE_KINDS):
    """Train (or reuse) each method's runs over the seeds and score h; a DataFrame, the raw
    per-seed accuracies ``{label: {probe: [...]}}`` and the runs' training record
    ``{label: {"epochs": [...], "last_epoch_loss_drop": [...]}}`` (:func:`training_record`).

    ``methods`` holds (label, run name, overrides); a callable in place of the overrides is
    called with the seed (for runs that depend on another run of the same seed). Each row
    gives mean ± std over seeds per probe and the paired difference to ``reference``'s row.
    """
    import pandas as pd

    raw: dict[str, dict[str, list[float]]] = {}
    training: dict[str, dict[str, list]] = {}
    for label, name, overrides in methods:
        accs = {p: [] for p in probes}
        record = {"epochs": [], "last_epoch_loss_drop": []}
        for seed in ctx.seeds:
            ov = overrides(seed) if callable(overrides) else overrides
            folder = ensure_run(ctx, paper, name, ov, seed)
            acc = evaluate(ctx, last(folder), probes=probes, on=("h",), rank=False)["accuracy"]
            for p in probes:
                accs[p].append(acc[p]["h"])
            for key, value in training_record(folder).items():
                record[key].append(value)
        raw[label] = accs
        training[label] = record
    rows = []
    for label, accs in raw.items():
        row = {"method": label}
        for p in probes:
            name = "kNN" if p == "knn" else "linear"
            row[f"{name} on h (%)"] = pm(accs[p])
            if label != reference:
                diffs = [a - b for a, b in zip(accs[p], raw[reference][p], strict=True)]
                row[f"{name} − {reference} (pt)"] = pm(diffs, signed=True)
            else:
                row[f"{name} − {reference} (pt)"] = "—"
            row[f"{name} per seed (%)"] = " ".join(f"{100 * a:.2f}" for a in accs[p])
        rows.append(row)
    return pd.DataFrame(rows), raw, training


def training_record(folder: Path) -> dict:
    """How far a run trained, from its metrics.jsonl: ``epochs`` (the last epoch logged) and
    ``last_epoch_loss_drop``, the relative fall of the training loss over the last epoch,
    (loss[-2] − loss[-1]) / loss[-2] (None with fewer than two epochs or no log)."""
    import json

    try:
        logged = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    except OSError:
        logged = []
    losses = [float(m["loss"]) for m in logged if "loss" in m]
    drop = (losses[-2] - losses[-1]) / losses[-2] if len(losses) >= 2 else None
    return {"epochs": int(logged[-1]["epoch"]) if logged else None, "last_epoch_loss_drop": drop}
