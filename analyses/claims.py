"""Every claim of papers G and S that the analyses test, with its verdict by the one rule of
:mod:`verdicts`, computed from the committed outputs in ``figures/<scale>/`` (their sidecar
JSON holds the per-seed numbers), never typed by hand.

Writes ``claims.csv``, ``claims.md`` and ``claims.json`` beside the outputs and, with
``--readme``, replaces the claim table between ``<!-- claims -->`` markers in
``figures/README.md`` and every output table quoted there between
``<!-- table NAME -->`` and ``<!-- /table -->`` by the table of ``<scale>/NAME.md``::

    python analyses/claims.py --scale cpu --readme

Each claim pairs runs that differ in the claim's factor only, by seed (and, for paper S's
grid, by every other factor: activation, dim(g), dim(z), Z-score); differences are in
percentage points. A claim whose output lacks per-seed numbers says so instead of a verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import verdicts as V  # noqa: E402
from s_pairs import paired_change  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- claims -->", "<!-- /claims -->"
NO_DATA = "no data"


@dataclass(frozen=True)
class Claim:
    """A claim of a paper, the output it is tested on and how its verdict is computed."""

    source: str                       # "G Table 1"
    text: str                         # the claim, as the paper makes it
    output: str                       # the sidecar's name in figures/<scale>/
    judge: Callable[[dict], V.Verdict]  # sidecar -> verdict


class MissingData(LookupError):
    """The output exists but does not hold the numbers this claim needs."""


# --------------------------------------------------------------------------- per-seed getters
def _pct(values) -> list[float]:
    return [None if v is None else 100.0 * v for v in values]


def g_head_acc(side: dict, kind: str, probe: str, target: str = "h") -> list[float]:
    """Per-seed accuracy (%) of G Figs. 3/4's ``kind`` head run on ``target`` (their sidecar)."""
    acc = (side.get("accuracy") or {}).get("acc")
    if not acc or kind not in acc:
        raise MissingData(f"no per-seed accuracy of the {kind} head")
    return _pct(run[probe].get(target) for run in acc[kind])


def g_init_acc(side: dict, probe: str) -> list[float]:
    """Per-seed accuracy (%) of h of the untrained backbones (G Fig. 3's sidecar)."""
    init = (side.get("accuracy") or {}).get("init")
    if not init:
        raise MissingData("no per-seed accuracy of the untrained backbone")
    return _pct(run[probe]["h"] for run in init)


def method_acc(side: dict, label: str, probe: str) -> list[float]:
    """Per-seed accuracy (%) of row ``label`` of a method table (G Tables 1-2)."""
    acc = side.get("accuracy") or {}
    if label not in acc or probe not in acc[label]:
        raise MissingData(f"no per-seed {probe} accuracy of '{label}'")
    return _pct(acc[label][probe])


def _s_runs(side: dict, col: str = "test"):
    import pandas as pd

    runs = side.get("runs")
    if not runs:
        raise MissingData("no per-run records")
    df = pd.DataFrame(runs)
    if col not in df:
        raise MissingData(f"no per-run '{col}' accuracy")
    return df


def s_paired(side: dict, a: dict, b: dict, relation: str = ">", col: str = "test") -> V.Verdict:
    """Paper S, like for like: the runs with settings ``a`` against those with ``b`` (dicts of
    grid factors), matched on every factor neither names and on the seed
    (:func:`s_pairs.paired_change`); per seed the mean of the matched differences of the
    accuracy column ``col``, then the paired rule over seeds."""
    try:
        d = paired_change(_s_runs(side, col), a, b, col)
    except KeyError as exc:
        raise MissingData(exc.args[0]) from None
    return V.paired_verdict(d, [0.0] * len(d), relation)


def s_per_seed(side: dict, stat: Callable, head_a: str = "ae", head_b: str = "mlp",
               relation: str = ">", col: str = "test") -> V.Verdict:
    """Paper S: ``stat`` (of a Series of test accuracies ``col``) of head_a's runs against
    head_b's, per seed, over the same configurations."""
    df = _s_runs(side, col)
    df = df[df["frozen"]] if "frozen" in df else df
    a = df[df["head"] == head_a].groupby("seed")[col].apply(stat)
    b = df[df["head"] == head_b].groupby("seed")[col].apply(stat)
    seeds = a.index.intersection(b.index)
    return V.paired_verdict(list(a.loc[seeds]), list(b.loc[seeds]), relation)


def _iqr(s) -> float:
    return float(s.quantile(0.75) - s.quantile(0.25))


def s_peak_by_validation(side: dict, col: str = "test") -> V.Verdict:
    """Paper S Table 2 without test-set selection: per seed and head, the test accuracy
    (``col``) of the configuration with the best validation accuracy; ae against mlp, paired
    by seed."""
    df = _s_runs(side, col)
    best = df.loc[df.groupby(["seed", "head"])["val"].idxmax()].set_index(["head", "seed"])[col]
    seeds = sorted(set(best.loc["ae"].index) & set(best.loc["mlp"].index))
    return V.paired_verdict([best.loc[("ae", s)] for s in seeds], [best.loc[("mlp", s)] for s in seeds])


# --------------------------------------------------------------------------- the claims
def _ranks(side: dict) -> dict[str, list[dict]]:
    """Per head kind, the per-seed ranks of G Fig. 2's sidecar (rank_h, rank_z, rankme_h, m, d)."""
    ranks = side.get("ranks")
    if not ranks:
        raise MissingData("no per-seed ranks")
    return ranks


def g_rank_deficit(side: dict) -> V.Verdict:
    """G Fig. 2, rank(Z) < rank(H): forced when dim(z) < rank(H) for every run."""
    rows = [r for kind, rs in _ranks(side).items() if kind != "none" for r in rs]
    if all(r["d"] < r["rank_h"] for r in rows):
        dz, rh = sorted({r["d"] for r in rows}), sorted({r["rank_h"] for r in rows})
        return V.by_construction(f"dim(z) {dz} < rank(H) {rh}: rank(Z) <= dim(z) < rank(H)")
    return V.paired_verdict([r["rank_h"] for r in rows], [r["rank_z"] for r in rows])


def g_rank_below_m(side: dict) -> V.Verdict:
    """G §3: with a head, rank(H) < m (the backbone's features are rank-deficient too)."""
    rows = [r for kind, rs in _ranks(side).items() if kind != "none" for r in rs]
    return V.paired_verdict([r["m"] for r in rows], [r["rank_h"] for r in rows])


def g_collapse_precondition(side: dict) -> V.Verdict:
    """G Fig. 1 needs the no-head model to collapse (lower effective rank than with a head)."""
    ranks = _ranks(side)
    v = V.paired_verdict([r["rankme_h"] for r in ranks["none"]], [r["rankme_h"] for r in ranks["mlp"]], "<")
    if v.verdict == V.AGREES:
        return V.Verdict(V.NOT_RESOLVED, reason="collapse present; Fig. 1's clustering is a picture "
                                                "without a per-seed measure here")
    return V.not_testable("a collapsed no-head h (RankMe(h) below the MLP-head model's)",
                          f"RankMe(h) none − MLP {v.mean:+.2f} (n {v.n}): no collapse")


CLAIMS: list[Claim] = []


def _add(source, text, output, fn):
    CLAIMS.append(Claim(source, text, output, fn))


F3 = "g_fig3_linear_eval"
F2 = "g_fig2_spectrum_rank"
_add("G Fig. 1", "without a head h clusters tightly (collapse)", F2, g_collapse_precondition)
_add("G Fig. 2", "rank(Z) < rank(H) with a head", F2, g_rank_deficit)
_add("G Fig. 2", "rank(H) < m with a head", F2, g_rank_below_m)
_PROBES = (("linear", "linear probe"), ("knn", "kNN"))
for _p, _pn in _PROBES:
    _add("G Fig. 3", f"a linear head improves h over no head ({_pn})", F3,
         lambda s, p=_p: V.paired_verdict(g_head_acc(s, "linear", p), g_head_acc(s, "none", p)))
    _add("G Fig. 3", f"an MLP head improves h over no head ({_pn})", F3,
         lambda s, p=_p: V.paired_verdict(g_head_acc(s, "mlp", p), g_head_acc(s, "none", p)))
    _add("G Fig. 3", f"the MLP head beats the linear head on h ({_pn})", F3,
         lambda s, p=_p: V.paired_verdict(g_head_acc(s, "mlp", p), g_head_acc(s, "linear", p)))
    _add("G Fig. 3", f"training with an MLP head improves h over the untrained backbone ({_pn})", F3,
         lambda s, p=_p: V.paired_verdict(g_head_acc(s, "mlp", p), g_init_acc(s, p)))
F4 = "g_fig4_nullspace"


def g_fig4_acc(side: dict, kind: str, probe: str, target: str) -> list[float]:
    """Per-seed accuracy (%) on ``target`` of G Fig. 4's ``kind`` head (its sidecar)."""
    evs = (side.get("evaluations") or {}).get(kind)
    if not evs:
        raise MissingData(f"no per-seed evaluations of the {kind} head")
    return _pct(e["accuracy"][probe].get(target) for e in evs)


for _k, _kn in (("linear-nobias", "linear head without bias, as G"),
                ("linear", "linear head with bias, ours"), ("mlp", "MLP head, ours")):
    for _p, _pn in _PROBES:
        _add("G Fig. 4", f"h beats h_n ({_kn}, {_pn})", F4,
             lambda s, p=_p, k=_k: V.paired_verdict(g_fig4_acc(s, k, p, "h"), g_fig4_acc(s, k, p, "h_n")))
        _add("G Fig. 4", f"h_n beats z ({_kn}, {_pn})", F4,
             lambda s, p=_p, k=_k: V.paired_verdict(g_fig4_acc(s, k, p, "h_n"), g_fig4_acc(s, k, p, "z")))
        _add("G Fig. 4", f"h_n far above chance, 10 % ({_kn}, {_pn})", F4,
             lambda s, p=_p, k=_k: V.above_constant(g_fig4_acc(s, k, p, "h_n"), 10.0))
        if _k != "mlp":  # control with a known answer: z is an invertible map of h_r
            _add("G Fig. 4", f"control: the probe scores h_r and z = A h_r equally ({_kn}, {_pn})", F4,
                 lambda s, p=_p, k=_k: V.paired_verdict(g_fig4_acc(s, k, p, "h_r"),
                                                        g_fig4_acc(s, k, p, "z"), "="))

T1 = "g_table1_bilevel"
for _p, _pn in (("knn", "kNN"), ("linear", "linear probe")):
    for _other in ("SimCLR", "Random Proj.", "DirectCLR"):
        _add("G Table 1", f"bilevel beats {_other} (MLP head, {_pn})", T1,
             lambda s, p=_p, o=_other: V.paired_verdict(method_acc(s, "Ours (bilevel)", p),
                                                        method_acc(s, o, p)))

T2 = "g_table2_fixed_moving"
_FIXED_MOVING = ("Fixed: random init", "Fixed: DirectCLR", "Fixed: pre-trained SimCLR",
                 "Moving: PCA top-32", "Moving: PCA bottom-32", "Moving: slow-single",
                 "Moving: slow-optimal")


def _t2(a, b, rel=">"):
    return lambda s: V.paired_verdict(method_acc(s, a, "knn"), method_acc(s, b, "knn"), rel)


#: G §6: "a fixed projection yields better generalization in the early stages of training,
#: a learnable projection head eventually outperforms it". The early stage is taken as a
#: training loss that still fell by more than this fraction over the last epoch.
EARLY_LOSS_DROP = 0.01


def trained_past_early_stage(side: dict, label: str, verdict: V.Verdict) -> V.Verdict:
    """``verdict`` on a "trainable beats fixed" claim, or *not testable at this scale* (its
    numbers kept) when ``label``'s runs were still in the early stage (:data:`EARLY_LOSS_DROP`)."""
    from dataclasses import replace

    record = (side.get("training") or {}).get(label) or {}
    drops = [d for d in record.get("last_epoch_loss_drop") or [] if d is not None]
    if not drops:
        raise MissingData(f"no training-loss record of '{label}'")
    drop, epochs = sum(drops) / len(drops), max(e for e in record["epochs"] if e is not None)
    if drop <= EARLY_LOSS_DROP:
        return verdict
    early = V.not_testable(
        "training past G's early stage, in which a fixed head generalises better (taken as a "
        f"loss falling < {100 * EARLY_LOSS_DROP:g} % over the last epoch)",
        f"the loss of '{label}' fell {100 * drop:.1f} % over its last epoch (epoch {epochs}, "
        f"mean of {len(drops)} runs)")
    return replace(verdict, verdict=early.verdict, reason=early.reason)


def _t2_trainable(row):
    return lambda s: trained_past_early_stage(s, "Trainable: SimCLR",
                                              _t2("Trainable: SimCLR", row)(s))


_add("G Table 2", "bilevel beats SimCLR (linear head, kNN)", T2, _t2("Trainable: Ours (bilevel)",
                                                                 "Trainable: SimCLR"))
for _row in _FIXED_MOVING:
    _add("G Table 2", f"trainable SimCLR beats '{_row}' (kNN)", T2, _t2_trainable(_row))
for _row in _FIXED_MOVING:
    _add("G Table 2", f"'{_row}' beats no head (kNN)", T2, _t2(_row, "No projection"))
_add("G Table 2", "DirectCLR ≈ fixed random head (kNN)", T2,
     _t2("Fixed: DirectCLR", "Fixed: random init", "="))
_add("G Table 2", "fixed pre-trained head ≈ fixed random head (kNN)", T2,
     _t2("Fixed: pre-trained SimCLR", "Fixed: random init", "="))
for _row in ("Moving: PCA top-32", "Moving: PCA bottom-32"):
    _add("G Table 2", f"'{_row}' is below the fixed random head (kNN)", T2,
         _t2(_row, "Fixed: random init", "<"))
_add("G Table 2", "slow-optimal is below slow-single (kNN)", T2,
     _t2("Moving: slow-optimal", "Moving: slow-single", "<"))

#: paper S's claims are judged under both probe protocols of the S tables: the cpu scale's
#: `fast` probe (trained on the train split) and S's own (§3.6, trained on the test split)
S_PROTOCOL_SUFFIX = {"test": "", "test_s": " [S's probe]"}
for _col, _sfx in S_PROTOCOL_SUFFIX.items():
    _add("S Table 2", f"ae beats mlp at the peak (selected on validation, per seed){_sfx}",
         "s_table2_peak", lambda s, c=_col: s_peak_by_validation(s, c))
    _add("S Table 3", f"ae beats mlp on average (same configurations){_sfx}", "s_table3_stats",
         lambda s, c=_col: s_paired(s, {"head": "ae"}, {"head": "mlp"}, col=c))
    _add("S Table 3", f"ae has the smaller midspread (IQR over configurations, per seed){_sfx}",
         "s_table3_stats", lambda s, c=_col: s_per_seed(s, _iqr, relation="<", col=c))
    _add("S Table 4", f"narrow ae (dim(g) 16) beats the wider mlp (dim(g) 32){_sfx}", "s_table4_width",
         lambda s, c=_col: s_paired(s, {"head": "ae", "dim_g": 16}, {"head": "mlp", "dim_g": 32}, col=c))
    _add("S Table 4", f"narrow ae (dim(z) 16) beats the wider mlp (dim(z) 32){_sfx}", "s_table4_width",
         lambda s, c=_col: s_paired(s, {"head": "ae", "dim_z": 16}, {"head": "mlp", "dim_z": 32}, col=c))
    for _act in ("relu", "silu", "sigmoid"):
        _add("S Table 5", f"ae prefers tanh over {_act}{_sfx}", "s_table5_activation",
             lambda s, a=_act, c=_col: s_paired(s, {"head": "ae", "activation": "tanh"},
                                                {"head": "ae", "activation": a}, col=c))
    for _act in ("relu", "silu", "tanh"):
        _add("S Table 5", f"mlp prefers sigmoid over {_act}{_sfx}", "s_table5_activation",
             lambda s, a=_act, c=_col: s_paired(s, {"head": "mlp", "activation": "sigmoid"},
                                                {"head": "mlp", "activation": a}, col=c))
    _add("S Table 6", f"a frozen autoencoder embedding beats a trainable one{_sfx}", "s_table6_frozen",
         lambda s, c=_col: s_paired(s, {"frozen": True}, {"frozen": False}, col=c))


# --------------------------------------------------------------------------- the table
def judge_all(folder: Path) -> list[dict]:
    """One row per claim: source, claim, output, verdict and its evidence."""
    rows = []
    for c in CLAIMS:
        path = folder / f"{c.output}.json"
        row = {"source": c.source, "claim": c.text, "output": c.output}
        try:
            if not path.is_file():
                raise MissingData(f"{path.name} not found")
            v = c.judge(json.loads(path.read_text()))
        except MissingData as exc:
            v = V.Verdict(NO_DATA, reason=f"{c.output}: {exc}; rerun the script that writes it")
        rows.append({**row, **v.to_dict()})
    return rows


def _num(x, fmt="{:+.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def markdown(rows: list[dict]) -> str:
    """The claim table as GitHub Markdown."""
    lines = ["| source | claim | verdict | mean diff ± SD (pt) | 95 % interval | n | paper's side | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r["mean"] is None else f"{r['mean']:+.2f} ± {_num(r['sd'], '{:.2f}')}"
        ci = "—" if r["ci_low"] is None else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        side = "—" if r["paper_side"] is None else f"{r['paper_side']}/{r['n']}"
        lines.append(f"| {r['source']} | {r['claim']} | **{r['verdict']}** | {diff} | {ci} | "
                     f"{r['n'] or '—'} | {side} | {r['reason']} |")
    return "\n".join(lines) + "\n"


def readme_block(rows: list[dict]) -> str:
    """The text that stands between the claim markers of figures/README.md."""
    return f"{MARK_BEGIN}\n{markdown(rows)}{MARK_END}"


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the claim markers replaced by ``block``."""
    i, j = text.find(MARK_BEGIN), text.find(MARK_END)
    if i < 0 or j < i:
        raise ValueError(f"figures/README.md has no {MARK_BEGIN} … {MARK_END} block")
    return text[:i] + block + text[j + len(MARK_END):]


TABLE_BEGIN, TABLE_END = "<!-- table ", "<!-- /table -->"
PROV_BEGIN, PROV_END = "<!-- provenance -->", "<!-- /provenance -->"


def provenance_table(figures: Path, scales: tuple[str, ...] = ("cpu", "cpu-long")) -> str:
    """One row per committed output (its sidecar JSON): scale, output, commit (``+dirty`` when
    the checkout had uncommitted changes), machine, threads, date, seeds, the script's wall
    time and the summed training time of its runs (None: not recorded)."""
    lines = ["| scale | output | commit | machine | threads | date | seeds | script (s) | "
             "its runs' training (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for scale in scales:
        for path in sorted((figures / scale).glob("*.json")):
            side = json.loads(path.read_text())
            if not isinstance(side, dict) or "git_commit" not in side:
                continue  # claims.json: made from the sidecars, not a measurement
            commit = str(side["git_commit"])
            commit = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
            train = side.get("runs_training_s")
            lines.append(f"| {scale} | {side.get('output', path.stem)} | {commit} | "
                         f"{side.get('machine', '—')} | {side.get('threads', '—')} | "
                         f"{side.get('date', '—')} | {','.join(map(str, side.get('seeds', [])))} | "
                         f"{side.get('wall_time_s', '—')} | {'—' if train is None else f'{train:,.0f}'} |")
    return "\n".join(lines) + "\n"


def replace_provenance(text: str, figures: Path) -> str:
    """``text`` with the part between the provenance markers replaced by
    :func:`provenance_table` (left alone when the markers are absent)."""
    i, j = text.find(PROV_BEGIN), text.find(PROV_END)
    if i < 0 or j < i:
        return text
    return text[:i] + PROV_BEGIN + "\n" + provenance_table(figures) + text[j:]


def output_table(folder: Path, name: str) -> str:
    """The Markdown table (its ``|`` lines) of the output ``folder/name.md`` (a name with a
    scale, ``cpu-long/NAME``, is read beside ``folder``)."""
    path = (folder.parent if "/" in name else folder) / f"{name}.md"
    if not path.is_file():
        raise ValueError(f"figures/README.md quotes {name}, but {path} does not exist")
    return "".join(ln + "\n" for ln in path.read_text().splitlines() if ln.startswith("|"))


def replace_tables(text: str, folder: Path) -> str:
    """``text`` with every quoted output table (``<!-- table NAME -->`` … ``<!-- /table -->``)
    replaced by the current table of ``folder/NAME.md``: the README never holds a hand-typed
    copy of a result table."""
    out, pos = [], 0
    while (i := text.find(TABLE_BEGIN, pos)) >= 0:
        head_end = text.index("-->", i) + 3
        name = text[i + len(TABLE_BEGIN):head_end - 3].strip()
        j = text.find(TABLE_END, head_end)
        if j < 0:
            raise ValueError(f"figures/README.md: {TABLE_BEGIN}{name} --> has no {TABLE_END}")
        out += [text[pos:head_end], "\n", output_table(folder, name)]
        pos = j
    return "".join(out) + text[pos:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="cpu", help="figures/<scale>/ to read (default cpu)")
    ap.add_argument("--figures", default=str(ROOT / "figures"), help="the figures folder")
    ap.add_argument("--readme", action="store_true", help="rewrite the claim table in figures/README.md")
    ap.add_argument("--skip-missing", action="store_true",
                    help="leave out the claims whose numbers the outputs lack (a scale that "
                         "runs only some scripts, such as cpu-long)")
    args = ap.parse_args(argv)
    folder = Path(args.figures) / args.scale
    if not folder.is_dir():
        print(f"error: --scale {args.scale}: {folder} is not a folder", file=sys.stderr)
        return 2
    import pandas as pd

    rows = judge_all(folder)
    skipped = ""
    if args.skip_missing:
        kept = [r for r in rows if r["verdict"] != NO_DATA]
        skipped = (f"\n{len(rows) - len(kept)} claims whose outputs are not made at this scale "
                   "are left out.\n")
        rows = kept
    pd.DataFrame(rows).to_csv(folder / "claims.csv", index=False)
    (folder / "claims.md").write_text(
        f"# Claims of papers G and S at scale `{args.scale}`\n\n"
        + V.__doc__.split("\n\n", 1)[1] + "\n" + markdown(rows) + skipped)
    (folder / "claims.json").write_text(json.dumps(rows, indent=1))
    if args.readme:
        readme = Path(args.figures) / "README.md"
        text = replace_tables(replace_block(readme.read_text(), readme_block(rows)), folder)
        readme.write_text(replace_provenance(text, Path(args.figures)))
    counts = pd.Series([r["verdict"] for r in rows]).value_counts().to_dict()
    print(f"{len(rows)} claims: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
