"""What every analysis script shares: scales, shared and resumed runs, cached evaluations, outputs.

A *scale* fixes the data, backbone and schedule of the runs behind papers G and S:

- ``cpu``: Fashion-MNIST (28 px), ResNet-18 at width 1/8 (m = 64), 3 epochs on 6,000
  images: the whole set runs on 2 CPU cores (times in figures/README.md);
- ``gpu``: Fashion-MNIST with the papers' backbones (ResNet-50 for G, ResNet-34 for S),
  all 54,000 training images, 10 epochs, on one GPU;
- ``paper``: the papers' datasets, backbones and schedules (presets ``cifar10-g`` and
  ``s-cifar10``) from the user's ``--data-root``.

Runs live in ``runs/analyses/<scale>/<paper>/<name>-s<seed>/`` and are shared between
scripts (G Figs. 1-4 read the same none / linear / MLP runs); a finished run is reused,
a stopped one resumed, and a folder holding another configuration is refused. Probe
results are cached beside each checkpoint (``eval-*.json``, keyed by the checkpoint's
digest and the probe settings). Every script writes into ``figures/<scale>/`` a figure
(PNG and PDF) or a table (CSV and Markdown) and a sidecar JSON naming the command,
configurations, seeds, git commit, machine and wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python analyses/x.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from repdiag.devices import check_device  # noqa: E402
from repdiag.errors import UserError  # noqa: E402

SCALES = ("cpu", "cpu-long", "gpu", "paper", "smoke")


@dataclass(frozen=True)
class Scale:
    """Base presets and overrides of one scale for paper G and paper S runs."""

    name: str
    g_preset: str
    g_set: tuple[str, ...]
    s_preset: str
    s_set: tuple[str, ...]
    # G's heads at this scale: MLP m -> hidden -> out and linear m -> out (G: 2048 -> 512 -> 128)
    g_hidden: int
    g_out: int
    # S's projector grid (scaled with m: S used 512-d features, dim(g) 128/256/512, dim(z) 32/64/128)
    s_dim_g: tuple[int, ...]
    s_dim_z: tuple[int, ...]
    s_base: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    linear_preset: str = "g"
    tsne_points: int = 5000
    # cap of every split for the probes (a stratified subset of the training split as the
    # probe's training set; the 10,000 Fashion-MNIST test images stay whole); None = all
    eval_limit: int | None = None


# CPU scale: 28 px Fashion-MNIST, ResNet-18 at width 1/8 (m = 64), 3 epochs on 6,000 images:
# about 40 s a run on 2 cores. G's heads keep hidden and output below m (MLP 64 -> 32 -> 32,
# linear 64 -> 32), so every head's first layer has a null space. Adam 3e-3 and T = 0.2
# (G: 1e-3, 0.5) because G's values barely move the backbone in so few steps (docs/reproducibility.md).
CPU_COMMON = ("data=fashion-mnist", "backbone=resnet18", "width=0.125", "batch_size=256",
              "knn_every=0", "data_limit=6000", "epochs=3", "optim.lr=0.003", "temperature=0.2")
GPU_COMMON = ("data=fashion-mnist", "data_limit=null", "epochs=10", "batch_size=256", "knn_every=1")

SCALE_TABLE = {
    "cpu": Scale(
        name="cpu", g_preset="fmnist-tiny",
        g_set=CPU_COMMON + ("val_fraction=0", "save_every=3"),
        s_preset="fmnist-tiny",
        s_set=CPU_COMMON + ("save_every=0", "select=best", "split_scheme=s", "split_seed=0",
                            "head.ae_epochs=5"),
        g_hidden=32, g_out=32, s_dim_g=(16, 32), s_dim_z=(16, 32),
        s_base={"activation": "sigmoid", "dim_g": 32, "dim_z": 16, "zscore": False},
        linear_preset="fast", tsne_points=3000, eval_limit=10000),
    # the cpu scale's models, data, lr and T for 30 epochs, every 5th epoch saved (the
    # training curve of G Fig. 1's precondition); about 15 min a run with one thread
    "cpu-long": Scale(
        name="cpu-long", g_preset="fmnist-tiny",
        g_set=CPU_COMMON + ("val_fraction=0", "save_every=5", "epochs=30"),
        s_preset="fmnist-tiny",
        s_set=CPU_COMMON + ("save_every=0", "select=best", "split_scheme=s", "split_seed=0",
                            "head.ae_epochs=5", "epochs=30"),
        g_hidden=32, g_out=32, s_dim_g=(16, 32), s_dim_z=(16, 32),
        s_base={"activation": "sigmoid", "dim_g": 32, "dim_z": 16, "zscore": False},
        linear_preset="fast", tsne_points=3000, eval_limit=10000),
    "gpu": Scale(
        name="gpu", g_preset="cifar10-g",
        g_set=GPU_COMMON + ("backbone=resnet50", "save_every=10", "knn_subset=2000"),
        s_preset="s-cifar10",
        s_set=GPU_COMMON + ("backbone=resnet34", "cifar_stem=true", "pretrained_backbone=null",
                            "batch_size=512", "optim.lr=0.6", "save_every=0", "head.ae_epochs=20"),
        g_hidden=512, g_out=128, s_dim_g=(128, 256, 512), s_dim_z=(32, 64, 128),
        s_base={"activation": "sigmoid", "dim_g": 256, "dim_z": 128, "zscore": False},
        linear_preset="g", tsne_points=10000),
    "paper": Scale(
        name="paper", g_preset="cifar10-g", g_set=(), s_preset="s-cifar10", s_set=(),
        g_hidden=512, g_out=128, s_dim_g=(128, 256, 512), s_dim_z=(32, 64, 128),
        s_base={"activation": "sigmoid", "dim_g": 256, "dim_z": 128, "zscore": False},
        seeds=(0,), linear_preset="g", tsne_points=10000),
    # seconds on generated data: exercises every script end to end in the tests
    "smoke": Scale(
        name="smoke", g_preset="fmnist-tiny",
        g_set=("data=synthetic", "width=0.125", "epochs=1", "batch_size=64", "knn_every=0",
               "save_every=1", "data_limit=null"),
        s_preset="fmnist-tiny",
        s_set=("data=synthetic", "width=0.125", "epochs=1", "batch_size=64", "knn_every=0",
               "save_every=0", "data_limit=null", "select=best", "split_scheme=s", "split_seed=0",
               "head.ae_epochs=1"),
        g_hidden=16, g_out=8, s_dim_g=(8, 16), s_dim_z=(4, 8),
        s_base={"activation": "sigmoid", "dim_g": 16, "dim_z": 8, "zscore": False},
        seeds=(0, 1), linear_preset="fast", tsne_points=200),
}


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
    """The folder of a finished run: trained now, resumed, or reused as it is.

    A folder that holds a run with another configuration is refused (one line),
    never overwritten. ``epoch_hooks``: factories ``make(run_folder)`` returning a
    ``hook(trainer, epoch)`` that the trainer calls at epoch 0 and after each epoch,
    for a run trained or resumed now.
    """
    from train.sweep import _config_difference, _stored_epoch_and_config
    from train.trainer import Trainer

    cfg = run_config(ctx, paper, name, overrides, seed)
    folder = ctx.runs / paper / f"{name}-s{seed}"
    state = _stored_epoch_and_config(folder)
    if state is not None:
        wanted = cfg.to_dict()
        diff = _config_difference(state[1], wanted)
        if diff:
            raise UserError(f"{folder} holds a run with another config: {diff}; remove the folder "
                            "or use another --runs")
    ctx.configs[f"{paper}/{name}-s{seed}"] = cfg.to_dict()
    if state is not None and state[0] >= cfg.epochs:
        log(f"{paper}/{name} seed {seed}: done already ({folder})")
        return folder
    what = f"resuming at epoch {state[0]}" if state is not None else "training"
    log(f"{paper}/{name} seed {seed}: {what} ({cfg.epochs} epochs) -> {folder}")
    t0 = time.time()
    Trainer(cfg, folder, quiet=ctx.quiet, resume=state is not None,
            epoch_hooks=[hook(folder) for hook in epoch_hooks]).run()
    log(f"{paper}/{name} seed {seed}: trained in {time.time() - t0:.0f} s")
    # the trainer writes the d0 / ae_checkpoint it used back into the config: record that
    ctx.configs[f"{paper}/{name}-s{seed}"] = _stored_epoch_and_config(folder)[1]
    return folder


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[analyses] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- evaluation
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def evaluate(ctx: Context, checkpoint: Path, *, probes: tuple[str, ...] = ("knn", "linear"),
             on: tuple[str, ...] | None = None, rank: bool = True, split_test: str = "test") -> dict:
    """Probe accuracies (kNN k=200 and linear, paper G §5) on h, h_r, h_n, z and ranks.

    Features of the whole training split form the probe's training set and the test
    split is scored (G's protocol); the linear probe is the scale's preset ("fast"
    L-BFGS at cpu scale, G's 200-epoch Adam otherwise). Cached beside the checkpoint.
    """
    from repdiag.diagnose import probe_report, rank_report
    from repdiag.diagnostics import nullspace

    settings = {"probes": list(probes), "on": list(on) if on else None, "rank": rank,
                "linear": ctx.scale.linear_preset, "limit": ctx.scale.eval_limit, "v": 1}
    key = hashlib.sha256(json.dumps([_digest(checkpoint), settings]).encode()).hexdigest()[:16]
    cache = checkpoint.parent / f"eval-{checkpoint.stem}-{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    t0 = time.time()
    src = source(ctx, checkpoint)
    test = src.get("test")
    has_split = test.weight is not None
    names = on or (("h", "h_r", "h_n", "z") if has_split and test.z is not None else ("h",))
    out: dict = {"checkpoint": str(checkpoint), "accuracy": {}}
    for probe in probes:
        preset = ctx.scale.linear_preset if probe == "linear" else None
        rep = probe_report(src, probe, names, preset=preset)
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
    atomic_write(cache, json.dumps(out, indent=1))
    return out


def source(ctx: Context, checkpoint: Path):
    """The FeatureSource of a checkpoint at this scale's evaluation limit."""
    from repdiag.features import FeatureSource

    return FeatureSource(checkpoint, limit=ctx.scale.eval_limit)


def epoch0(folder: Path) -> Path:
    """The untrained (epoch 0) checkpoint of a run folder."""
    return folder / "checkpoints" / "epoch_000.pt"


# --------------------------------------------------------------------------- outputs
def atomic_write(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` through a temporary file (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    os.replace(tmp, path)


def machine() -> str:
    """'<CPU model>, N cores[, GPU name]' of this machine."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when files differ), or None outside git."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def sidecar(ctx: Context, name: str, outputs: list[str], **extra) -> dict:
    """The JSON written beside every output: command, configs, seeds, commit, machine, time."""
    return {
        "output": name, "files": outputs,
        "command": " ".join(["python", *[os.path.relpath(sys.argv[0], ROOT)], *sys.argv[1:]]),
        "scale": ctx.scale.name, "seeds": list(ctx.seeds), "git_commit": ctx.commit,
        "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"), "wall_time_s": round(time.time() - ctx.started, 1),
        **extra, "configs": compact_configs(ctx.configs),
    }


def compact_configs(configs: dict[str, dict]) -> dict:
    """The runs' configurations without repeating what they share: ``{"common": {key: value},
    "runs": {run: {key: value}}}`` with dotted keys (``head.kind``); run ``r``'s full
    configuration is ``common`` updated with ``runs[r]``."""
    from train.config import flatten_config

    flat = {name: flatten_config(cfg) for name, cfg in configs.items()}
    if not flat:
        return {"common": {}, "runs": {}}
    first, *rest = flat.values()
    common = {k: v for k, v in first.items() if all(k in f and f[k] == v for f in rest)}
    return {"common": common,
            "runs": {name: {k: v for k, v in f.items() if k not in common} for name, f in flat.items()}}


def markdown_table(df) -> str:
    """A GitHub Markdown table of a DataFrame (floats with 2 decimals, None as '—')."""
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(ctx: Context, name: str, df, *, title: str, notes: list[str] = (), **extra) -> None:
    """``name``.csv, ``name``.md (title, table, notes) and ``name``.json in figures/<scale>/
    (a figure's name must differ: its sidecar is ``name``.json too)."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    files = [f"{name}.csv", f"{name}.md", f"{name}.json"]
    atomic_write(ctx.out / files[0], df.to_csv(index=False))
    md = f"# {title}\n\n" + markdown_table(df) + "".join(f"\n{n}\n" for n in notes)
    md += (f"\nScale `{ctx.scale.name}`, seeds {', '.join(map(str, ctx.seeds))}; {machine()}; "
           f"{time.strftime('%Y-%m-%d')}; made by `{sidecar(ctx, name, files)['command']}`.\n")
    atomic_write(ctx.out / files[1], md)
    atomic_write(ctx.out / files[2], json.dumps(sidecar(ctx, name, files, title=title, **extra),
                                                indent=1, default=str))
    log(f"wrote {ctx.out / files[1]}")


def write_figure(ctx: Context, name: str, fig, *, title: str, **extra) -> None:
    """``name``.png and ``name``.pdf (written together or not at all) and ``name``.json."""
    from repdiag.plots import save_figure

    ctx.out.mkdir(parents=True, exist_ok=True)
    files = [f"{name}.png", f"{name}.pdf", f"{name}.json"]
    save_figure(fig, ctx.out / name)
    atomic_write(ctx.out / files[2], json.dumps(sidecar(ctx, name, files, title=title, **extra),
                                                indent=1, default=str))
    log(f"wrote {ctx.out / files[0]}")


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of ``values``."""
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def pm(values: list[float], scale: float = 100.0) -> str:
    """'mean ± std' of ``values`` in percent (or '—' when none is defined)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    m, s = mean_spread([scale * v for v in vals])
    return f"{m:.2f} ± {s:.2f}"


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
                 reference: str, probes: tuple[str, ...] = ("knn", "linear")):
    """Train (or reuse) each method's runs over the seeds and score h; a DataFrame and raw numbers.

    ``methods`` holds (label, run name, overrides); a callable in place of the overrides is
    called with the seed (for runs that depend on another run of the same seed). Each row
    gives mean ± std over seeds per probe and the paired difference to ``reference``'s row.
    """
    import pandas as pd

    raw: dict[str, dict[str, list[float]]] = {}
    for label, name, overrides in methods:
        accs = {p: [] for p in probes}
        for seed in ctx.seeds:
            ov = overrides(seed) if callable(overrides) else overrides
            folder = ensure_run(ctx, paper, name, ov, seed)
            acc = evaluate(ctx, last(folder), probes=probes, on=("h",), rank=False)["accuracy"]
            for p in probes:
                accs[p].append(acc[p]["h"])
        raw[label] = accs
    rows = []
    for label, accs in raw.items():
        row = {"method": label}
        for p in probes:
            name = "kNN" if p == "knn" else "linear"
            row[f"{name} on h (%)"] = pm(accs[p])
            if label != reference:
                diffs = [a - b for a, b in zip(accs[p], raw[reference][p], strict=True)]
                row[f"{name} − {reference} (pt)"] = pm(diffs)
            else:
                row[f"{name} − {reference} (pt)"] = "—"
            row[f"{name} per seed (%)"] = " ".join(f"{100 * a:.2f}" for a in accs[p])
        rows.append(row)
    return pd.DataFrame(rows), raw


# --------------------------------------------------------------------------- paper S's grid
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
    from repdiag.diagnostics import linear_probe

    ck = last(folder)
    key = hashlib.sha256(json.dumps([_digest(ck), ctx.scale.linear_preset, ctx.scale.eval_limit,
                                     "s-v1"]).encode()).hexdigest()[:16]
    cache = ck.parent / f"eval-s-{ck.stem}-{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    src = source(ctx, ck)
    tr, va, te = src.get("train"), src.get("val"), src.get("test")
    out = {}
    for split, fs in (("val", va), ("test", te)):
        res = linear_probe(tr.h, tr.y, fs.h, fs.y, preset=ctx.scale.linear_preset, seed=0)
        out[split] = float(res.accuracy)
    out["protocol"] = res.protocol
    atomic_write(cache, json.dumps(out, indent=1))
    return out


def s_results(ctx: Context, configs: list[SConfig] | None = None):
    """Train (or reuse) every configuration for every seed; one row per run (a DataFrame)."""
    import pandas as pd

    rows = []
    for c in configs if configs is not None else s_grid(ctx):
        for seed in ctx.seeds:
            folder = ensure_run(ctx, "s", c.name, c.overrides(), seed)
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

    ctx = cli_context(doc)
    df = s_results(ctx)
    df = df[df["frozen"]]
    write_table(ctx, name, pd.DataFrame(build_rows(df)), title=title,
                notes=list(notes(ctx) if callable(notes) else notes), runs=df.to_dict("records"))
    return 0
