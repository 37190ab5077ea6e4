"""The verdict rule (analyses/verdicts.py) against scipy's own t-test interval and hand-made
cases, and the claim table (analyses/claims.py): like-for-like pairing on a hand-made S grid,
and figures/README.md's claim table equal to the one generated from the committed outputs."""

import json
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))

import claims  # noqa: E402
import verdicts as V  # noqa: E402


@pytest.mark.parametrize("d", [[1.0, 2.0, 3.0], [0.4, 0.5, 0.3, 0.45, 0.6], [-2.0, -1.5, -2.5]])
def test_interval_is_scipys_one_sample_t_interval(d):
    v = V.paired_verdict(d, [0.0] * len(d))
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert v.ci_low == pytest.approx(ci.low, abs=1e-12) and v.ci_high == pytest.approx(ci.high, abs=1e-12)
    assert v.mean == pytest.approx(sum(d) / len(d)) and v.n == len(d)
    assert v.sd == pytest.approx(stats.tstd(d))


def test_hand_computed_interval():
    # d = 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302653 -> 2 ± 2.484138 contains 0
    v = V.paired_verdict([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])
    assert v.ci_low == pytest.approx(2 - 4.302652729911275 / math.sqrt(3), abs=1e-9)
    assert v.verdict == V.NOT_RESOLVED and v.paper_side == 3


def test_verdicts_follow_the_side_of_the_interval():
    assert V.paired_verdict([1.1, 1.0, 1.2], [0, 0, 0], ">").verdict == V.AGREES
    assert V.paired_verdict([1.1, 1.0, 1.2], [0, 0, 0], "<").verdict == V.DISAGREES
    assert V.paired_verdict([-1.1, -1.0, -1.2], [0, 0, 0], "<").verdict == V.AGREES
    assert V.paired_verdict([-1.1, -1.0, -1.2], [0, 0, 0], ">").verdict == V.DISAGREES
    # equality: refuted when the interval excludes 0, never "agrees" on noise alone
    assert V.paired_verdict([1.1, 1.0, 1.2], [0, 0, 0], "=").verdict == V.DISAGREES
    assert V.paired_verdict([0.1, -0.1, 0.05], [0, 0, 0], "=").verdict == V.NOT_RESOLVED


def test_exact_ties_and_degenerate_inputs():
    tie = V.paired_verdict([64, 64, 64], [64, 64, 64], ">")
    assert tie.verdict == V.DISAGREES and tie.reason == "equal in every seed"
    assert V.paired_verdict([64, 64], [64, 64], "=").verdict == V.AGREES
    one = V.paired_verdict([0.9], [0.1])
    assert one.verdict == V.NOT_RESOLVED and one.ci_low is None and one.n == 1
    assert V.paired_verdict([None, 1.0, 2.0], [0.0, 0.5, 1.0]).n == 2  # a missing seed drops its pair
    with pytest.raises(ValueError, match="same seeds"):
        V.paired_verdict([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="relation"):
        V.paired_verdict([1.0], [1.0], ">=")
    assert V.above_constant([60.0, 61.0, 59.0], 10.0).verdict == V.AGREES
    assert V.by_construction("dim(z) 32 < rank(H) 64").verdict == V.BY_CONSTRUCTION
    assert V.not_testable("collapse", "RankMe 41 of 64").reason == "needs collapse; measured RankMe 41 of 64"


def _run(head, act, g, z, seed, test, zscore=False, frozen=True):
    return {"head": head, "activation": act, "dim_g": g, "dim_z": z, "zscore": zscore,
            "frozen": frozen, "seed": seed, "val": test, "test": test}


def test_s_comparisons_are_like_for_like():
    # ae z16 exists for every activation, mlp z32 only with sigmoid: pooling would average
    # ae's strong tanh runs in; like for like compares sigmoid with sigmoid only
    runs = []
    for seed in range(3):
        runs += [_run("ae", "sigmoid", 32, 16, seed, 70.0 + seed), _run("ae", "tanh", 32, 16, seed, 90.0),
                 _run("mlp", "sigmoid", 32, 32, seed, 71.0 + seed), _run("mlp", "tanh", 32, 16, seed, 50.0)]
    v = claims.s_paired({"runs": runs}, {"head": "ae", "dim_z": 16}, {"head": "mlp", "dim_z": 32})
    assert v.mean == pytest.approx(-1.0) and v.n == 3 and v.sd == pytest.approx(0.0)
    assert v.verdict == V.DISAGREES  # -1 in every seed: the interval is the point -1
    with pytest.raises(claims.MissingData):
        claims.s_paired({"runs": runs}, {"head": "ae", "dim_g": 99}, {"head": "mlp"})


def test_s_claims_are_judged_under_each_probe_protocol():
    # the same runs scored by two probes: under `fast` ae leads by +1 in every seed, under
    # S's probe it trails by 2; each claim reads its own column, and a sidecar without
    # the second column says so instead of judging
    runs = []
    for seed in range(3):
        runs += [_run("ae", "sigmoid", 32, 16, seed, 71.0 + seed) | {"test_s": 60.0 + seed},
                 _run("mlp", "sigmoid", 32, 16, seed, 70.0 + seed) | {"test_s": 62.0 + seed}]
    fast = claims.s_paired({"runs": runs}, {"head": "ae"}, {"head": "mlp"})
    s = claims.s_paired({"runs": runs}, {"head": "ae"}, {"head": "mlp"}, col="test_s")
    assert (fast.mean, fast.verdict) == (pytest.approx(1.0), V.AGREES)
    assert (s.mean, s.verdict) == (pytest.approx(-2.0), V.DISAGREES)
    old = [{k: v for k, v in r.items() if k != "test_s"} for r in runs]
    with pytest.raises(claims.MissingData, match="test_s"):
        claims.s_paired({"runs": old}, {"head": "ae"}, {"head": "mlp"}, col="test_s")
    texts = [c.text for c in claims.CLAIMS if c.source.startswith("S ")]
    assert len(texts) == 2 * len([x for x in texts if not x.endswith("[S's probe]")])


def test_s_peak_is_selected_on_validation():
    runs = [_run("ae", "relu", 32, 16, 0, 80.0) | {"val": 60.0}, _run("ae", "tanh", 32, 16, 0, 70.0),
            _run("mlp", "relu", 32, 16, 0, 75.0),
            _run("ae", "relu", 32, 16, 1, 72.0), _run("mlp", "relu", 32, 16, 1, 71.0)]
    v = claims.s_peak_by_validation({"runs": runs})
    assert v.n == 2 and v.mean == pytest.approx(((70 - 75) + (72 - 71)) / 2)


def test_readme_claim_table_is_generated_from_the_committed_outputs():
    rows = claims.judge_all(ROOT / "figures" / "cpu")
    assert len(rows) == len(claims.CLAIMS)
    assert all(r["verdict"] in V.VERDICTS for r in rows), [r for r in rows if r["verdict"] not in V.VERDICTS]
    readme = (ROOT / "figures" / "README.md").read_text()
    assert claims.readme_block(rows) in readme, "rerun: python analyses/claims.py --scale cpu --readme"
    committed = json.loads((ROOT / "figures" / "cpu" / "claims.json").read_text())
    assert [r["verdict"] for r in committed] == [r["verdict"] for r in rows]


def test_trainable_beats_fixed_needs_training_past_the_early_stage():
    acc = {"Trainable: SimCLR": {"knn": [0.70, 0.71, 0.72]},
           "Fixed: random init": {"knn": [0.68, 0.69, 0.70]}}
    claim = next(c for c in claims.CLAIMS if c.text == "trainable SimCLR beats 'Fixed: random init' (kNN)")
    # losses still falling 6.5 % in the last epoch: G's early stage; the numbers stay, the verdict is withheld
    early = {"accuracy": acc, "training": {"Trainable: SimCLR": {"epochs": [3, 3, 3],
                                                                "last_epoch_loss_drop": [0.06, 0.07, 0.065]}}}
    v = claim.judge(early)
    assert v.verdict == V.NOT_TESTABLE and v.mean == pytest.approx(2.0)
    assert "fell 6.5 % over its last epoch (epoch 3, mean of 3 runs)" in v.reason
    late = {"accuracy": acc, "training": {"Trainable: SimCLR": {"epochs": [30] * 3,
                                                               "last_epoch_loss_drop": [0.003] * 3}}}
    assert claim.judge(late).verdict == V.AGREES  # +2 in every seed
    with pytest.raises(claims.MissingData, match="training-loss"):
        claim.judge({"accuracy": acc})


def test_a_partial_scale_leaves_out_the_claims_it_has_no_data_for(tmp_path, capsys):
    # one output of a long scale: only its claims are judged, the others are left out (and said so)
    (tmp_path / "long").mkdir()
    runs = [_run(h, "sigmoid", 32, 16, seed, acc + seed) | {"frozen": f}
            for seed in range(3) for h, f, acc in (("ae", True, 72.0), ("ae", False, 70.0))]
    (tmp_path / "long" / "s_table6_frozen.json").write_text(json.dumps({"runs": runs}))
    assert claims.main(["--figures", str(tmp_path), "--scale", "long", "--skip-missing"]) == 0
    rows = json.loads((tmp_path / "long" / "claims.json").read_text())
    assert [r["claim"] for r in rows] == ["a frozen autoencoder embedding beats a trainable one"]
    assert rows[0]["verdict"] == V.AGREES and rows[0]["mean"] == pytest.approx(2.0)
    md = (tmp_path / "long" / "claims.md").read_text()
    assert f"{len(claims.CLAIMS) - 1} claims whose outputs are not made at this scale are left out" in md
    assert capsys.readouterr().out.strip() == "1 claims: agrees 1"


def test_quoted_output_tables_are_the_outputs_own(tmp_path):
    (tmp_path / "t.md").write_text("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nnote\n")
    text = "x\n<!-- table t -->\n| a | b |\n| 9 | 9 |\n<!-- /table -->\ny\n"
    assert claims.replace_tables(text, tmp_path) == (
        "x\n<!-- table t -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /table -->\ny\n")
    with pytest.raises(ValueError, match="quotes gone"):
        claims.replace_tables("<!-- table gone -->\n<!-- /table -->", tmp_path)


def test_readme_quotes_the_committed_tables_and_their_provenance():
    readme = (ROOT / "figures" / "README.md").read_text()
    assert claims.replace_tables(readme, ROOT / "figures" / "cpu") == readme, \
        "rerun: python analyses/claims.py --scale cpu --readme"
    assert claims.PROV_BEGIN in readme
    assert claims.replace_provenance(readme, ROOT / "figures") == readme, \
        "rerun: python analyses/claims.py --scale cpu --readme"


def test_provenance_rows_come_from_the_sidecars(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "a.json").write_text(json.dumps(
        {"output": "a", "git_commit": "0123456789abcdef+dirty", "machine": "M, 2 cores", "threads": 1,
         "date": "2026-12-01", "seeds": [0, 1], "wall_time_s": 2.5, "runs_training_s": 1234.5}))
    (tmp_path / "cpu" / "claims.json").write_text("[]")
    table = claims.provenance_table(tmp_path, ("cpu",))
    assert table.splitlines()[2:] == [
        "| cpu | a | 0123456+dirty | M, 2 cores | 1 | 2026-12-01 | 0,1 | 2.5 | 1,234 |"]


def test_missing_outputs_say_so(tmp_path):
    rows = claims.judge_all(tmp_path)
    assert {r["verdict"] for r in rows} == {claims.NO_DATA}
    assert "not found" in rows[0]["reason"]


def test_committed_outputs_come_from_one_clean_commit():
    sides = [json.loads(p.read_text()) for scale in ("cpu", "cpu-long")
             for p in sorted((ROOT / "figures" / scale).glob("*.json"))]
    commits = {s["git_commit"] for s in sides if isinstance(s, dict) and "git_commit" in s}
    assert len(commits) == 1 and not next(iter(commits)).endswith("+dirty"), commits
