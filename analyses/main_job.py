"""The main job: train SimCLR with no, linear and MLP heads, print paper G's diagnostic
table, compare with the untrained backbone, and write the report page.

Per head (seed 0, the runs G Figs. 1-4 share): rank h, rank z, the deficit, and kNN
(k = 200) and linear probes on h, h_r, h_n and z of the test split. On a machine
with a GPU it runs at ``gpu`` scale by itself, else at ``cpu`` scale. Finished
runs and evaluations are reused, a stopped run resumed.

    python analyses/main_job.py            # scripts/demo.sh runs this
"""

from __future__ import annotations

import sys
import time

import common
import torch

FEATURES = ("h", "h_r", "h_n", "z")


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
    common.log(f"scale {ctx.scale.name}: {common.machine()}")
    runs = {k: v[0] for k, v in common.g_head_runs(ctx).items()}
    evals = {}
    for kind, folder in runs.items():
        common.log(f"evaluating {kind} (kNN and linear probes on h, h_r, h_n, z; ranks)")
        evals[kind] = common.evaluate(ctx, common.last(folder),
                                      on=None if kind != "none" else ("h",))
    common.log("evaluating the untrained backbone (epoch 0; the same initialisation for all heads)")
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
    if not args.no_report:
        from repdiag.report import build_report, write_report

        common.log("writing the report (spectra, ranks, null-space probes, CKA, t-SNE)")
        paths = [common.last(runs[k]) for k in runs] + [common.epoch0(runs["mlp"])]
        labels = [common.G_HEADS[k] for k in runs] + ["untrained backbone"]
        sources = [common.source(ctx, p) for p in paths]
        reports = build_report(sources, labels, tsne_points=2000,
                               progress=lambda s: common.log(f"report: {s}"))
        out = ctx.runs / "report"
        written = write_report(reports, out, title=f"repdiag main job ({ctx.scale.name} scale)",
                               class_names=sources[0].class_names())
        print(f"report: {written['html']} (and {written['markdown']})")
    print(f"main job done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(common.main_guard(main))
