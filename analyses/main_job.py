"""The main job: train SimCLR with no, linear and MLP heads, print paper G's diagnostic
table, compare with the untrained backbone, and write the report page.

Per head (seed 0, the runs G Figs. 1-4 share): rank h, rank z, the deficit, and kNN
(k = 200) and linear probes on h, h_r, h_n and z of the test split; where in the MLP
head kNN accuracy is lost (``repdiag.layers``), and, from a ``repdiag.HeadMonitor``
that watches every run while it trains, the training-time curves. On a machine
with a GPU it runs at ``gpu`` scale by itself, else at ``cpu`` scale. Finished
runs and evaluations are reused, a stopped run resumed.

    python analyses/main_job.py            # scripts/demo.sh runs this
"""

from __future__ import annotations

import json
import sys
import time

import common
import outputs
import torch

from repdiag.files import atomic_write_text

FEATURES = ("h", "h_r", "h_n", "z")
MONITOR_FILE = "head_monitor.jsonl"
MONITOR_BANK, MONITOR_QUERIES = 2000, 1000


def monitor_sets(data, mean, std, seed: int):
    """The monitor's fixed kNN bank (training images) and queries (validation, else test)."""
    from repdiag.augment import eval_transform
    from train.monitor import fixed_subset

    queries = data.val if len(data.val) > 0 else data.test
    b = fixed_subset(len(data.train), MONITOR_BANK, seed + 11)
    q = fixed_subset(len(queries), MONITOR_QUERIES, seed + 12)
    return ((eval_transform(data.train.images[b], mean=mean, std=std), data.train.labels[b]),
            (eval_transform(queries.images[q], mean=mean, std=std), queries.labels[q]))


def monitor_hook(folder):
    """A trainer epoch hook: HeadMonitor.step at epoch 0 and after every epoch, into
    ``folder/head_monitor.jsonl`` (lines of epochs a resumed run redoes are dropped)."""
    from repdiag.monitor import HeadMonitor, read_jsonl

    path = folder / MONITOR_FILE
    state = {}

    def hook(trainer, epoch):
        if "mon" not in state:
            kept = [ln for ln in read_jsonl(path) if ln["epoch"] < epoch] if path.exists() else []
            atomic_write_text(path, "".join(json.dumps(ln) + "\n" for ln in kept))
            bank, queries = monitor_sets(trainer.data, *trainer.input_norm, trainer.cfg.seed)
            state["mon"] = HeadMonitor(trainer.backbone, trainer.head, bank, queries, jsonl=path)
        state["mon"].step(epoch)

    return hook


def monitor_lines(folder) -> list[dict]:
    """The HeadMonitor lines of a run; for a run trained without the monitor, the same
    monitor applied to its saved epoch checkpoints (the states it would have seen then)."""
    from repdiag.checkpoint import load_checkpoint
    from repdiag.features import _normalization, dataset_for
    from repdiag.monitor import HeadMonitor, read_jsonl

    path = folder / MONITOR_FILE
    if path.exists():
        return read_jsonl(path)
    lines = []
    for ck_path in sorted((folder / "checkpoints").glob("epoch_*.pt")):
        ck = load_checkpoint(ck_path)
        data = dataset_for(ck, limit=ck.config.get("data_limit"))
        bank, queries = monitor_sets(data, *_normalization(ck, "auto"), ck.config.get("seed", 0))
        mon = HeadMonitor(ck.build_backbone(), ck.build_head(), bank, queries)
        lines.append({**mon.step(ck.epoch), "from_checkpoint": ck_path.name})
    return lines


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def table(evals: dict) -> list[list[str]]:
    """Rows of G's diagnostic table (strings), one per head."""
    rows = []
    for kind, ev in evals.items():
        r = ev["rank"]
        rz = r.get("z", {}).get("rank")
        row = [common.G_HEADS[kind], str(r["h"]["rank"]), "—" if rz is None else str(rz),
               "—" if rz is None else str(r["h"]["rank"] - rz)]
        for probe in ("knn", "linear"):
            row += [_pct(ev["accuracy"][probe].get(f)) for f in FEATURES]
        rows.append(row)
    return rows


def render(header: list[str], rows: list[list[str]]) -> str:
    """A fixed-width text table."""
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def main() -> int:
    ap = common.parser(__doc__.splitlines()[0])
    ap.set_defaults(scale=None)
    ap.add_argument("--no-report", action="store_true", help="skip the HTML report")
    args = ap.parse_args()
    if args.scale is None:
        args.scale = "gpu" if torch.cuda.is_available() else "cpu"
    ctx = common.context(args)
    ctx.seeds = (0,)
    t0 = time.time()
    outputs.log(f"scale {ctx.scale.name}: {outputs.machine()}")
    runs = {k: v[0] for k, v in common.g_head_runs(ctx, epoch_hooks=[monitor_hook]).items()}
    evals = {}
    for kind, folder in runs.items():
        outputs.log(f"evaluating {kind} (kNN and linear probes on h, h_r, h_n, z; ranks)")
        evals[kind] = common.evaluate(ctx, common.last(folder),
                                      on=None if kind != "none" else ("h",))
    outputs.log("evaluating the untrained backbone (epoch 0; the same initialisation for all heads)")
    init = common.evaluate(ctx, common.epoch0(runs["mlp"]), on=("h",), rank=False)["accuracy"]
    header = ["head", "rank h", "rank z", "deficit"] + [f"kNN {f}" for f in FEATURES] + \
             [f"lin {f}" for f in FEATURES]
    rows = table(evals)
    rows.append(["untrained backbone", "", "", "", _pct(init["knn"]["h"]), "", "", "",
                 _pct(init["linear"]["h"]), "", "", ""])
    print(f"\nPaper G's diagnostic table, scale {ctx.scale.name} (test split, accuracies in %; "
          f"linear probe preset '{ctx.scale.linear_preset}'):\n")
    print(render(header, rows))
    m = evals["mlp"]
    shape = m.get("nullspace", {}).get("head_shape")
    if shape:
        print(f"\nMLP head's first layer A: {shape[0]} x {shape[1]}, rank {m['nullspace']['head_rank']}"
              f" -> null space of dimension {shape[1] - m['nullspace']['head_rank']};"
              f" {100 * m['nullspace']['energy_range']:.1f} % of ||h||^2 lies in its range.")
    gain = 100 * (m["accuracy"]["knn"]["h"] - init["knn"]["h"])
    print(f"\nkNN(h) on the test split: trained (MLP head) {_pct(m['accuracy']['knn']['h'])} % vs "
          f"untrained {_pct(init['knn']['h'])} % ({gain:+.2f} pt)")
    from repdiag.layers import layers_report

    outputs.log("kNN accuracy and rank after every layer of the MLP head")
    stages = layers_report(common.source(ctx, common.last(runs["mlp"])))["stages"]
    print("\nThrough the MLP head (test split; kNN %, numerical rank, RankMe):")
    print(render(["stage", "dim", "rank", "RankMe", "kNN"],
                 [[st["stage"], str(st["dim"]), str(st["rank"]), f"{st['rankme']:.1f}",
                   _pct(st["knn"])] for st in stages]))
    drops = [(stages[i - 1]["knn"] - stages[i]["knn"], stages[i]["stage"])
             for i in range(1, len(stages))]
    worst = max(drops)
    ends = f"h {_pct(stages[0]['knn'])} % -> z {_pct(stages[-1]['knn'])} %"
    if worst[0] > 0:
        print(f"The MLP head loses the most kNN accuracy at '{worst[1]}' "
              f"({100 * worst[0]:.2f} pt; {ends}).")
    else:
        print(f"No layer of the MLP head loses kNN accuracy ({ends}).")
    if not args.no_report:
        from repdiag.report import build_report, write_report

        outputs.log("writing the report (spectra, ranks, null-space probes, CKA, t-SNE)")
        paths = [common.last(runs[k]) for k in runs] + [common.epoch0(runs["mlp"])]
        labels = [common.G_HEADS[k] for k in runs] + ["untrained backbone"]
        sources = [common.source(ctx, p) for p in paths]
        monitor = {common.G_HEADS[k]: monitor_lines(runs[k]) for k in runs}
        reports = build_report(sources, labels, tsne_points=2000, monitor=monitor,
                               progress=lambda s: outputs.log(f"report: {s}"))
        out = ctx.runs / "report"
        written = write_report(reports, out, title=f"repdiag main job ({ctx.scale.name} scale)",
                               class_names=sources[0].class_names())
        print(f"report: {written['html']} (and {written['markdown']})")
    print(f"main job done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(common.main_guard(main))
