"""bench/gpu_acceptance.py: every step runs on the CPU with --tiny, its JSON is whole, its
CPU-against-device checks really compare (a corrupted device result fails them), and bad
options are refused in one line before anything is written."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_acceptance.py"

STEPS = ["train-simclr-bf16", "check-first-step-loss", "extract", "check-extraction",
         "check-diagnostics", "tsne-10k", "cli-rank", "cli-nullspace-knn", "cli-nullspace-linear",
         "cli-spectrum", "cli-tsne", "cli-report", "train-simclr-fp32", "train-simclr-compile",
         "train-bilevel", "train-simsiam", "bench-train-r18", "bench-train-r50",
         "bench-diagnostics"]


def _run(args, home: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPDIAG_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _new_paths() -> set[str]:
    """Untracked and ignored paths in the repository (what a run could have added to it)."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    return {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}


def _leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, x


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("lightly")  # the bench-train steps' baseline loop
    base = tmp_path_factory.mktemp("acceptance")
    home = base / "home"
    home.mkdir()
    out = base / "out"
    before = _new_paths()
    # --in-process: one interpreter instead of 13 (each start-up costs seconds on a small box);
    # the one-process-per-command path runs in test_injected_wrong_results_fail_their_checks
    p = _run(["--device", "cpu", "--tiny", "--in-process", "--keep", "--out", str(out)], home)
    doc = json.loads((out / "acceptance.json").read_text())
    return {"proc": p, "doc": doc, "out": out, "home": home, "git_before": before,
            "git_after": _new_paths()}


def test_tiny_run_passes_every_step(tiny_run):
    p, doc = tiny_run["proc"], tiny_run["doc"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert doc["complete"] is True and doc["passed"] is True
    assert [s["name"] for s in doc["steps"]] == STEPS
    for s in doc["steps"]:
        assert s["status"] == "pass" and s["error"] is None, s
        assert s["seconds"] > 0 and s["budget_s"] > 0
    assert doc["device"] == "cpu" and doc["tiny"] is True
    assert doc["torch"] == torch.__version__ and doc["git"]["commit"]
    assert sum(doc["budgets_s"].values()) == 90 * len(STEPS)  # --tiny: one timeout per step
    assert any(line.startswith("gpu_acceptance: PASS in") for line in p.stdout.splitlines())


def test_gpu_budgets_fit_eight_minutes():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    ga = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ga)
    assert list(ga.BUDGETS) == STEPS
    assert sum(ga.BUDGETS.values()) <= 480


def test_tiny_figures_are_numbers(tiny_run):
    doc = tiny_run["doc"]
    for path, v in _leaves(doc["figures"]):
        if isinstance(v, float):
            assert math.isfinite(v), path
    f = doc["figures"]
    for step in ("train-simclr-bf16", "train-simclr-fp32", "train-simclr-compile", "train-bilevel",
                 "train-simsiam"):
        assert f[step]["images_per_s"] > 0
        assert f[step]["runtime"]["device"] == "cpu"
    assert f["train-simclr-compile"]["runtime"]["compile"] is True
    for step in ("bench-train-r18", "bench-train-r50"):
        assert f[step]["ours_over_reference"] > 0 and f[step]["lightly_epoch_over_ours"] > 0
        assert f[step]["ours_pairs_per_s"] > 0 and f[step]["reference_pairs_per_s"] > 0
    bd = f["bench-diagnostics"]
    assert set(bd["repdiag_s"]) == set(bd["sklearn_s"]) == {"spectrum+rank", "nullspace", "knn",
                                                            "linear", "tsne"}
    assert bd["speedup_total"] == pytest.approx(bd["sklearn_total_s"] / bd["repdiag_total_s"],
                                                rel=1e-2)
    assert f["tsne-10k"]["optimize_s"] > 0 and f["tsne-10k"]["backend"] == "torch"
    assert f["check-diagnostics"]["fallback_backend"] == "torch"  # the cuda-only fallback is off
    for key, g in doc["goals"].items():
        assert g["met"] is None, key  # goals are judged on a GPU at full size only
        assert isinstance(g["value"], float) and g["value"] > 0, key


def test_tiny_cli_rank_matches_torch_matrix_rank(tiny_run):
    """The rank the `repdiag rank` step recorded, against torch's own matrix_rank of the same
    features (the kept checkpoint, test split, same --limit), extracted here."""
    import repdiag

    f = tiny_run["doc"]["figures"]["cli-rank"]
    ckpt = tiny_run["out"] / "runs" / "train-simclr-bf16" / "last.pt"
    fs = repdiag.extract(str(ckpt), split="test", device="cpu", cache=False, limit=128)
    assert f["rank_h"] == int(torch.linalg.matrix_rank(fs.h))
    assert f["rank_z"] == int(torch.linalg.matrix_rank(fs.z))
    assert f["rank_deficit"] == f["rank_h"] - f["rank_z"]


def test_tiny_cross_checks_compare_both_sides(tiny_run):
    steps = {s["name"]: s for s in tiny_run["doc"]["steps"]}
    loss = steps["check-first-step-loss"]["checks"]
    assert set(loss) == {"first_step_loss_fp32", "first_step_loss_bf16"}
    # on the CPU the "device" side is the same CPU path: fp32 equal, bf16 autocast close
    assert loss["first_step_loss_fp32"]["device"] == loss["first_step_loss_fp32"]["cpu"]
    bf = loss["first_step_loss_bf16"]
    assert bf["device"] != bf["cpu"] and bf["diff"] <= bf["tol"]
    diag = steps["check-diagnostics"]["checks"]
    for key in ("rank_h", "rank_z", "head_rank", "knn_h_predictions_differing",
                "knn_h_r_predictions_differing", "knn_h_n_predictions_differing",
                "knn_z_predictions_differing", "spectrum_h_max_diff_over_top", "energy_range",
                "linear_h_accuracy", "tsne_kl"):
        assert diag[key]["ok"] is True, key
        assert "cpu" in diag[key] and "device" in diag[key]
    assert diag["rank_h"]["cpu"] == 64  # ResNet-18 at width 1/8: m = 64, full rank
    assert diag["head_rank"]["cpu"] == 32  # the 64 -> 32 head's first layer
    assert set(steps["check-extraction"]["checks"]) == {"h_max_abs_diff_over_max_h",
                                                        "z_max_abs_diff_over_max_z"}
    assert all(c["ok"] for c in steps["bench-diagnostics"]["checks"].values())
    assert len(steps["bench-diagnostics"]["checks"]) == 8  # kNN and linear on h, h_r, h_n, z


def test_tiny_run_writes_only_under_its_folder(tiny_run):
    assert list(tiny_run["home"].iterdir()) == []
    assert tiny_run["git_after"] == tiny_run["git_before"]
    out = tiny_run["out"]
    assert not (out / "tmp").exists()
    assert (out / "logs" / "cli-rank.err").is_file()


def test_injected_wrong_results_fail_their_checks(tmp_path):
    pytest.importorskip("lightly")
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out"
    p = _run(["--device", "cpu", "--tiny", "--out", str(out), "--inject", "loss,knn,rank,extract",
              "--only", "train-simclr-bf16,check-first-step-loss,extract,check-extraction,"
                        "check-diagnostics"], home)
    assert p.returncode == 1, p.stderr[-2000:]
    doc = json.loads((out / "acceptance.json").read_text())
    assert doc["passed"] is False and doc["inject"] == ["extract", "knn", "loss", "rank"]
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["train-simclr-bf16"]["status"] == steps["extract"]["status"] == "pass"
    failed = {name: sorted(k for k, c in steps[name]["checks"].items() if not c["ok"])
              for name in ("check-first-step-loss", "check-extraction", "check-diagnostics")}
    assert failed == {"check-first-step-loss": ["first_step_loss_bf16", "first_step_loss_fp32"],
                      "check-extraction": ["h_max_abs_diff_over_max_h"],
                      "check-diagnostics": ["knn_h_predictions_differing", "rank_h"]}
    for name in failed:
        assert steps[name]["status"] == "fail"
        assert steps[name]["error"] == "comparisons that did not hold: " + ", ".join(
            k for k, c in steps[name]["checks"].items() if not c["ok"])
    assert "FAIL" in p.stdout


@pytest.mark.parametrize("args, message", [
    (["--inject", "nope"], "--inject: unknown nope"),
    (["--only", "cli-rank"], "--only: step cli-rank needs step train-simclr-bf16"),
    (["--only", "no-such-step"], "--only: unknown step(s) no-such-step"),
    (["--device", "cuda:0"], "no CUDA device is available"),
    (["--device", "gpu"], "unknown --device 'gpu'"),
    (["--time-limit", "0"], "--time-limit must be positive"),
])
def test_bad_options_refused_before_any_work(tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    out = tmp_path / "out"
    p = _run(["--tiny", "--device", "cpu", "--out", str(out), *args], tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert not out.exists()


def test_non_empty_output_folder_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = _run(["--tiny", "--device", "cpu", "--out", str(out)], tmp_path)
    assert p.returncode == 2 and "not an empty folder" in p.stderr
    assert [x.name for x in out.iterdir()] == ["keep.txt"]


def test_time_limit_stops_a_step_and_skips_what_needs_it(tmp_path):
    """A step that runs past its time is stopped and failed, a step that needs it is skipped,
    and the run still writes its whole JSON and exits 1."""
    out = tmp_path / "out"
    p = _run(["--tiny", "--device", "cpu", "--out", str(out), "--time-limit", "3",
              "--only", "train-simclr-bf16,extract"], tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    doc = json.loads((out / "acceptance.json").read_text())
    assert doc["complete"] is True and doc["passed"] is False
    train, extract = doc["steps"]
    assert train["status"] == "fail" and "ran past 3 s" in train["error"]
    assert train["seconds"] < 10  # stopped, not run to its end
    assert extract["status"] == "skipped"
    assert extract["error"] in ("needs step train-simclr-bf16, which did not pass",
                                "not started: the run's time limit of 3 s was reached")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_size_configs_are_checked_before_any_work(tmp_path):
    """The GPU run's own (not --tiny) training configs are built before the first step: here
    they all build, and with no time left every step is skipped, none refused."""
    pytest.importorskip("lightly")
    out = tmp_path / "out"
    p = _run(["--device", "cpu", "--data", "synthetic", "--out", str(out), "--time-limit", "1e-9"],
             tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    doc = json.loads((out / "acceptance.json").read_text())
    assert doc["tiny"] is False and sum(doc["budgets_s"].values()) == 480
    assert {s["status"] for s in doc["steps"]} == {"skipped"}


def test_a_training_config_the_trainer_refuses_names_its_step(tmp_path, monkeypatch):
    from repdiag.errors import UserError

    ga = _load_script()
    args = ga.build_parser().parse_args(["--device", "cpu", "--tiny", "--out", str(tmp_path / "o")])
    steps = ga.check_options(args)
    args.data = "synthetic"
    acc = ga.Acceptance(args, steps)
    acc.size["few_steps"] = [*acc.size["few_steps"], "no_such_key=1"]
    with pytest.raises(UserError, match=r"^step train-bilevel: .*no_such_key"):
        acc.check_configs()
