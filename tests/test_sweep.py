import json

import numpy as np
import pandas as pd
import pytest
import yaml

from repdiag.cli import main
from repdiag.errors import UserError
from train import sweep as sweep_mod
from train.sweep import expand, read_grid, run_sweep, summarize
from train.trainer import Trainer

TINY = ["data=synthetic", "data_limit=32", "width=0.125", "batch_size=16", "knn_subset=32",
        "knn_k=5", "head.hidden_dim=16", "head.out_dim=8", "epochs=1", "save_every=0",
        "cifar_stem=false"]


def write_grid(path, grid, seeds=None, extra=()):
    tree = {"base": "fmnist-tiny", "set": TINY + list(extra), "grid": grid}
    if seeds is not None:
        tree["seeds"] = seeds
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_grid_expands_in_a_fixed_order_with_stable_names(tmp_path):
    g = write_grid(tmp_path / "g.yaml", {"head.kind": ["linear", "mlp"],
                                        "head.activation": ["relu", "tanh"]}, seeds=[0, 1])
    runs = expand(read_grid(g))
    assert [r.name for r in runs[:3]] == [
        "head.kind-linear__head.activation-relu__seed-0",
        "head.kind-linear__head.activation-relu__seed-1",
        "head.kind-linear__head.activation-tanh__seed-0"]
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    assert [r.name for r in expand(read_grid(g))] == [r.name for r in runs]
    assert runs[-1].config.head.kind == "mlp" and runs[-1].config.seed == 1
    odd = write_grid(tmp_path / "o.yaml", {"name": ["a/b", "a b"]})
    names = [r.name for r in expand(read_grid(odd))]
    assert len(set(names)) == 2 and all("/" not in n and " " not in n for n in names)


@pytest.mark.parametrize("text,msg", [
    ("- a\n- b\n", "expected a mapping"),
    ("base: fmnist-tiny\nwat: 1\n", "unknown grid key"),
    ("set: [epochs=1]\n", "'base' must name"),
    ("base: fmnist-tiny\ngrid: {epochs: []}\n", "non-empty list"),
    ("base: fmnist-tiny\ngrid: {epochs: 3}\n", "non-empty list"),
    ("base: fmnist-tiny\nseeds: [0, x]\n", "'seeds' must be"),
    ("base: fmnist-tiny\ngrid: {nope: [1, 2]}\n", "unknown --set key 'nope'"),
    ("base: fmnist-tiny\ngrid: {epochs: [1, x]}\n", "epochs: expected an integer"),
    ("base: [unclosed\n", "not valid YAML"),
])
def test_bad_grid_is_one_line_user_error(tmp_path, capsys, text, msg):
    g = tmp_path / "g.yaml"
    g.write_text(text)
    assert main(["sweep", str(g), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_interrupted_sweep_restarts_without_redoing_finished_runs(tmp_path, monkeypatch, capsys):
    g = write_grid(tmp_path / "g.yaml", {"head.kind": ["linear", "mlp"]},
                   extra=["epochs=2", "knn_every=2"])
    out = tmp_path / "sweep"
    original = Trainer.run
    calls = []

    def flaky(self):  # the second run is killed after its first epoch
        calls.append(self.out.name)
        if len(calls) == 2:
            self.cfg.epochs = 1
            original(self)
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(g, out, quiet=True)
    first = out / "head.kind-linear__seed-0"
    second = out / "head.kind-mlp__seed-0"
    stamp = (first / "last.pt").stat().st_mtime_ns, (first / "metrics.jsonl").read_text()
    assert len(pd.read_csv(out / "results.csv")) == 1
    assert len((second / "metrics.jsonl").read_text().splitlines()) == 1

    monkeypatch.setattr(Trainer, "run", original)
    resumed = []
    init = Trainer.__init__

    def spy(self, cfg, out_dir, **kw):
        resumed.append((out_dir.name, kw.get("resume")))
        init(self, cfg, out_dir, **kw)

    monkeypatch.setattr(Trainer, "__init__", spy)
    summary = run_sweep(g, out, quiet=True)
    assert resumed == [(second.name, True)]
    assert summary["skipped"] == 1 and summary["resumed"] == 1 and summary["finished"] == 2
    assert ((first / "last.pt").stat().st_mtime_ns, (first / "metrics.jsonl").read_text()) == stamp
    assert [json.loads(x)["epoch"] for x in (second / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2]
    res = pd.read_csv(out / "results.csv")
    assert list(res["run"]) == [first.name, second.name]
    assert list(res["head.kind"]) == ["linear", "mlp"] and list(res["epochs"]) == [2, 2]
    assert {"loss", "knn_val", "seconds", "seed", "folder", "knn_g_h", "knn_g_z"} <= set(res.columns)
    assert res["loss"].notna().all() and res["knn_val"].notna().all()
    # the probe columns are the test accuracies that `repdiag probe` reports for that run
    from repdiag.diagnose import probe_report
    from repdiag.features import FeatureSource

    direct = probe_report(FeatureSource(first / "last.pt"), "knn", ("h", "z"))["accuracy"]
    assert res["knn_g_h"].iloc[0] == pytest.approx(direct["h"])
    assert res["knn_g_z"].iloc[0] == pytest.approx(direct["z"])
    assert len(list(first.glob("eval-last-*.json"))) == 1  # the knn probe, cached

    # a third start does nothing at all
    resumed.clear()
    assert run_sweep(g, out, quiet=True)["skipped"] == 2 and resumed == []


def test_seeds_summary_matches_numpy_and_cli(tmp_path, capsys):
    g = write_grid(tmp_path / "g.yaml", {"head.kind": ["linear"]}, seeds=[0, 1, 2],
                   extra=["knn_every=0"])
    out = tmp_path / "s"
    assert main(["sweep", str(g), "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == 3
    res = pd.read_csv(out / "results.csv")
    assert list(res["seed"]) == [0, 1, 2] and len(res) == 3
    summ = pd.read_csv(out / "summary.csv")
    assert len(summ) == 1 and summ["n_seeds"][0] == 3
    x = res["loss"].to_numpy()
    q75, q25 = np.percentile(x, [75, 25])
    expect = {"min": x.min(), "max": x.max(), "mean": x.mean(), "range": x.max() - x.min(),
              "iqr": q75 - q25, "std": np.std(x, ddof=1)}
    for stat, value in expect.items():
        assert summ[f"loss_{stat}"][0] == pytest.approx(value, rel=1e-9, abs=1e-12), stat


def test_summarize_groups_over_seeds_only():
    res = pd.DataFrame({"run": list("abcdef"), "k": ["x"] * 3 + ["y"] * 3,
                        "seed": [0, 1, 2] * 2, "status": ["finished"] * 6, "epochs": [1] * 6,
                        "seconds": [1.0] * 6, "loss": [1.0, 2.0, 4.0, 3.0, 3.0, 3.0],
                        "folder": list("abcdef")})
    s = summarize(res, ["k"])
    assert list(s["k"]) == ["x", "y"] and list(s["n_seeds"]) == [3, 3]
    assert s["loss_range"].tolist() == [3.0, 0.0]
    assert s["loss_iqr"][0] == pytest.approx(np.subtract(*np.percentile([1, 2, 4], [75, 25])))
    assert s["loss_std"][1] == 0.0
    assert sweep_mod.metric_columns(res, ["k"]) == ["loss"]


def test_changed_config_in_existing_folder_is_refused(tmp_path):
    g = write_grid(tmp_path / "g.yaml", {"head.kind": ["linear"]}, extra=["knn_every=0"])
    out = tmp_path / "s"
    run_sweep(g, out, quiet=True)
    write_grid(g, {"head.kind": ["linear"]}, extra=["knn_every=0", "optim.lr=0.01"])
    with pytest.raises(UserError, match="optim.lr"):
        run_sweep(g, out, quiet=True)


def test_sweep_probes_the_best_checkpoint_when_asked(tmp_path):
    from repdiag.diagnose import probe_report
    from repdiag.features import FeatureSource

    g = write_grid(tmp_path / "g.yaml", {"head.kind": ["linear"]},
                   extra=["knn_every=0", "epochs=3", "data_limit=64"])
    tree = yaml.safe_load(g.read_text())
    tree["checkpoint"] = "best"
    g.write_text(yaml.safe_dump(tree))
    out = tmp_path / "s"
    run_sweep(g, out, quiet=True)
    res = pd.read_csv(out / "results.csv")
    run_dir = out / res["run"][0]
    assert res["checkpoint"][0] == "best.pt" and (run_dir / "best.pt").exists()
    direct = probe_report(FeatureSource(run_dir / "best.pt"), "knn", ("h", "z"))["accuracy"]
    assert res["knn_g_h"][0] == pytest.approx(direct["h"])
    assert "checkpoint_mean" not in pd.read_csv(out / "summary.csv").columns


def test_grid_checkpoint_choice_is_checked(tmp_path, capsys):
    g = tmp_path / "g.yaml"
    g.write_text("base: fmnist-tiny\ncheckpoint: peak\n")
    assert main(["sweep", str(g), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "'checkpoint' must be best" in capsys.readouterr().err


def test_fields_the_trainer_fills_in_do_not_count_as_a_config_change():
    """A run left with head.d0 / head.ae_checkpoint unset gets them written back by the
    trainer; asking for the same run again (unset) reuses it, another explicit value does not."""
    from train.runstore import config_difference as _config_difference

    stored = {"seed": 0, "head": {"kind": "ae", "ae_checkpoint": "run/autoencoder/autoencoder.pt",
                                  "d0": None, "hidden_dim": 32}}
    wanted = {"seed": 0, "head": {"kind": "ae", "ae_checkpoint": None, "d0": None, "hidden_dim": 32}}
    assert _config_difference(stored, wanted) is None
    other = {"seed": 0, "head": dict(wanted["head"], ae_checkpoint="elsewhere.pt")}
    assert _config_difference(stored, other).startswith("head.ae_checkpoint")
    assert _config_difference(stored, {"seed": 0, "head": dict(wanted["head"], hidden_dim=64)}) \
        == "head.hidden_dim (folder: 32, grid: 64)"
    dclr = {"head": {"kind": "directclr", "d0": 22}}
    assert _config_difference(dclr, {"head": {"kind": "directclr", "d0": None}}) is None
    assert _config_difference(dclr, {"head": {"kind": "directclr", "d0": 30}}) is not None
    # every differing key is named, in sorted dotted order; epochs never counts
    assert _config_difference({"seed": 0, "epochs": 3, "head": {"kind": "mlp", "out_dim": 8}},
                              {"seed": 1, "epochs": 9, "head": {"kind": "linear", "out_dim": 8}}) \
        == "head.kind (folder: 'mlp', grid: 'linear'), seed (folder: 0, grid: 1)"
