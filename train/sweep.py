"""``repdiag sweep GRID.yaml --out DIR``: a grid of training runs, resumable, summarised.

A grid file::

    base: s-cifar10              # preset name or YAML path (relative to the grid file)
    set:                         # fixed overrides for every run (list of key=value, or a mapping)
      - epochs=150
    grid:                        # dotted key -> list of values; the Cartesian product is run
      head.kind: [ae, mlp]
      head.hidden_dim: [128, 256, 512]
      head.activation: [relu, sigmoid]
    seeds: [0, 1, 2]             # optional; default: the base config's seed

Runs are expanded in a fixed order (grid keys in file order, values in list
order, seeds innermost) and each gets its own folder ``DIR/<name>``, named from
the varying keys and the seed (``head.kind-ae__head.hidden_dim-128__seed-0``;
unsafe characters become ``_``; long or clashing names get a short hash of
the overrides). Runs are trained one after the other. A folder whose
``last.pt`` has reached the run's epochs is skipped; one with an earlier
``last.pt`` is resumed; so a sweep stopped at any point and started again
finishes the grid without redoing finished runs. A folder whose stored config
differs from the grid's (other than ``epochs``) is refused.

Outputs (written atomically after every run):

- ``DIR/results.csv``: one row per run: ``run``, the varying keys, ``seed``,
  ``status``, ``epochs``, ``seconds`` (sum over epochs) and the final epoch's
  metrics (``loss``, ``knn_val`` when the run computed it, any other number
  logged in the last ``metrics.jsonl`` line), plus the test accuracies of the
  grid's ``probes`` (default ``[knn]``; e.g. ``[knn, "linear:s"]``) on h and z,
  as ``knn_g_h``, ``knn_g_z``, ... (cached beside the checkpoint as ``eval-*.json``), measured
  on the run's ``checkpoint`` column: the grid's ``checkpoint`` (``best``: the
  lowest validation contrastive loss, paper S; ``last``) or, if the grid names
  none, each run's own ``select``.
- ``DIR/summary.csv``: one row per configuration (runs differing only in the
  seed), with ``n_seeds`` and, for each metric, the statistics paper S reports:
  ``_min``, ``_max``, ``_mean``, ``_range`` (max - min), ``_iqr`` (75th - 25th
  percentile, linear interpolation as numpy's default) and ``_std`` (sample
  standard deviation, ddof=1; empty for a single seed).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repdiag.data.paths import remove_empty_folders
from repdiag.errors import UserError
from repdiag.files import atomic_write_text
from repdiag.runs import SELECT, RunLock, in_claimed_folder, run_checkpoint
from train.config import MAX_SEED, TrainConfig, load_config
from train.output import checked
from train.runstore import cached_evaluation, ensure_run
from train.yaml_data import load_yaml, read_yaml_file

GRID_KEYS = ("base", "set", "grid", "seeds", "probes", "checkpoint")
PROBE_KINDS = ("knn", "linear")
BOOKKEEPING = ("epoch", "lr", "seconds", "images_per_s")
STATS = ("min", "max", "mean", "range", "iqr", "std")
MAX_NAME = 100


@dataclass
class SweepRun:
    """One point of the grid: its folder name, varying values, seed and config."""

    name: str
    values: dict
    seed: int
    overrides: list[str]
    config: TrainConfig = field(repr=False)


@dataclass
class Grid:
    base: str
    fixed: list[str]
    grid: dict
    seeds: list[int] | None
    probes: list[str] = field(default_factory=lambda: ["knn"])
    checkpoint: str | None = None  # best | last; None: each run's own ``select``


def _as_override_value(value) -> str:
    """A YAML scalar as the text ``--set`` parses back to the same value."""
    if isinstance(value, str):
        try:
            same = load_yaml(value, "grid value") == value
        except UserError:
            same = False
        return value if same else json.dumps(value)
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise UserError(f"grid values must be scalars (numbers, strings, true/false, null), "
                    f"got {value!r}")


def read_grid(path: str | os.PathLike) -> Grid:
    """Parse and check a grid file; every problem is a one-line UserError."""
    path = Path(path)
    tree = read_yaml_file(path, "grid file")
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(map(str, tree)) - set(GRID_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown grid key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(GRID_KEYS)}")
    base = tree.get("base")
    if not isinstance(base, str) or not base:
        raise UserError(f"{path}: 'base' must name a preset or a YAML config file")
    base_path = path.parent / base
    if base.endswith((".yaml", ".yml")) and base_path.exists():
        base = str(base_path)
    fixed_raw = tree.get("set") or []
    if isinstance(fixed_raw, dict):
        fixed = [f"{k}={_as_override_value(v)}" for k, v in fixed_raw.items()]
    elif isinstance(fixed_raw, list) and all(isinstance(s, str) and "=" in s for s in fixed_raw):
        fixed = list(fixed_raw)
    else:
        raise UserError(f"{path}: 'set' must be a list of key=value strings or a mapping")
    grid_raw = tree.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise UserError(f"{path}: 'grid' must map dotted config keys to lists of values")
    grid = {}
    for key, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid key '{key}' needs a non-empty list of values")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise UserError(f"{path}: grid key '{key}' lists a value twice")
        if str(key) == "seed":
            raise UserError(f"{path}: give seeds with the top-level 'seeds' list, not grid.seed")
        grid[str(key)] = values
    seeds = tree.get("seeds")
    if seeds is not None:
        if (not isinstance(seeds, list) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
                or len(set(seeds)) != len(seeds)):
            raise UserError(f"{path}: 'seeds' must be a non-empty list of distinct integers")
        bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
        if bad:
            raise UserError(f"{path}: seeds must be integers in 0..2^63-1, got {bad[0]}")
    probes = tree.get("probes", ["knn"])
    if probes is None:
        probes = []
    if not isinstance(probes, list) or any(
            not isinstance(p, str) or p.partition(":")[0] not in PROBE_KINDS for p in probes):
        raise UserError(f"{path}: 'probes' must be a list of knn, linear or PROBE:PRESET "
                        "(e.g. linear:s); [] turns them off")
    checkpoint = tree.get("checkpoint")
    if checkpoint is not None and checkpoint not in SELECT:
        raise UserError(f"{path}: 'checkpoint' must be best (lowest validation loss) or last, "
                        f"got {checkpoint!r}")
    return Grid(base=base, fixed=fixed, grid=grid, seeds=seeds, probes=probes,
                checkpoint=checkpoint)


def probe_accuracies(run_dir: Path, probes: list[str], select: str = "last") -> dict:
    """Test accuracies of h and z for each probe of a finished run, cached beside the checkpoint.

    Columns are named ``{probe}_{preset}_{h|z}`` (e.g. ``knn_g_h``); the probe's
    training set is the run's train split, nothing is selected on test. The
    probed checkpoint is ``best.pt`` or ``last.pt`` (``select``, see :mod:`repdiag.runs`);
    each probe's result is cached by :func:`train.runstore.cached_evaluation`.
    """
    if not probes:
        return {}
    from repdiag.diagnose import probe_report
    from repdiag.features import FeatureSource

    ckpt = run_checkpoint(run_dir, select)
    source = functools.cache(lambda: FeatureSource(ckpt))  # extracted once, if any probe runs
    out = {"checkpoint": ckpt.name}
    for spec in probes:
        kind, _, preset = spec.partition(":")
        preset = preset or {"knn": "g", "linear": "fast"}[kind]

        def measure(kind=kind, preset=preset):
            return {"accuracy": probe_report(source(), kind, ("h", "z"), preset=preset)["accuracy"]}

        settings = [{"probe": kind, "preset": preset, "on": ["h", "z"], "v": 1}]
        acc = cached_evaluation(ckpt, settings, measure, check=_accuracies_of("h", "z"))["accuracy"]
        out.update({f"{kind}_{preset}_{f}": acc[f] for f in ("h", "z")})
    return out


def _accuracies_of(*features: str):
    """A check that a cached probe result holds a number for each of ``features``."""
    def check(cached: dict) -> bool:
        acc = cached.get("accuracy")
        return isinstance(acc, dict) and all(
            isinstance(acc.get(f), (int, float)) and not isinstance(acc.get(f), bool) for f in features)
    return check


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _digest(values: dict, seed: int) -> str:
    blob = json.dumps({"values": values, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def expand(grid: Grid) -> list[SweepRun]:
    """All runs of the grid, in a deterministic order, each with a validated config."""
    keys = list(grid.grid)
    combos = list(itertools.product(*(grid.grid[k] for k in keys))) or [()]
    runs: list[SweepRun] = []
    for combo in combos:
        values = dict(zip(keys, combo, strict=True))
        overrides = grid.fixed + [f"{k}={_as_override_value(v)}" for k, v in values.items()]
        for seed in grid.seeds if grid.seeds is not None else [None]:
            extra = [f"seed={seed}"] if seed is not None else []
            try:
                cfg = load_config(grid.base, overrides + extra)
            except UserError as e:
                point = ", ".join(f"{k}={v}" for k, v in values.items()) or "the base config"
                raise UserError(f"grid point {point}: {e}") from None
            parts = [f"{k}-{_safe(str(v))}" for k, v in values.items()] + [f"seed-{cfg.seed}"]
            name = "__".join(parts)
            if len(name) > MAX_NAME:
                name = name[:MAX_NAME - 9] + "_" + _digest(values, cfg.seed)
            runs.append(SweepRun(name, values, cfg.seed, overrides + extra, cfg))
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:  # names that clash after sanitising get a hash of their exact values
        if counts[r.name] > 1:
            r.name = f"{r.name[:MAX_NAME - 9]}_{_digest(r.values, r.seed)}"
    return runs


def run_sweep(grid_path: str | os.PathLike, out_dir: str | os.PathLike, *,
              quiet: bool = False) -> dict:
    """Run (or finish) every run of the grid; write results.csv and summary.csv.

    The sweep folder is locked for the whole sweep and each run folder while its
    run is trained and probed (:class:`repdiag.runs.RunLock`): a second sweep or
    trainer on either is refused in one line. A sweep that fails before its first
    results.csv leaves no folder or file it created.
    """
    grid = read_grid(grid_path)
    runs = expand(grid)
    out = Path(out_dir)
    return in_claimed_folder(out, lambda written: _run_locked(grid, runs, out, quiet, written),
                             keep=(out / "results.csv").exists)  # else: leave nothing behind


def _run_locked(grid: Grid, runs: list[SweepRun], out: Path, quiet: bool,
                written: list[Path]) -> dict:
    grid_file = out / "grid.yaml"
    text = yaml.safe_dump({"base": grid.base, "set": grid.fixed, "grid": grid.grid,
                           "seeds": grid.seeds, "probes": grid.probes,
                           "checkpoint": grid.checkpoint}, sort_keys=False)
    if not grid_file.exists():
        written.append(grid_file)
    checked(grid_file, lambda: atomic_write_text(grid_file, text))
    rows: list[dict] = []
    counts = {"finished": 0, "resumed": 0, "started": 0, "skipped": 0}
    for i, run in enumerate(runs, 1):
        run_dir = out / run.name
        lock = RunLock(run_dir)

        def starting(state, i=i, run=run):
            counts["resumed" if state is not None else "started"] += 1
            if not quiet:
                what = f"resuming at epoch {state.epoch}" if state is not None else "starting"
                print(f"[{i}/{len(runs)}] {run.name}: {what}", flush=True)

        try:
            done = ensure_run(run.config, run_dir, quiet=quiet, before_training=starting,
                              keep_diverged=True, lock=lock)
            status = done.status
            if done.action == "reused":
                counts["skipped"] += 1
            counts["finished"] += status == "finished"
            if not quiet:
                action = "done already" if done.action == "reused" else status
                print(f"[{i}/{len(runs)}] {run.name}: {action}", flush=True)
            row = _row(run, run_dir, done.run.metrics if done.run else [], status)
            if status == "finished":
                row.update(probe_accuracies(run_dir, grid.probes,
                                            grid.checkpoint or run.config.select))
        finally:
            lock.release()
            if not (run_dir / "last.pt").exists():  # diverged in its first epoch: no folder
                remove_empty_folders([p for p in (run_dir / "checkpoints", run_dir) if p.exists()])
        rows.append(row)
        write_tables(rows, list(grid.grid), out)
    return {"out": str(out), "runs": len(runs), **counts,
            "results": str(out / "results.csv"), "summary": str(out / "summary.csv")}


def _row(run: SweepRun, run_dir: Path, metrics: list, status: str) -> dict:
    row = {"run": run.name, **run.values, "seed": run.seed, "status": status,
           "epochs": metrics[-1]["epoch"] if metrics else 0,
           "seconds": float(sum(m.get("seconds", 0.0) for m in metrics))}
    final = metrics[-1] if metrics else {}
    for k, v in final.items():
        if k not in BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool):
            row[k] = float(v)
    row["folder"] = str(run_dir)
    return row


def metric_columns(results, keys: list[str]) -> list[str]:
    fixed = set(keys) | {"run", "seed", "status", "epochs", "seconds", "folder", "checkpoint"}
    return [c for c in results.columns if c not in fixed]


def summarize(results, keys: list[str]):
    """Per configuration (grouping over seeds): n_seeds and S's statistics of each metric."""
    import numpy as np
    import pandas as pd

    metrics = metric_columns(results, keys)
    groups = results.groupby(keys, sort=False, dropna=False) if keys else [((), results)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        row["n_seeds"] = len(g)
        for m in metrics:
            x = g[m].dropna().to_numpy(dtype=float)
            if len(x) == 0:
                stats = dict.fromkeys(STATS, float("nan"))
            else:
                q75, q25 = np.percentile(x, [75, 25])
                stats = {"min": x.min(), "max": x.max(), "mean": x.mean(),
                         "range": x.max() - x.min(), "iqr": q75 - q25,
                         "std": x.std(ddof=1) if len(x) > 1 else float("nan")}
            row.update({f"{m}_{s}": float(v) for s, v in stats.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(rows: list[dict], keys: list[str], out: Path) -> None:
    """results.csv (one row per run) and summary.csv (over seeds), each written atomically."""
    import pandas as pd

    results = pd.DataFrame(rows)
    for name, table in (("results.csv", results), ("summary.csv", summarize(results, keys))):
        text = table.to_csv(index=False)
        checked(out / name, lambda path=out / name, text=text: atomic_write_text(path, text))
