"""The analysis scripts end to end at the `smoke` scale (generated data, seconds per run):
shared and reused runs, the main job's table, outputs with their sidecar, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, tmp):
    cmd = [sys.executable, str(ROOT / "analyses" / script), "--scale", "smoke", "--quiet",
           "--runs", str(tmp / "runs"), "--out", str(tmp / "figures"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("analyses")


def test_main_job_prints_g_table_and_reuses_runs(work):
    p = run("main_job.py", "--no-report", tmp=work)
    assert p.returncode == 0, p.stderr
    assert "rank h" in p.stdout and "kNN h_n" in p.stdout and "lin z" in p.stdout
    assert "kNN(h) on the test split: trained (MLP head)" in p.stdout
    # the linear head m -> 8 on m = 64 features: rank z <= 8 and a deficit of at least 56
    row = next(ln for ln in p.stdout.splitlines() if ln.startswith("linear head"))
    rank_h, rank_z, deficit = (int(v) for v in row.split()[2:5])  # "linear head" is 2 words
    assert rank_z <= 8 and deficit == rank_h - rank_z >= 56
    # through the MLP head, layer by layer, and the monitor that watched each run train
    assert "Through the MLP head" in p.stdout and "kNN accuracy" in p.stdout.split("Through")[1]
    for kind in ("none", "linear", "mlp"):
        lines = [json.loads(s) for s in open(work / "runs" / "smoke" / "g" / f"{kind}-s0"
                                                  / "head_monitor.jsonl")]
        assert [ln["epoch"] for ln in lines] == [0, 1]
        assert all(0 <= ln["knn_h"] <= 1 and ln["rank_h"] >= ln["rank_z"] for ln in lines)
    again = run("main_job.py", "--no-report", tmp=work)
    assert again.returncode == 0 and again.stderr.count("done already") == 3
    assert again.stdout.split("main job done")[0] == p.stdout.split("main job done")[0]


def test_figure_script_writes_png_pdf_and_sidecar(work):
    p = run("g_fig2_spectrum_rank.py", "--seeds", "0", tmp=work)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("done already") == 3  # the main job's runs are shared
    out = work / "figures" / "smoke"
    for name in ("g_fig2_spectrum_rank.png", "g_fig2_spectrum_rank.pdf", "g_fig2_ranks.csv",
                 "g_fig2_ranks.md"):
        assert (out / name).stat().st_size > 0
    meta = json.loads((out / "g_fig2_spectrum_rank.json").read_text())
    assert meta["scale"] == "smoke" and meta["seeds"] == [0]
    assert "analyses/g_fig2_spectrum_rank.py --scale smoke" in meta["command"]
    runs = meta["configs"]["runs"]
    assert set(runs) == {"g/none-s0", "g/linear-s0", "g/mlp-s0"}
    # shared settings are written once; each run lists only what differs
    assert runs["g/linear-s0"]["head.kind"] == "linear" and runs["g/mlp-s0"]["head.kind"] == "mlp"
    assert meta["configs"]["common"]["seed"] == 0 and "seed" not in runs["g/linear-s0"]
    assert {"git_commit", "machine", "date", "wall_time_s"} <= set(meta)
    assert not list(out.glob(".*tmp"))


def test_s_table6_trains_autoencoder_heads_frozen_and_not(work):
    p = run("s_table6_frozen.py", "--seeds", "0", tmp=work)
    assert p.returncode == 0, p.stderr
    md = (work / "figures" / "smoke" / "s_table6_frozen.md").read_text()
    assert "| frozen |" in md and "| not frozen |" in md
    assert (work / "runs" / "smoke" / "s" / "ae-sigmoid-g16-z8-raw-s0" / "autoencoder"
            / "autoencoder.pt").exists()


def test_bad_input_is_one_line(work):
    p = run("g_fig3_linear_eval.py", "--seeds", "zero", tmp=work)
    assert p.returncode == 2 and p.stderr.strip() == ("error: --seeds takes a comma list of "
                                                      "integers, got 'zero'")
    p = run("g_fig1_tsne.py", "--scale", "paper", tmp=work)
    assert p.returncode == 2 and "--data-root" in p.stderr and "Traceback" not in p.stderr


def test_threads_option_sets_and_records_the_thread_count(tmp_path):
    p = run("g_fig3_linear_eval.py", "--threads", "0", tmp=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "error: --threads takes a positive integer, got 0"
    assert not (tmp_path / "runs").exists()
    p = run("s_table6_frozen.py", "--seeds", "0", "--threads", "2", tmp=tmp_path)
    assert p.returncode == 0, p.stderr
    side = json.loads((tmp_path / "figures" / "smoke" / "s_table6_frozen.json").read_text())
    assert side["threads"] == 2 and side["runs_training_s"] > 0


def test_a_device_name_mistake_is_refused_before_any_run(tmp_path):
    p = run("g_fig3_linear_eval.py", "--device", "gpu", tmp=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == ("error: unknown --device 'gpu'; use cpu, cuda "
                                                      "or cuda:N")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_table2_rows_are_checked_before_any_run(tmp_path):
    p = run("g_table2_fixed_moving.py", "--rows", "none,linear-fixed-randon", tmp=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("error: --rows: unknown run 'linear-fixed-randon'; "
                                                     "valid: none, linear-fixed-random, directclr")
    p = run("g_table2_fixed_moving.py", "--rows", "none,linear-fixed-random", tmp=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == ("error: --rows must include 'linear' (the "
                                                      "differences are taken to it)")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_a_folder_with_another_config_is_refused(work):
    p = run("main_job.py", "--no-report", tmp=work)  # makes sure the runs exist
    cfg = work / "runs" / "smoke" / "g" / "mlp-s0"
    assert cfg.exists()
    import shutil

    other = work / "other"
    shutil.copytree(work / "runs", other / "runs")
    # pretend the run was made with another head width
    sys.path.insert(0, str(ROOT))
    import torch

    ck_path = other / "runs" / "smoke" / "g" / "mlp-s0" / "last.pt"
    ck = torch.load(ck_path, weights_only=True)  # our format is plain data
    ck["config"]["head"]["hidden_dim"] = 99
    torch.save(ck, ck_path)
    p = run("main_job.py", "--no-report", tmp=other)
    assert p.returncode == 2 and "holds a run with another config: head.hidden_dim" in p.stderr
    assert "Traceback" not in p.stderr


def test_compact_configs_rebuild_every_full_config():
    sys.path.insert(0, str(ROOT / "analyses"))
    import outputs

    a = {"seed": 0, "head": {"kind": "mlp", "out_dim": 8}, "lr": 0.1}
    b = {"seed": 1, "head": {"kind": "mlp", "out_dim": 4}, "lr": 0.1}
    out = outputs.compact_configs({"a": a, "b": b})
    assert out["common"] == {"head.kind": "mlp", "lr": 0.1}
    assert out["runs"] == {"a": {"seed": 0, "head.out_dim": 8}, "b": {"seed": 1, "head.out_dim": 4}}
    assert outputs.compact_configs({}) == {"common": {}, "runs": {}}


def test_grouped_bars_draws_mean_and_sample_std_per_group():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sys.path.insert(0, str(ROOT / "analyses"))
    import plotting

    fig, ax = plt.subplots()
    series = {"a": [[1.0, 2.0, 6.0], [4.0]], "b": [[], [3.0, 5.0]]}
    plotting.grouped_bars(ax, ["g0", "g1"], series, width=0.8)
    bars = ax.patches
    heights = [b.get_height() for b in bars]
    # series a: means 3 and 4; series b: no bar (NaN) in g0, mean 4 in g1
    assert heights[0] == pytest.approx(3.0) and heights[1] == pytest.approx(4.0)
    assert np.isnan(heights[2]) and heights[3] == pytest.approx(4.0)
    # bars of a group sit side by side, each 0.4 wide, centred on the group's tick
    assert [b.get_width() for b in bars] == pytest.approx([0.4] * 4)
    assert [b.get_x() for b in bars] == pytest.approx([-0.4, 0.6, 0.0, 1.0])
    # error bar of a/g0: sample std (ddof=1) of 1, 2, 6 = sqrt(7); a single value gets none
    from matplotlib.container import BarContainer

    first = next(c for c in ax.containers if isinstance(c, BarContainer))
    segs = first.errorbar.lines[2][0].get_segments()
    lengths = [s[1][1] - s[0][1] for s in segs]
    assert lengths[0] == pytest.approx(2 * np.sqrt(7)) and lengths[1] == pytest.approx(0.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g0", "g1"]
    plt.close(fig)


def test_s_tables_average_runs_and_spread_over_seeds():
    import pandas as pd

    sys.path.insert(0, str(ROOT / "analyses"))
    import s_table2_peak
    import s_table5_activation

    # two seeds x two activations x two projectors; test accuracies chosen by hand
    base = {"activation": "relu", "dim_g": 32, "dim_z": 16}
    rows = []
    for seed, (ae_relu, ae_tanh, mlp_relu, mlp_tanh) in ((0, (70, 74, 71, 69)), (1, (72, 80, 71, 73))):
        for head, act, acc in (("ae", "relu", ae_relu), ("ae", "tanh", ae_tanh),
                               ("mlp", "relu", mlp_relu), ("mlp", "tanh", mlp_tanh)):
            rows.append({"head": head, "activation": act, "dim_g": 32, "dim_z": 16, "zscore": False,
                         "frozen": True, "seed": seed, "test": float(acc), "val": float(100 - acc),
                         "test_s": float(acc) - 10})
    # a run off the base widths: like for like, it takes no part in the activation table
    rows.append({"head": "ae", "activation": "tanh", "dim_g": 16, "dim_z": 16, "zscore": False,
                 "frozen": True, "seed": 0, "test": 10.0, "val": 0.0, "test_s": 0.0})
    df = pd.DataFrame(rows)
    by_act = {r["activation"]: r for r in s_table5_activation.activation_rows(df, base)}
    # ae with tanh: runs 74 and 80 -> average 77; one run per seed, so the seed spread is
    # the sample std of (74, 80) = sqrt(18)
    assert by_act["tanh"]["ae avg (%)"] == 77.0 and by_act["tanh"]["ae runs"] == 2
    assert by_act["tanh"]["ae ± seeds (pt)"] == pytest.approx(round(18 ** 0.5, 2))
    assert by_act["relu"]["mlp ± seeds (pt)"] == 0.0 and set(by_act) == {"relu", "tanh"}
    # paired by seed: ae tanh − relu = +4, +8 -> +6 ± sqrt(8), both above 0; at the base '—'
    assert by_act["tanh"]["ae Δ vs base (pt)"] == f"+6.00 ± {8 ** 0.5:.2f} (2/2)"
    assert by_act["relu"]["ae Δ vs base (pt)"] == "—"
    # ae − mlp with tanh: 74 − 69 = +5, 80 − 73 = +7
    assert by_act["tanh"]["ae − mlp (pt)"] == f"+6.00 ± {2 ** 0.5:.2f} (2/2)"
    # the other protocol's column: every accuracy 10 points lower, differences unchanged
    by_act_s = {r["activation"]: r for r in s_table5_activation.activation_rows(df, base, "test_s")}
    assert by_act_s["tanh"]["ae avg (%)"] == 67.0
    assert by_act_s["tanh"]["ae Δ vs base (pt)"] == by_act["tanh"]["ae Δ vs base (pt)"]
    df = df[df["dim_g"] == 32]
    peak = {(r["projector"], r["selected on"]): r for r in s_table2_peak.peak_rows(df)}
    # S's peak for ae is the 80 (tanh, seed 1); validation (= 100 - test here) picks the worst run
    assert peak[("ae", "test (as S)")]["test accuracy (%)"] == 80.0
    assert peak[("ae", "test (as S)")]["seed"] == 1
    assert peak[("ae", "validation")]["test accuracy (%)"] == 70.0
    # within each seed: test-selected ae peaks 74 and 80 -> 77 ± sqrt(18)
    assert peak[("ae", "test (as S)")]["per seed: selected test (%)"] == f"77.00 ± {18 ** 0.5:.2f}"
    # under the other protocol the validation selection is the same run, scored by that probe
    peak_s = {(r["projector"], r["selected on"]): r for r in s_table2_peak.peak_rows(df, None, "test_s")}
    assert peak_s[("ae", "validation")]["test accuracy (%)"] == 60.0


def test_s_width_table_compares_like_for_like():
    import pandas as pd

    sys.path.insert(0, str(ROOT / "analyses"))
    import s_table4_width

    # ae's narrow g (16) exists only with sigmoid; the wide g (32) with sigmoid and tanh.
    # Pooled, tanh's strong runs would lift dim(g) 32; like for like they are left out.
    base = {"activation": "sigmoid", "dim_g": 32, "dim_z": 16}
    rows = []
    for seed in (0, 1, 2):
        for zscore in (False, True):
            for head, act, g, acc in (("ae", "sigmoid", 32, 70 + seed), ("ae", "sigmoid", 16, 71 + 2 * seed),
                                      ("ae", "tanh", 32, 95), ("mlp", "sigmoid", 32, 69),
                                      ("mlp", "sigmoid", 16, 68)):
                rows.append({"head": head, "activation": act, "dim_g": g, "dim_z": 16, "zscore": zscore,
                             "frozen": True, "seed": seed, "test": float(acc + zscore), "val": 0.0})
    table = {(r["factor"], r["value"]): r for r in s_table4_width.width_rows(pd.DataFrame(rows), base)}
    g32 = table[("dim(g)", 32)]
    assert g32["ae runs"] == 6 and g32["ae avg (%)"] == pytest.approx(71.5)  # 70, 71, 72 (+0.5 Z-score)
    # narrowing g for ae: +1, +2, +3 per seed -> +2 ± 1; for the mlp −1 in every seed
    assert table[("dim(g)", 16)]["ae Δ vs base (pt)"] == "+2.00 ± 1.00 (3/3)"
    assert table[("dim(g)", 16)]["mlp Δ vs base (pt)"] == "-1.00 ± 0.00 (0/3)"
    assert table[("dim(z)", 16)]["ae Δ vs base (pt)"] == "—"


def test_g_fig4_has_the_bias_free_head_and_the_probe_control(work):
    p = run("g_fig4_nullspace.py", "--seeds", "0", tmp=work)
    assert p.returncode == 0, p.stderr
    out = work / "figures" / "smoke"
    import pandas as pd

    table = pd.read_csv(out / "g_fig4_nullspace_table.csv")
    assert "control h_r - z (pt), per seed" in table.columns
    assert list(table["head"]) == ["linear head, no bias (G)"] * 2 + ["linear head, with bias (ours)"] * 2 + \
        ["MLP head (ours)"] * 2
    side = json.loads((out / "g_fig4_nullspace.json").read_text())
    evs = side["evaluations"]
    assert set(evs) == {"linear-nobias", "linear", "mlp"} and len(evs["linear-nobias"]) == 1
    # the bias-free run's head really has no bias: h_r and z of the same run are probed
    assert evs["linear-nobias"][0]["accuracy"]["linear"]["z"] is not None
    runs = side["configs"]["runs"]
    assert runs["g/linear-nobias-s0"]["head.bias"] is False


def test_s_table_scripts_write_both_probe_protocols(tmp_path, monkeypatch):
    import pandas as pd

    sys.path.insert(0, str(ROOT / "analyses"))
    import s_grid
    import s_table4_width

    # the smoke scale's base (sigmoid, dim(g) 16, dim(z) 8) and its narrower g (8), two seeds
    rows = [{"head": h, "activation": "sigmoid", "dim_g": g, "dim_z": 8, "zscore": False, "frozen": True,
             "seed": s, "val": 50.0, "test": 70.0 + s + (h == "ae") + (g == 8), "test_s": 60.0 - (g == 8),
             "run": "x"} for h in ("ae", "mlp") for g in (8, 16) for s in (0, 1)]
    monkeypatch.setattr(s_grid, "s_results", lambda ctx, configs=None: pd.DataFrame(rows))
    monkeypatch.setattr(sys, "argv", ["s_table4_width.py", "--scale", "smoke", "--quiet",
                                      "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert s_table4_width.main() == 0
    table = pd.read_csv(tmp_path / "smoke" / "s_table4_width.csv")
    assert list(table["probe"]) == ["fast"] * 3 + ["s (S's probe)"] * 3  # dim(g) 8, 16; dim(z) 8
    g8 = table[table["value"] == 8].set_index(["probe", "factor"])
    assert g8.loc[("fast", "dim(g)"), "ae Δ vs base (pt)"] == "+1.00 ± 0.00 (2/2)"
    assert g8.loc[("s (S's probe)", "dim(g)"), "ae Δ vs base (pt)"] == "-1.00 ± 0.00 (0/2)"
    assert g8.loc[("fast", "dim(g)"), "ae − mlp (pt)"] == "+1.00 ± 0.00 (2/2)"
    md = (tmp_path / "smoke" / "s_table4_width.md").read_text()
    assert "Probe s (S's probe): s (paper S §3.6)" in md
    side = json.loads((tmp_path / "smoke" / "s_table4_width.json").read_text())
    assert len(side["runs"]) == 8 and "test_s" in side["runs"][0]


def test_commit_is_dirty_for_code_changes_not_for_outputs(tmp_path):
    sys.path.insert(0, str(ROOT / "analyses"))
    import outputs

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "t.md").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = outputs.git_commit(tmp_path)
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "figures" / "t.md").write_text("b\n")  # an output written by an earlier script
    assert outputs.git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert outputs.git_commit(tmp_path) == clean + "+dirty"
