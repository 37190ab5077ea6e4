"""Feature files are data: dtype kept, labels renumbered before any allocation, odd tensors
refused in one line. Numbers are checked against numpy/torch computed independently."""

import json
import time

import numpy as np
import pytest
import torch

from repdiag.cli import main
from repdiag.features import load_features


def _save(path, h, y, **extra):
    torch.save({"train": {"h": h, "y": y}, "test": {"h": h, "y": y}, **extra}, path)
    return path


@pytest.fixture
def base():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(60, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (60,), generator=g))


@pytest.mark.parametrize("scale", [1e-50, 1e39])
def test_float64_features_keep_their_rank_and_spectrum(base, tmp_path, capsys, scale):
    h, y = base
    path = _save(tmp_path / "f.pt", h * scale, y)
    assert load_features(path).test.h.dtype == torch.float64
    assert main(["rank", str(path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["h"]
    assert r["rank"] == int(np.linalg.matrix_rank((h * scale).numpy())) == 8
    assert r["dtype"] == "torch.float64"
    assert main(["spectrum", str(path), "--json"]) == 0
    eig = np.array(json.loads(capsys.readouterr().out)["h"])
    expected = np.sort(np.linalg.eigvalsh(np.cov((h * scale).numpy(), rowvar=False)))[::-1]
    np.testing.assert_allclose(eig, expected, rtol=1e-9)


@pytest.fixture
def tsne_one_job(monkeypatch):
    """The CLI's t-SNE on one thread (on a busy 2-core machine two spinning OpenMP threads
    make a 60-point map take seconds instead of a fraction of one)."""
    import repdiag.diagnostics

    real = repdiag.diagnostics.tsne
    monkeypatch.setattr(repdiag.diagnostics, "tsne", lambda *a, **kw: real(*a, **{**kw, "n_jobs": 1}))


def test_float64_features_far_from_unit_scale_get_a_tsne_map(base, tmp_path, capsys,
                                                             tsne_one_job):
    from repdiag.diagnostics import tsne

    h, y = base
    path = _save(tmp_path / "f.pt", h * 1e39, y)
    code = main(["tsne", str(path), "--perplexity", "5", "--out", str(tmp_path / "figs"),
                 "--json"])
    assert code == 0, capsys.readouterr().err
    kl = json.loads(capsys.readouterr().out)["h"]["kl_divergence"]
    # the affinities do not depend on a global scale: the map of the same points (in the
    # command's order) at unit scale, up to the perplexity search's tolerance
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    expected = tsne(h[idx], perplexity=5, n_jobs=1).params["kl_divergence"]
    assert kl == pytest.approx(expected, rel=1e-3)


def test_sparse_labels_are_renumbered_before_the_probes(base, tmp_path, capsys):
    h, y = base
    dense = _save(tmp_path / "dense.pt", h, y)
    wide = _save(tmp_path / "wide.pt", h, y * 1_000_000)  # labels {0, 1e6, 2e6}
    fs = load_features(wide)
    assert fs.train.y.tolist() == y.tolist()  # 0..C-1 in the order of the original values
    accs = []
    for path in (dense, wide):
        start = time.perf_counter()
        assert main(["probe", str(path), "--probe", "linear", "--json"]) == 0
        accs.append(json.loads(capsys.readouterr().out)["accuracy"])
        assert time.perf_counter() - start < 30  # was > 150 s with 2e6 + 1 classes
    assert accs[0] == accs[1]
    huge = _save(tmp_path / "huge.pt", h, y * 10**12)
    assert main(["probe", str(huge), "--json"]) == 0


def test_too_many_classes_are_refused(tmp_path, capsys, monkeypatch):
    import repdiag.features

    monkeypatch.setattr(repdiag.features, "MAX_CLASSES", 5)
    g = torch.Generator().manual_seed(0)
    path = _save(tmp_path / "f.pt", torch.randn(20, 3, generator=g), torch.arange(20))
    assert main(["rank", str(path)]) == 2
    err = capsys.readouterr().err
    assert "20 distinct classes; at most 5 are supported" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("change,msg", [
    (lambda h, y: {"h": h.to(torch.complex128)}, "train.h is complex (torch.complex128)"),
    (lambda h, y: {"h": h.to_sparse()}, "train.h is a sparse tensor"),
    (lambda h, y: {"h": h[:1], "y": y[:1]}, "every split needs at least 2 samples"),
    (lambda h, y: {"y": y > 0}, "class indices"),
    (lambda h, y: {"y": y.double() * 2.0**60}, "beyond 2^53"),
])
def test_odd_tensors_are_refused_in_one_line(base, tmp_path, capsys, change, msg):
    h, y = base
    raw = {"train": {"h": h, "y": y, **change(h, y)}, "test": {"h": h, "y": y}}
    torch.save(raw, tmp_path / "f.pt")
    assert main(["rank", str(tmp_path / "f.pt")]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err


def test_a_head_that_is_not_a_dict_is_refused(base, tmp_path, capsys):
    h, y = base
    path = _save(tmp_path / "f.pt", h, y, head=torch.randn(4, 8))
    assert main(["nullspace", str(path)]) == 2
    assert "head must be a dict" in capsys.readouterr().err


def test_a_zero_head_has_h_n_equal_to_h(base, tmp_path, capsys):
    h, y = base
    path = _save(tmp_path / "f.pt", h, y, head={"weight": torch.zeros(4, 8)})
    assert main(["nullspace", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["head_rank"] == 0 and rep["accuracy"]["h_n"] == rep["accuracy"]["h"]
    assert rep["accuracy"]["h_r"] is None and "range is {0}" in rep["undefined"]["h_r"]


def test_json_output_is_strict(base, tmp_path, capsys, monkeypatch):
    """A map whose KL divergence is NaN (a degenerate optimisation): the CLI's --json still
    parses strictly, with null and the reason."""
    from types import SimpleNamespace

    import repdiag.diagnostics

    def nan_kl_tsne(x, y, **kw):
        return SimpleNamespace(embedding=x[:, :2].numpy(), labels=y.numpy(), n=len(x),
                               params={"backend": "opentsne", "kl_divergence": float("nan")})
    monkeypatch.setattr(repdiag.diagnostics, "tsne", nan_kl_tsne)
    h, y = base
    path = _save(tmp_path / "f.pt", h, y)
    assert main(["tsne", str(path), "--perplexity", "5", "--json",
                 "--out", str(tmp_path / "figs")]) == 0
    text = capsys.readouterr().out

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    rep = json.loads(text, parse_constant=refuse)
    kl = rep["h"]["kl_divergence"]
    assert kl is None and rep["null_reasons"]["h.kl_divergence"] == "not a number (NaN)"


def test_strict_json_replaces_every_non_finite_number():
    from repdiag.outputs import dumps

    text = dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "null_reasons": {
        "a": "not a number (NaN)", "b[1]": "+infinity (overflow)", "c.d": "-infinity (overflow)"}}


def test_a_tsne_of_identical_points_is_refused_not_drawn_as_nan(tmp_path, capsys):
    """openTSNE on constant features returns an all-NaN embedding (checked here with its own
    code); repdiag refuses the map in one line and writes nothing."""
    import openTSNE

    h = torch.ones(40, 4)
    y = torch.arange(40) % 3
    with np.errstate(all="ignore"):
        emb = np.asarray(openTSNE.TSNE(perplexity=5, n_iter=10, early_exaggeration_iter=10,
                                       random_state=0).fit(h.double().numpy()))
    assert np.isnan(emb).all()
    path = _save(tmp_path / "f.pt", h, y)
    out = tmp_path / "figs"
    code = main(["tsne", str(path), "--perplexity", "5", "--out", str(out), "--json"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "all 40 points are identical" in err and not out.exists()
