"""What every analysis writes: tables and figures with a sidecar naming how they were made.

Every script writes into ``figures/<scale>/`` a figure (PNG and PDF) or a table (CSV and
Markdown) and a sidecar JSON naming the command, configurations, seeds, git commit,
machine and wall time; every file appears whole or not at all
(:func:`repdiag.files.atomic_write`). ``ctx`` is the script's :class:`common.Context`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python analyses/x.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from repdiag.files import atomic_write_text  # noqa: E402

if TYPE_CHECKING:
    from common import Context


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[analyses] {msg}", file=sys.stderr, flush=True)


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


def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's commit, with '+dirty' when tracked files outside figures/ differ (the
    outputs an earlier script of the same regeneration wrote are not code), or None outside git."""
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)figures"],
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
        "runs_training_s": runs_training_seconds(ctx.runs, ctx.configs),
        **extra, "configs": compact_configs(ctx.configs),
    }


def runs_training_seconds(runs: Path, configs: dict) -> float | None:
    """The training time of the runs behind an output, summed over runs and epochs (each
    epoch's ``seconds`` in the run's metrics.jsonl; the autoencoder pre-training and the
    evaluations not included), whenever the runs were trained; None when a run has no log."""
    total = 0.0
    for key in configs:  # "g/linear-s0": the run folder below the scale's runs root
        log_file = Path(runs) / key / "metrics.jsonl"
        try:
            lines = log_file.read_text().splitlines()
        except OSError:
            return None
        total += sum(float(json.loads(ln).get("seconds", 0.0)) for ln in lines if ln.strip())
    return round(total, 1)


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
    atomic_write_text(ctx.out / files[0], df.to_csv(index=False))
    md = f"# {title}\n\n" + markdown_table(df) + "".join(f"\n{n}\n" for n in notes)
    md += (f"\nScale `{ctx.scale.name}`, seeds {', '.join(map(str, ctx.seeds))}; {machine()}; "
           f"{time.strftime('%Y-%m-%d')}; made by `{sidecar(ctx, name, files)['command']}`.\n")
    atomic_write_text(ctx.out / files[1], md)
    atomic_write_text(ctx.out / files[2], json.dumps(
        sidecar(ctx, name, files, title=title, **extra), indent=1, default=str))
    log(f"wrote {ctx.out / files[1]}")


def write_figure(ctx: Context, name: str, fig, *, title: str, **extra) -> None:
    """``name``.png and ``name``.pdf (written together or not at all) and ``name``.json."""
    from repdiag.plots import save_figure

    ctx.out.mkdir(parents=True, exist_ok=True)
    files = [f"{name}.png", f"{name}.pdf", f"{name}.json"]
    save_figure(fig, ctx.out / name)
    atomic_write_text(ctx.out / files[2], json.dumps(
        sidecar(ctx, name, files, title=title, **extra), indent=1, default=str))
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


def pm(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    """'mean ± std' of ``values`` in percent (or '—' when none is defined); ``signed``
    writes the mean's sign (differences)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    m, s = mean_spread([scale * v for v in vals])
    return f"{m:+.2f} ± {s:.2f}" if signed else f"{m:.2f} ± {s:.2f}"
