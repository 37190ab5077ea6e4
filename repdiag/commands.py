"""The diagnostic sub-commands: ``repdiag spectrum|rank|nullspace|probe|tsne F...``.

Each takes checkpoints or feature files, calls one report of
:mod:`repdiag.diagnose`, prints an aligned table (or ``--json``) and, with
``--out DIR``, writes the matching figure as PNG and PDF.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from pathlib import Path

import pandas as pd

from repdiag import diagnose
from repdiag.devices import check_device
from repdiag.errors import UserError
from repdiag.features import FeatureSource, parse_normalize
from repdiag.importers import parse_key_map
from repdiag.models import ACTIVATIONS, STEMS
from repdiag.outputs import check_out, dumps, output_set
from repdiag.runs import SELECT, is_run_folder, run_checkpoint


def add_diagnostic_parsers(sub) -> None:
    """Register the diagnostic sub-commands on the repdiag CLI."""
    specs = {
        "spectrum": ("covariance eigen-spectrum of h and z (paper G Fig. 2a/b)", run_spectrum),
        "rank": ("numerical and effective rank of h and z, rank deficit (G Fig. 2c)", run_rank),
        "nullspace": ("range/null-space split of h under the head, probes on h, h_r, h_n, z "
                      "(G eq. 4, Fig. 4)", run_nullspace),
        "probe": ("kNN or linear probe accuracy on chosen features", run_probe),
        "tsne": ("t-SNE map of chosen features, coloured by class", run_tsne),
        "report": ("one self-contained HTML page (and a Markdown twin) with config, training "
                   "curves, spectra, ranks, null-space probes, CKA(h, z) and t-SNE maps",
                   run_report),
        "layers": ("every layer of the head: dimension, rank, RankMe, kNN (and linear) accuracy "
                   "of h, each layer's output and z, and each Linear's input energy in its range",
                   None),
    }
    for name, (help_text, func) in specs.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("inputs", nargs="+", metavar="CKPT_OR_FEATURES",
                       help="repdiag/torchvision/solo-learn/lightly checkpoints, feature files, "
                            "or run folders")
        p.add_argument("--map", dest="key_map", action="append", default=[],
                       metavar="PREFIX=ROLE",
                       help="read a foreign checkpoint's keys under PREFIX as the backbone, the "
                            "head or ignore them (e.g. --map encoder.=backbone --map proj.=head)")
        p.add_argument("--checkpoint", choices=SELECT,
                       help="for a run folder: best.pt (lowest validation loss) or last.pt "
                            "(default: the run's own select)")
        p.add_argument("--data", help="dataset name (default: the one in the checkpoint)")
        p.add_argument("--data-root", help="folder holding the dataset")
        p.add_argument("--limit", type=int, help="cap each split at this many images")
        p.add_argument("--device", default="cpu",
                       help="cpu, cuda or cuda:N (feature extraction; for tsne also the t-SNE: on "
                            "cuda it runs in torch with exact gradients)" if name == "tsne"
                       else "cpu, cuda or cuda:N (feature extraction)")
        p.add_argument("--normalize", default="auto", metavar="auto|none|imagenet|cifar10|"
                       "cifar100|M,M,M/S,S,S",
                       help="input normalisation for extraction (auto: from the checkpoint, "
                            "solo-learn's args.json, else ImageNet's for foreign files, said "
                            "on stderr)")
        p.add_argument("--stem", choices=STEMS,
                       help="a foreign ResNet's stem, which its weights cannot tell (default: "
                            "from solo-learn's args.json, else assumed and said on stderr)")
        p.add_argument("--head-activation", choices=tuple(ACTIVATIONS),
                       help="a foreign projector's activation (default: from the layout, "
                            "else ReLU, said on stderr)")
        p.add_argument("--backbone", metavar="TIMM_NAME",
                       help="read a foreign backbone as this timm model (e.g. "
                            "convnext_tiny); h is its pooled feature")
        p.add_argument("--no-cache", action="store_true", help="do not read/write the feature cache")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.add_argument("--out", metavar="DIR", help="write figures (PNG and PDF) into DIR")
        if name in ("spectrum", "rank", "tsne"):
            p.add_argument("--split", default="test", help="train, val or test (default test)")
        if name == "layers":
            p.add_argument("--probe", default="knn", choices=("knn", "linear"),
                           help="knn (default) or linear: the linear probe (preset fast) besides kNN")
            p.add_argument("--preset", help="kNN protocol preset: g (default), lightly, solo, "
                                            "solo-cosine")
            p.add_argument("--seed", type=int, default=0)
        if name in ("probe", "nullspace", "report"):
            p.add_argument("--probe", default="knn", help="knn or linear (default knn)")
            p.add_argument("--preset", help="probe protocol preset: knn g|lightly|solo|solo-cosine, "
                                            "linear fast|g|s")
            p.add_argument("--seed", type=int, default=0)
        if name in ("probe", "tsne"):
            p.add_argument("--on", help="comma list of h, h_r, h_n, z (default h,z; h alone "
                                        "for features without a head output)")
        if name == "spectrum":
            p.add_argument("--l2", action="store_true",
                           help="L2-normalise rows first (DirectCLR's collapse plot)")
        if name == "rank":
            p.add_argument("--rtol", type=float, help="relative cut-off (default max(N, m)·eps)")
        if name == "report":
            p.add_argument("--tsne-points", type=int, default=2000,
                           help="test points in each t-SNE map (default 2000; 0 skips them)")
            p.add_argument("--title", default="repdiag report", help="the page's title")
        if name == "tsne":
            p.add_argument("--max-points", type=int, default=5000,
                           help="random subset size for the map (default 5000)")
            p.add_argument("--perplexity", type=float, default=30.0,
                           help="t-SNE perplexity (default 30, openTSNE's)")
            p.add_argument("--backend", choices=("auto", "opentsne", "torch"), default="auto",
                           help="t-SNE optimiser: openTSNE (Barnes-Hut/FFT) or exact-gradient torch "
                                "(default auto: torch on cuda up to 20,000 points, else openTSNE)")
        p.set_defaults(func=func or run_layers)


def _sources(args) -> list[FeatureSource]:
    check_options(args)
    kw = dict(device=args.device, normalize=parse_normalize(args.normalize), cache=not args.no_cache,
              data_root=args.data_root, limit=args.limit)
    key_map = parse_key_map(args.key_map)
    options = {"stem": args.stem, "head_activation": args.head_activation,
               "backbone": args.backbone, "normalize": kw["normalize"]}
    paths = [run_checkpoint(p, args.checkpoint) if is_run_folder(p) else p for p in args.inputs]
    sources = [FeatureSource(p, data=args.data, key_map=key_map, options=options, **kw)
               for p in paths]
    chosen = [f"--{k.replace('_', '-')}" for k in ("stem", "head_activation", "backbone")
              if getattr(args, k)]
    own = [s.path for s in sources if s.checkpoint is not None
           and s.checkpoint.source == "repdiag-checkpoint"]
    if chosen and own:
        raise UserError(f"{', '.join(chosen)} apply to foreign checkpoints; {own[0]} is a "
                        "repdiag checkpoint, which records its own architecture")
    args.import_records = [_import_record(s) for s in sources]
    files = [s.path for s in sources if s.checkpoint is None]
    if files and (args.data or args.limit or args.data_root):
        given = ", ".join(o for o, v in (("--data", args.data), ("--limit", args.limit),
                                          ("--data-root", args.data_root)) if v)
        warnings.warn(f"{given} do(es) not apply to feature files ({', '.join(files)}): their "
                      "features are used as they are", stacklevel=2)
    return sources


MAX_SEED = 2**63 - 1


def check_options(args) -> None:
    """Every option of a diagnostic command checked before any file is read or work starts
    (extraction, caching, progress); each message names the option as typed."""
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be positive, got {args.limit}")
    if args.limit == 1:
        raise UserError("--limit 1 leaves one sample per split; the diagnostics need at least 2")
    check_device(args.device)
    if getattr(args, "out", None):
        check_out(args.out)
    parse_key_map(args.key_map)
    if args.command == "layers":  # kNN always; --probe linear adds the fast linear probe
        diagnose.check_probe_options("knn", args.preset)
    elif getattr(args, "probe", None) is not None:
        diagnose.check_probe_options(args.probe, args.preset)
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be an integer in 0..2^63-1, got {seed}")
    if getattr(args, "on", None):
        diagnose._parse_on(args.on, diagnose.FEATURE_NAMES if args.command == "probe"
                           else ("h", "z"))
    rtol = getattr(args, "rtol", None)
    if rtol is not None and not (math.isfinite(rtol) and 0 <= rtol < 1):
        raise UserError(f"--rtol must be a finite number in [0, 1) (a relative cut-off of the "
                        f"largest singular value), got {rtol!r}")
    if args.command == "tsne":
        if args.max_points < 10:
            raise UserError(f"--max-points must be at least 10, got {args.max_points}")
        check_perplexity(args.perplexity, args.max_points)
    if args.command == "report":
        from repdiag.report import MIN_TSNE_POINTS

        if args.tsne_points != 0 and args.tsne_points < MIN_TSNE_POINTS:
            raise UserError(f"--tsne-points must be 0 (no maps) or at least {MIN_TSNE_POINTS}, "
                            f"got {args.tsne_points}")


def check_perplexity(perplexity: float, points: int | None = None,
                     where: str = "--max-points is") -> None:
    """t-SNE's perplexity: finite, 3·perplexity >= 1 (at least one neighbour per point) and
    below a third of the points (openTSNE's k = 3·perplexity neighbours)."""
    if not (math.isfinite(perplexity) and 3 * perplexity >= 1):
        raise UserError(f"--perplexity must be a finite number of at least 1/3 (t-SNE uses "
                        f"3*perplexity neighbours per point), got {perplexity!r}")
    if points is not None and 3 * perplexity >= points:
        raise UserError(f"--perplexity {perplexity:g} needs more than {int(3 * perplexity)} "
                        f"points; {where} {points}")
def _import_record(src: FeatureSource) -> dict | None:
    """How a foreign checkpoint was read: its layout, what was decided on what evidence,
    and what was assumed (None for repdiag checkpoints and feature files)."""
    ck = src.checkpoint
    if ck is None or ck.source == "repdiag-checkpoint":
        return None
    return {"layout": ck.source, **(ck.extra.get("import") or {})}


def _figure_stems(sources: list[FeatureSource]) -> list[str]:
    """One file-name stem per input, distinct even when inputs share a file name
    (run1/last.pt and run2/last.pt give run1_last and run2_last)."""
    paths = [Path(s.path) for s in sources]
    stems = [p.stem for p in paths]
    if len(set(stems)) < len(stems):
        stems = ["_".join(x for x in (p.parent.name, p.stem) if x) for p in paths]
    if len(set(stems)) < len(stems):
        stems = [f"{i + 1}_{stem}" for i, stem in enumerate(stems)]
    return [re.sub(r"[^A-Za-z0-9._+-]", "_", stem) for stem in stems]


def _labels(sources: list[FeatureSource]) -> list[str]:
    names = [s.name for s in sources]
    if len(set(names)) < len(names):
        names = [s.path for s in sources]
    return names


def _emit(args, reports: list[dict], labels: list[str], table: pd.DataFrame,
          header: list[str] = (), notes: list[str] = ()) -> None:
    if args.json:
        records = getattr(args, "import_records", None) or [None] * len(reports)
        reports = [{**r, "import": rec} if rec else r
                   for r, rec in zip(reports, records, strict=True)]
        if len(reports) == 1:
            print(dumps(reports[0]))
        else:
            print(dumps([{"source": lab, **r} for lab, r in zip(labels, reports, strict=True)]))
    else:
        for line in header:
            print(line)
        print(table.to_string(index=False))
        for line in notes:
            print(line)


def _fmt_pct(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.2f}" if isinstance(x, float) and math.isfinite(x) else "-"


def protocol_header(report: dict) -> list[str]:
    """The lines above a probe table naming the protocol (preset) that produced its numbers."""
    p = report["protocol"]
    if p.get("name") == "knn":
        vote = "exp(sim/T)" if p["distance"] == "cosine" else p.get("weight", "")
        return [f"probe: kNN, preset {p['preset']}: k={p['k']}, {p['distance']}, vote {vote}, "
                f"T={p['temperature']:g}", f"  ({p['source']})"]
    preset = p.get("preset")
    if preset == "fast":
        what = ("standardised features, full-batch L-BFGS on scikit-learn's logistic objective "
                f"(C={p['C']:g}, at most {p['max_iter']} iterations); not paper G's protocol "
                "(--preset g)")
    elif preset == "g":
        what = (f"paper G: nn.Linear, Adam lr {p['lr']:g}, wd {p['weight_decay']:g}, batch "
                f"{p['batch_size']}, {p['epochs']} epochs, last epoch")
    elif preset == "s":
        what = ("paper S: logistic regression on 70/10/20 of the test split, SGD lr "
                f"{p['lr']:g}, batch {p['batch_size']}, {p['epochs']} epochs, best validation loss")
    else:
        what = str(preset)
    lines = [f"probe: linear, preset {preset}: {what}"]
    if p.get("standardize") and "h_n" in report["accuracy"]:
        lines.append("  (per-coordinate standardisation makes the probes on h and h_n different "
                     "problems, so h_n can beat h; --preset g compares them as paper G does)")
    return lines


def undefined_notes(labels: list[str], reports: list[dict]) -> list[str]:
    """Lines under a probe table: each feature set a report leaves undefined, with the reason,
    and each linear probe's convergence (final training objective, gradient norm)."""
    notes = []
    for lab, rep in zip(labels, reports, strict=True):
        notes += [f"{lab}: {feat} not defined ({why})" for feat, why in rep.get("undefined", {}).items()]
        conv = {f: c for f, c in rep.get("convergence", {}).items()
                if f not in rep.get("undefined", {}) and "final_loss" in c}
        if conv:
            notes.append(f"{lab}: training objective / gradient norm at the end: " + ", ".join(
                f"{f} {c['final_loss']:.4f} / {c['grad_norm']:.1e}" for f, c in conv.items()))
    return notes


def _out_dir(args) -> Path | None:
    """``--out`` checked to be a folder that can be written (nothing is created until the
    outputs are complete: see :func:`repdiag.outputs.output_set`)."""
    return check_out(args.out) if args.out else None


def run_spectrum(args: argparse.Namespace) -> int:
    sources = _sources(args)
    out = _out_dir(args)
    labels = _labels(sources)
    reports = [diagnose.spectrum_report(s, args.split, normalize=args.l2) for s in sources]
    rows = []
    for lab, rep in zip(labels, reports, strict=True):
        for feat, eig in rep.items():
            total = sum(eig)
            pr = total**2 / sum(e * e for e in eig) if total > 0 else 0.0
            rows.append({"model": lab, "features": feat, "dim": len(eig),
                         "largest eigenvalue": f"{eig[0]:.4g}", "smallest": f"{eig[-1]:.3g}",
                         "top-10 share (%)": _fmt_pct(sum(eig[:10]) / total if total else 0.0),
                         "participation ratio": f"{pr:.2f}"})
    if out is not None:
        from repdiag.plots import save_figure, spectrum_figure

        with output_set(out) as tmp:
            for lab, stem, rep in zip(labels, _figure_stems(sources), reports, strict=True):
                save_figure(spectrum_figure(rep, title=f"spectrum: {lab}"), tmp / f"spectrum_{stem}")
    _emit(args, reports, labels, pd.DataFrame(rows))
    return 0


def run_rank(args: argparse.Namespace) -> int:
    sources = _sources(args)
    out = _out_dir(args)
    labels = _labels(sources)
    reports = [diagnose.rank_report(s, args.split, rtol=args.rtol) for s in sources]
    rows = []
    for lab, rep in zip(labels, reports, strict=True):
        for feat in ("h", "z"):
            if feat not in rep:
                continue
            r = rep[feat]
            rows.append({"model": lab, "features": feat, "dim": r["dim"], "rank": r["rank"],
                         "cut-off": f"{r['tol']:.3g} ({r['dtype']})",
                         "effective rank (RankMe)": f"{r['effective_rank']:.1f}",
                         "effective rank (centred)": f"{r['effective_rank_centred']:.1f}",
                         "rank deficit": rep.get("rank_deficit", "-") if feat == "h" else "",
                         "samples": f"{r['n']}" + (" (limits rank)" if r["limited_by_samples"]
                                                   else "")})
    if out is not None:
        from repdiag.plots import rank_figure, save_figure

        data = {lab: {k: rep[k]["rank"] for k in ("h", "z") if k in rep}
                for lab, rep in zip(labels, reports, strict=True)}
        with output_set(out) as tmp:
            save_figure(rank_figure(data), tmp / "rank")
    limited = sorted({lab for lab, rep in zip(labels, reports, strict=True)
                      for f in ("h", "z") if rep.get(f, {}).get("limited_by_samples")})
    notes = [f"{', '.join(limited)}: n is at or below the feature size, so the rank is bounded by "
             "the sample, not the model; raise --limit (or drop it)"] if limited else []
    _emit(args, reports, labels, pd.DataFrame(rows), notes=notes)
    return 0


def _probe_rows(labels, reports, extra) -> pd.DataFrame:
    rows = []
    for lab, rep in zip(labels, reports, strict=True):
        row = {"model": lab}
        row.update(extra(rep))
        row.update({f"{k} acc (%)": _fmt_pct(v) for k, v in rep["accuracy"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _probe_figure(args, labels, reports, name) -> None:
    out = _out_dir(args) if args.out else None
    if out is not None:
        from repdiag.plots import probe_figure, save_figure

        accs = {lab: rep["accuracy"] for lab, rep in zip(labels, reports, strict=True)}
        with output_set(out) as tmp:
            save_figure(probe_figure(accs, probe=reports[0]["probe"]), tmp / name)


def run_probe(args: argparse.Namespace) -> int:
    sources = _sources(args)
    _out_dir(args)
    labels = _labels(sources)
    reports = [diagnose.probe_report(s, args.probe, args.on, preset=args.preset, seed=args.seed)
               for s in sources]
    _probe_figure(args, labels, reports, f"probe_{args.probe}")
    _emit(args, reports, labels, _probe_rows(labels, reports, lambda r: {
        "probe": r["probe"], "train/test": f"{r['n_train']}/{r['n_test']}"}),
        header=protocol_header(reports[0]), notes=undefined_notes(labels, reports))
    return 0


def run_nullspace(args: argparse.Namespace) -> int:
    sources = _sources(args)
    _out_dir(args)
    labels = _labels(sources)
    reports = [diagnose.nullspace_report(s, args.probe, preset=args.preset, seed=args.seed)
               for s in sources]
    _probe_figure(args, labels, reports, f"nullspace_{args.probe}")
    _emit(args, reports, labels, _probe_rows(labels, reports, lambda r: {
        "probe": r["probe"],
        "head": "no head (A = I)" if r.get("undefined", {}).get("h_n", "").startswith("no head")
        else "x".join(map(str, r["head_shape"])),
        "head rank": r["head_rank"], "residual": f"{r['residual']:.1e}",
        "range energy (%)": _fmt_pct(r["energy_range"])}),
        header=protocol_header(reports[0]), notes=undefined_notes(labels, reports))
    return 0


def run_tsne(args: argparse.Namespace) -> int:
    import torch

    from repdiag.diagnostics import tsne
    from repdiag.plots import save_figure, tsne_figure

    check_options(args)
    names = diagnose._parse_on(args.on, ("h", "z")) if args.on else None
    out = _out_dir(args) or check_out(".", "the current folder")
    sources = _sources(args)
    labels = _labels(sources)
    chosen = []
    for lab, src in zip(labels, sources, strict=True):  # every input checked before any map
        fs = src.get(args.split)
        feats = names or (("h", "z") if fs.z is not None else ("h",))
        if "z" in feats and fs.z is None:
            raise UserError(f"{lab}: no z (head output) in these features; use --on h")
        n = min(len(fs), args.max_points)
        check_perplexity(args.perplexity, n, where=f"{lab} ({args.split} split) has")
        chosen.append((fs, feats))
    reports, rows = [], []
    with output_set(out) as tmp:
        for lab, fig_stem, src, (fs, feats) in zip(labels, _figure_stems(sources), sources, chosen,
                                                   strict=True):
            gen = torch.Generator().manual_seed(0)
            idx = torch.randperm(len(fs), generator=gen)[: args.max_points]
            rep = {}
            for feat in feats:
                x = fs.h if feat == "h" else fs.z
                res = tsne(x[idx], fs.y[idx], perplexity=args.perplexity, device=args.device,
                           backend=None if args.backend == "auto" else args.backend)
                name = f"tsne_{fig_stem}_{feat}"
                classes = src.class_names() if src.checkpoint is None else None  # file labels
                paths = [out / p.name for p in save_figure(
                    tsne_figure(res.embedding, res.labels, classes=classes,
                                title=f"t-SNE of {feat}: {lab}"), tmp / name)]
                kl = res.params.get("kl_divergence")
                rep[feat] = {"n": res.n, "figure": [str(p) for p in paths],
                             "backend": res.params["backend"], "kl_divergence": kl}
                rows.append({"model": lab, "features": feat, "points": res.n,
                             "backend": res.params["backend"],
                             "KL": "" if kl is None else f"{kl:.4f}", "figure": str(paths[0])})
            reports.append(rep)
    _emit(args, reports, labels, pd.DataFrame(rows))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from repdiag.report import build_report, write_report

    if not args.out:
        raise UserError("report needs --out DIR (report.html, report.md, report.json go there)")
    check_options(args)
    out = _out_dir(args)
    sources = _sources(args)
    labels = _labels(sources)
    progress = None if args.json else (lambda text: print(f"[report] {text}", file=sys.stderr,
                                                          flush=True))
    reports = build_report(sources, labels, probe=args.probe, preset=args.preset,
                           tsne_points=args.tsne_points, seed=args.seed, progress=progress)
    notes = undefined_notes(labels, [r.probes for r in reports])
    written = write_report(reports, out, title=args.title, class_names=sources[0].class_names(),
                           notes=notes)
    if args.json:
        print(dumps(written))
    else:
        print(f"wrote {written['html']} and {written['markdown']} ({written['figures']} figures)")
    return 0


def run_layers(args: argparse.Namespace) -> int:
    from repdiag.layers import layers_report

    check_options(args)
    out = _out_dir(args)
    sources = _sources(args)
    labels = _labels(sources)
    probes = ("knn", "linear") if args.probe == "linear" else ("knn",)
    reports = [layers_report(s, probes=probes, preset=args.preset, seed=args.seed)
               for s in sources]
    rows = []
    for lab, rep in zip(labels, reports, strict=True):
        for st in rep["stages"]:
            row = {"model": lab, "stage": st["stage"], "dim": st["dim"], "rank": st["rank"],
                   "RankMe": f"{st['rankme']:.1f}"}
            row.update({f"{p} acc (%)": _fmt_pct(st[p]) for p in probes})
            energy = st.get("input_energy_range")
            row["input in range (%)"] = "" if energy is None else _fmt_pct(energy)
            rows.append(row)
    if out is not None:
        from repdiag.plots import layers_figure, save_figure

        fig = layers_figure({lab: rep["stages"] for lab, rep in zip(labels, reports, strict=True)})
        with output_set(out) as tmp:
            save_figure(fig, tmp / "layers")
    _emit(args, reports, labels, pd.DataFrame(rows),
          header=[f"test split: rank and RankMe of each stage; probes train on the train split "
                  f"({reports[0]['n_train']}) and score the test split ({reports[0]['n_test']})"])
    return 0
