import json
import os
from pathlib import Path

import pytest
import torch

from repdiag import features as features_mod
from repdiag.cli import main
from repdiag.features import FeatureSet, extract, load_features, save_features
from train.config import load_config
from train.trainer import Trainer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("fmnist-tiny", ["data=synthetic", "data_limit=128", "width=0.125",
                                      "batch_size=32", "epochs=1", "knn_every=0",
                                      "head.kind=linear", "head.out_dim=8"])
    Trainer(cfg, out, quiet=True).run()
    return out / "last.pt"


def _feature_file(path, m=24, d=6, rank_a=4, n_train=300, n_test=120, classes=3):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(classes, m, generator=g) * 3

    def split(n):
        y = torch.randint(0, classes, (n,), generator=g)
        h = centers[y] + torch.randn(n, m, generator=g)
        return h, y

    a = torch.randn(d, rank_a, generator=g) @ torch.randn(rank_a, m, generator=g)
    (htr, ytr), (hte, yte) = split(n_train), split(n_test)
    save_features(path, FeatureSet(h=htr, y=ytr, z=htr @ a.T, weight=a),
                  FeatureSet(h=hte, y=yte, z=hte @ a.T, weight=a))
    return path


def run_json(capsys, *args):
    code = main([*args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_feature_file_round_trip(tmp_path):
    path = _feature_file(tmp_path / "f.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"train", "test", "head"} and set(raw["train"]) == {"h", "z", "y"}
    fb = load_features(path)
    assert fb.train.h.shape == (300, 24) and fb.weight.shape == (6, 24)


def test_every_command_on_a_feature_file(tmp_path, capsys):
    f = str(_feature_file(tmp_path / "f.pt"))
    r = run_json(capsys, "rank", f)
    assert r["h"]["rank"] == 24 and r["z"]["rank"] == 4 and r["rank_deficit"] == 20
    assert r["h"]["tol"] > 0 and r["h"]["effective_rank"] > 1
    s = run_json(capsys, "spectrum", f)
    assert len(s["h"]) == 24 and s["h"] == sorted(s["h"], reverse=True)
    n = run_json(capsys, "nullspace", f, "--probe", "knn")
    assert n["head_rank"] == 4 and n["residual"] < 1e-4 and n["probe"] == "knn"
    assert set(n["accuracy"]) == {"h", "h_r", "h_n", "z"}
    assert all(0 <= v <= 1 for v in n["accuracy"].values())
    lin = run_json(capsys, "nullspace", f, "--probe", "linear")
    assert lin["probe"] == "linear" and lin["accuracy"]["h"] > 0.9
    p = run_json(capsys, "probe", f, "--probe", "knn", "--on", "h,z")
    assert set(p["accuracy"]) == {"h", "z"} and p["accuracy"]["h"] > 0.9
    t = run_json(capsys, "tsne", f, "--on", "h", "--out", str(tmp_path / "figs"),
                 "--max-points", "100")
    assert t["h"]["n"] == 100 and (tmp_path / "figs").is_dir()


def test_every_command_on_a_checkpoint(ckpt, tmp_path, capsys):
    c = str(ckpt)
    r = run_json(capsys, "rank", c)
    assert r["z"]["rank"] <= 8 and r["rank_deficit"] == r["h"]["rank"] - r["z"]["rank"]
    s = run_json(capsys, "spectrum", c, "--out", str(tmp_path / "figs"))
    assert len(s["z"]) == 8
    assert (tmp_path / "figs" / "spectrum_last.png").exists()
    n = run_json(capsys, "nullspace", c, "--probe", "knn")
    assert n["head_rank"] == 8 and set(n["accuracy"]) == {"h", "h_r", "h_n", "z"}
    p = run_json(capsys, "probe", c, "--probe", "linear", "--on", "h,z")
    assert set(p["accuracy"]) == {"h", "z"}
    run_json(capsys, "tsne", c, "--out", str(tmp_path / "figs"), "--max-points", "100")
    # several inputs give one table
    assert main(["rank", c, c]) == 0
    table = capsys.readouterr().out
    assert "rank deficit" in table and table.count("last.pt") >= 4


def test_extract_is_cached(ckpt, monkeypatch):
    first = extract(ckpt, "synthetic", "test")
    assert first.h.shape[0] == 256 and first.z.shape[1] == 8
    entries = list((Path(os.environ["REPDIAG_CACHE"]) / "features").iterdir())  # conftest's folder
    assert [p.suffix for p in entries] == [".pt"]

    def boom(*a, **k):
        raise AssertionError("dataset loaded although cached")

    monkeypatch.setattr(features_mod, "dataset_for", boom)
    second = extract(ckpt, "synthetic", "test")
    assert torch.equal(first.h, second.h) and torch.equal(first.y, second.y)


@pytest.mark.parametrize("make,args,msg", [
    ("text", ["rank"], "not a torch file"),
    ("shapes", ["rank"], "test.y must have shape"),
    ("nan", ["spectrum"], "contains NaN"),
    ("good", ["probe", "--probe", "svm"], "unknown probe 'svm'"),
    ("good", ["probe", "--on", "q"], "--on takes a comma list"),
    ("missing", ["rank"], "no such"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, make, args, msg):
    path = tmp_path / "x.pt"
    if make == "text":
        path.write_text("not a checkpoint")
    elif make == "good":
        _feature_file(path)
    elif make in ("shapes", "nan"):
        _feature_file(path)
        raw = torch.load(path, weights_only=True)
        if make == "shapes":
            raw["test"]["y"] = raw["test"]["y"][:5]
        else:
            raw["train"]["h"][3, 2] = float("nan")
            raw["test"]["h"][3, 2] = float("nan")
        torch.save(raw, path)
    code = main([args[0], str(path), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2 and msg in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def no_head_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("nohead")
    cfg = load_config("fmnist-tiny", ["data=synthetic", "data_limit=96", "width=0.125",
                                      "batch_size=32", "epochs=1", "knn_every=0", "head.kind=none"])
    Trainer(cfg, out, quiet=True).run()
    return out / "last.pt"


def test_nullspace_of_no_head_reports_h_n_as_undefined(no_head_ckpt, capsys):
    """A = I: h_n is identically zero, so its probe accuracy is not a number to report."""
    n = run_json(capsys, "nullspace", str(no_head_ckpt), "--probe", "knn")
    assert n["accuracy"]["h_n"] is None and "no head" in n["undefined"]["h_n"]
    assert n["accuracy"]["h_r"] == n["accuracy"]["h"]  # h_r = h
    assert main(["nullspace", str(no_head_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "—" in out and "h_n not defined (no head" in out and "no head (A = I)" in out


def test_h_n_is_undefined_for_an_injective_head_and_defined_otherwise(tmp_path, capsys):
    from repdiag.diagnose import null_space_undefined

    g = torch.Generator().manual_seed(1)
    wide = torch.randn(12, 8, generator=g)  # 8 -> 12: full column rank, null space {0}
    assert "full column rank 8" in null_space_undefined(wide)
    assert null_space_undefined(torch.randn(4, 8, generator=g)) is None  # 8 -> 4: rank 4 < 8
    assert null_space_undefined(torch.randn(12, 2, generator=g) @ torch.randn(2, 8, generator=g)) \
        is None  # wide but rank 2
    f = str(_feature_file(tmp_path / "f.pt"))  # rank-4 head on 24-d features
    n = run_json(capsys, "nullspace", f)
    assert n["accuracy"]["h_n"] is not None and "undefined" not in n


def test_probe_tables_name_the_protocol_that_ran(tmp_path, capsys):
    f = str(_feature_file(tmp_path / "f.pt"))
    assert main(["nullspace", f]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("probe: kNN, preset g: k=200, cosine") and "T=0.5" in out[0]
    assert "not published by G" in out[1]
    assert main(["probe", f, "--probe", "linear"]) == 0
    assert "preset fast" in capsys.readouterr().out.splitlines()[0]
    assert main(["nullspace", f, "--probe", "linear"]) == 0
    out = capsys.readouterr().out
    assert "h_n can beat h" in out and "training objective / gradient norm at the end: h " in out
    assert main(["probe", f, "--probe", "linear", "--preset", "g"]) == 0
    assert "preset g: paper G: nn.Linear, Adam lr 0.001" in capsys.readouterr().out
    js = run_json(capsys, "probe", f)
    assert "not published by G" in js["protocol"]["source"]


def test_a_run_folder_stands_for_its_selected_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config("fmnist-tiny", ["data=synthetic", "data_limit=64", "width=0.125",
                                      "batch_size=32", "epochs=2", "knn_every=0",
                                      "head.kind=linear", "head.out_dim=8", "select=best"])
    Trainer(cfg, out, quiet=True).run()
    folder = run_json(capsys, "rank", str(out))
    assert folder == run_json(capsys, "rank", str(out / "best.pt"))  # the run's own choice
    assert run_json(capsys, "rank", str(out), "--checkpoint", "last") == \
        run_json(capsys, "rank", str(out / "last.pt"))
    (out / "best.pt").unlink()
    assert main(["rank", str(out)]) == 2
    assert "no best.pt" in capsys.readouterr().err
