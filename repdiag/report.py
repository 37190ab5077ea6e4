"""``repdiag report``: one page that diagnoses one checkpoint or compares several.

:func:`build_report` computes, per model, what paper G §3 looks at: the run's
config and training curves (``metrics.jsonl`` as stored in the checkpoint),
the covariance spectra of H and Z, numerical and effective ranks and the rank
deficit, the null-space probes on h, h_r, h_n and z, linear CKA(h, z),
t-SNE maps, kNN accuracy and rank after every layer of the head
(:mod:`repdiag.layers`) and, when given, the training-time curves a
:class:`repdiag.monitor.HeadMonitor` wrote. :func:`write_report` renders it twice from the same figures: a
self-contained HTML page (images embedded as data URIs, no network, no
script) and a Markdown twin whose images are PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repdiag import diagnose
from repdiag.diagnostics import cka, tsne
from repdiag.diagnostics.probes import DEFAULT_KIND, ProbeRequest, as_request
from repdiag.errors import UserError
from repdiag.features import FeatureSource

MIN_TSNE_POINTS = 10  # fewer leave no perplexity with at least one neighbour per point
CONFIG_KEYS = ("method", "data", "backbone", "width", "epochs", "batch_size", "temperature",
               "head.kind", "head.hidden_dim", "head.out_dim", "head.activation", "scheme.kind",
               "optim.name", "optim.lr", "select")


@dataclass
class ModelReport:
    """Everything the page shows for one model (plain data, JSON-ready)."""

    label: str
    source: str
    config: dict
    metrics: list
    spectrum: dict
    rank: dict
    probes: dict
    cka_hz: float | None
    tsne: dict = field(default_factory=dict)  # feature -> (embedding N x 2, labels N)
    layers: list = field(default_factory=list)  # stage dicts of repdiag.layers.layer_report
    monitor: list = field(default_factory=list)  # HeadMonitor lines (training-time curves)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("label", "source", "config", "metrics", "rank",
                                           "probes", "cka_hz", "layers", "monitor")}
        d["spectrum"] = {k: v[:10] for k, v in self.spectrum.items()}  # the top of it
        return d


def _config_summary(src: FeatureSource) -> dict:
    ck = src.checkpoint
    if ck is None:
        return {"source": "feature file"}
    cfg = ck.config or {}
    out = {"source": ck.source, "epoch": ck.epoch}
    for key in CONFIG_KEYS:
        value = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[key] = value
    if ck.source != "repdiag-checkpoint":
        out.update(backbone=ck.backbone_spec.name, width=ck.backbone_spec.width,
                   **{"head.kind": ck.head_spec.kind})
    return out


def build_report(sources: list[FeatureSource], labels: list[str], *,
                 probe: ProbeRequest | str = DEFAULT_KIND,
                 preset: str | None = None, tsne_points: int = 2000, seed: int = 0,
                 progress=None, layers: bool = True,
                 monitor: dict[str, list[dict]] | None = None) -> list[ModelReport]:
    """The diagnostics of each model (G §3): spectra, ranks, probes, CKA(h, z), t-SNE.

    ``probe``: a :class:`~repdiag.diagnostics.probes.ProbeRequest`, or a kind
    with an optional ``preset`` (as :func:`repdiag.diagnose.probe_report`).

    ``layers``: also kNN accuracy, rank and RankMe after every layer of the head
    (checkpoints whose head has layers). ``monitor`` maps a label to the lines
    a :class:`repdiag.monitor.HeadMonitor` logged during that model's training.
    """
    if tsne_points < 0:
        raise UserError(f"--tsne-points must be >= 0 (0 skips the maps), got {tsne_points}")
    req = as_request(probe, preset, option=True)
    tests = []
    for label, src in zip(labels, sources, strict=True):  # every input checked before work
        if progress and src.checkpoint is not None:
            progress(f"{label}: features")
        test = src.get("test")
        if tsne_points and min(len(test), tsne_points) < MIN_TSNE_POINTS:
            raise UserError(f"{label}: the test split has {len(test)} samples, too few for a "
                            f"t-SNE map (at least {MIN_TSNE_POINTS}); pass --tsne-points 0 to "
                            "skip the maps")
        tests.append(test)
    reports = []
    for label, src, test in zip(labels, sources, tests, strict=True):
        step = (lambda what, lab=label: progress(f"{lab}: {what}")) if progress else (lambda _: None)
        step("spectra and ranks")
        spectrum = diagnose.spectrum_report(src, "test")
        rank = diagnose.rank_report(src, "test")
        step(f"{req.kind} probes")
        if test.weight is not None:
            probes = diagnose.nullspace_report(src, req, seed=seed)
        else:
            probes = diagnose.probe_report(src, req, seed=seed)
        cka_hz = float(cka(test.h, test.z)) if test.z is not None else None
        maps = {}
        if tsne_points:
            step("t-SNE")
            idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
            idx = idx[:tsne_points]
            perplexity = min(30.0, max(2.0, (len(idx) - 1) / 3.5))
            for feat in ("h", "z") if test.z is not None else ("h",):
                x = test.h if feat == "h" else test.z
                res = tsne(x[idx], test.y[idx], perplexity=perplexity, seed=seed)
                maps[feat] = (res.embedding, res.labels)
        stages = []
        if layers and src.checkpoint is not None and src.checkpoint.head_spec.kind != "none":
            from repdiag.layers import layers_report

            step("kNN after every layer of the head")
            # kNN after every layer: the request's preset when it is a kNN one, else kNN's default
            stages = layers_report(src, preset=req.preset if req.kind == "knn" else None)["stages"]
        metrics = list(src.checkpoint.metrics) if src.checkpoint is not None else []
        reports.append(ModelReport(label=label, source=src.path, config=_config_summary(src),
                                   metrics=metrics, spectrum=spectrum, rank=rank, probes=probes,
                                   cka_hz=cka_hz, tsne=maps, layers=stages,
                                   monitor=list((monitor or {}).get(label, []))))
    return reports


# --------------------------------------------------------------------------- rendering
def _figures(reports: list[ModelReport], class_names: list[str] | None) -> list[tuple[str, str, object]]:
    """(file stem, caption, matplotlib Figure) for every figure of the page."""
    from repdiag import plots

    figs = []
    curves = {r.label: r.metrics for r in reports if r.metrics}
    if curves:
        figs.append(("curves", "Training curves (loss, validation loss, kNN monitor) per epoch",
                     plots.curves_figure(curves)))
    for i, r in enumerate(reports):
        figs.append((f"spectrum_{i}", f"{r.label}: covariance eigenvalues of H and Z (G Fig. 2a/b)",
                     plots.spectrum_figure(r.spectrum, title=f"spectrum: {r.label}")))
    ranks = {r.label: {k: r.rank[k]["rank"] for k in ("h", "z") if r.rank.get(k)} for r in reports}
    figs.append(("rank", "Numerical rank of H and Z, rank deficit (G Fig. 2c)",
                 plots.rank_figure(ranks)))
    accs = {r.label: r.probes["accuracy"] for r in reports}
    figs.append(("probes", f"{reports[0].probes['probe']} probe accuracy on h, h_r, h_n, z "
                 "(G Fig. 3-4; a missing bar is a feature set that is not defined)",
                 plots.probe_figure(accs, probe=reports[0].probes["probe"])))
    stages = {r.label: r.layers for r in reports if len(r.layers) > 1}
    if stages:
        figs.append(("layers", "kNN accuracy, rank and RankMe of the test features after every "
                     "layer of the head (depth 0 is h, the last point z)",
                     plots.layers_figure(stages)))
    lines = {r.label: r.monitor for r in reports if r.monitor}
    if lines:
        figs.append(("monitor", "During training (HeadMonitor on a fixed bank and query set): "
                     "kNN on h, h_r, h_n, z, RankMe of H and Z, rank deficit",
                     plots.monitor_figure(lines)))
    for i, r in enumerate(reports):
        for feat, (emb, lab) in r.tsne.items():
            figs.append((f"tsne_{i}_{feat}", f"{r.label}: t-SNE of {feat} (test split)",
                         plots.tsne_figure(emb, lab, classes=class_names,
                                           title=f"t-SNE of {feat}: {r.label}")))
    return figs


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    return cols, [[_cell(row.get(c)) for c in cols] for row in rows]


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "—"
    return str(v)


def summary_rows(reports: list[ModelReport]) -> list[dict]:
    """Paper G's diagnostic table: ranks, deficit, effective ranks, probes, CKA(h, z)."""
    rows = []
    for r in reports:
        row = {"model": r.label, "rank h": r.rank["h"]["rank"],
               "rank z": r.rank["z"]["rank"] if r.rank.get("z") else None,
               "deficit": r.rank.get("rank_deficit"),
               "RankMe h": round(r.rank["h"]["effective_rank"], 1),
               "RankMe z": round(r.rank["z"]["effective_rank"], 1) if r.rank.get("z") else None}
        for feat, acc in r.probes["accuracy"].items():
            row[f"{r.probes['probe']} {feat} (%)"] = None if acc is None else round(100 * acc, 2)
        row["CKA(h, z)"] = None if r.cka_hz is None else round(r.cka_hz, 3)
        rows.append(row)
    return rows


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(reports: list[ModelReport], out: Path, *, title: str = "repdiag report",
                 class_names: list[str] | None = None, notes: list[str] = ()) -> dict:
    """Write ``report.html`` (self-contained), ``report.md`` + its PNGs and ``report.json``.

    The set is built in a temporary folder beside ``out`` and moved into place
    only when every file is written (:func:`repdiag.outputs.output_set`): a
    failure (a full disk, say) leaves ``out`` as it was, with no temporary file
    and no folder created, and is one UserError line.
    """
    from repdiag.outputs import output_set

    out = Path(out)
    with output_set(out) as tmp:
        n = _write_report_files(reports, tmp, title=title, class_names=class_names, notes=notes)
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md"),
            "json": str(out / "report.json"), "figures": n}


def _write_report_files(reports: list[ModelReport], out: Path, *, title: str,
                        class_names: list[str] | None, notes) -> int:
    """Render the page, its Markdown twin, the JSON and the PNGs into the folder ``out``;
    returns the number of figures."""
    from repdiag.outputs import dumps

    figures = [(stem, caption, _png(fig)) for stem, caption, fig in
               _figures(reports, class_names)]
    cols, cells = _table(summary_rows(reports))
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}"
             "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;"
             "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
             "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}"
             "figure{margin:1.5em 0}figcaption{color:#555;font-size:90%}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    md = [f"# {title}", ""]
    protocol = reports[0].probes.get("protocol", {})
    text = json.dumps(protocol, ensure_ascii=False)
    parts.append(f"<p>Probe protocol: <code>{esc(text)}</code></p>")
    md += [f"Probe protocol: `{text}`", ""]
    parts.append("<h2>Diagnostics</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols)
                 + "</tr>" + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row)
                                     + "</tr>" for row in cells) + "</table>")
    md += ["## Diagnostics", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(row) + " |" for row in cells] + [""]
    for line in notes:
        parts.append(f"<p>{esc(line)}</p>")
        md += [line, ""]
    parts.append("<h2>Runs</h2>")
    md += ["## Runs", ""]
    for r in reports:
        kv = ", ".join(f"{k}={v}" for k, v in r.config.items())
        parts.append(f"<p><b>{esc(r.label)}</b> ({esc(r.source)}): {esc(kv)}</p>")
        md += [f"- **{r.label}** (`{r.source}`): {kv}"]
    md.append("")
    parts.append("<h2>Figures</h2>")
    md += ["## Figures", ""]
    for stem, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
        md += [f"![{caption}](report_files/{stem}.png)", "", f"*{caption}*", ""]
    parts.append("</body></html>")
    files = out / "report_files"
    files.mkdir()
    for stem, _, png in figures:
        (files / f"{stem}.png").write_bytes(png)
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "report.json").write_text(dumps([r.to_dict() for r in reports], default=str),
                                     encoding="utf-8")
    (out / "report.html").write_text("".join(parts) + "\n", encoding="utf-8")
    return len(figures)
