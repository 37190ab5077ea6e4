"""The exact-gradient torch t-SNE: gradient, optimiser, KL against openTSNE, device errors."""

import importlib
import time

import numpy as np
import pytest
import torch

from repdiag.cli import main
from repdiag.diagnostics import tsne
from repdiag.diagnostics import tsne_torch as tt
from repdiag.diagnostics.tsne import exact_affinities
from repdiag.errors import UserError
from repdiag.features import FeatureSet, save_features

tsne_mod = importlib.import_module("repdiag.diagnostics.tsne")
# Small per-element kernels: one thread is as fast, and on a busy 2-core machine two
# spinning OpenMP threads are many times slower.
pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n, d=50, k=10, seed=0):
    g = np.random.default_rng(seed)
    centers = g.standard_normal((k, d)) * 4
    y = g.integers(0, k, n)
    return centers[y] + g.standard_normal((n, d)), y


def _brute_force_gradient(P, Y, exaggeration=1.0):
    """Autograd over the dense N×N kernel of C_α = Σ p log p − α Σ p log w + log Z (α the
    exaggeration; C_1 = KL(P‖Q)), the objective whose gradient openTSNE's exaggerated step follows."""
    Pd = torch.tensor(P.toarray())
    y = Y.clone().requires_grad_(True)
    w = 1 / (1 + (y[:, None] - y[None]).square().sum(-1))
    w = w * (1 - torch.eye(len(y), dtype=w.dtype))
    m = Pd > 0
    kl = (Pd[m] * (Pd[m].log() - exaggeration * w[m].log())).sum() + w.sum().log()
    kl.backward()
    return kl.detach(), y.grad


def test_gradient_matches_autograd_float64():
    x, _ = _blobs(30, d=8, k=3)
    P = exact_affinities(torch.from_numpy(x), 5).P
    Y = torch.from_numpy(np.random.default_rng(1).standard_normal((30, 2)))
    for exaggeration in (1.0, 12.0):
        kl, ref = _brute_force_gradient(P, Y, exaggeration)
        g = tt.kl_gradient(P, Y, exaggeration=exaggeration)
        assert g.dtype == torch.float64 and (g - ref).abs().max() < 1e-6 * max(1.0, ref.abs().max())
        assert (g - ref).abs().max() < 1e-12
    assert abs(tt.kl_divergence(P, Y) - _brute_force_gradient(P, Y)[0].item()) < 1e-12
    # a P that is not symmetric: the gradient is that of its symmetric part
    Pa = P.tolil()
    Pa[0, 1] += 0.01
    Pa = Pa.tocsr() / Pa.sum()
    _, ref = _brute_force_gradient(Pa, Y)
    assert (tt.kl_gradient(Pa, Y) - ref).abs().max() < 1e-12


def test_chunked_equals_unchunked():
    x, _ = _blobs(200, d=10, k=4)
    aff = exact_affinities(torch.from_numpy(x), 10)
    init = tt.pca_initialization(torch.from_numpy(x), 2, seed=0)
    Y = init * 1e4
    g_full = tt.kl_gradient(aff.P, Y, chunk_size=200)
    for cs in (1, 7, 64):
        assert (tt.kl_gradient(aff.P, Y, chunk_size=cs) - g_full).abs().max() < 1e-13
    kw = dict(early_exaggeration_iter=30, n_iter=30, dtype=torch.float64)
    a, ia = tt.optimize(aff.P, init, chunk_size=200, **kw)
    b, ib = tt.optimize(aff.P, init, chunk_size=37, **kw)
    assert ia["chunk_size"] == 200 and ib["chunk_size"] == 37
    assert (a - b).abs().max() < 1e-9 * a.abs().max()
    assert abs(ia["kl_divergence"] - ib["kl_divergence"]) < 1e-9
    assert abs(tt.kl_divergence(aff.P, a, chunk_size=5) - ia["kl_divergence"]) < 1e-12


def test_segmented_sum_equals_scatter_add():
    """The CUDA default sums the attraction per row with segment_reduce (no atomics); same numbers."""
    x, _ = _blobs(150, d=10, k=3)
    P = exact_affinities(torch.from_numpy(x), 10).P
    Yt = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 150)))
    cpu = torch.device("cpu")
    a = tt._attraction(tt._pairs(P, 150, cpu, torch.float64, segmented=False), Yt)
    b = tt._attraction(tt._pairs(P, 150, cpu, torch.float64, segmented=True), Yt)
    assert (a - b).abs().max() < 1e-15


def test_initialization_and_steps_are_opentsnes():
    """PCA init equals openTSNE's; from the same start, with openTSNE's Barnes-Hut at θ = 0 (exact
    for embeddings not squeezed to 1e-4), both optimisers take the same steps: same gains, momentum,
    learning rate, step clipping, re-centring and exaggeration schedule."""
    import openTSNE
    from openTSNE import initialization

    x, _ = _blobs(300, d=20, k=3)
    aff = exact_affinities(torch.from_numpy(x), 10)
    init = tt.pca_initialization(torch.from_numpy(x), 2, seed=3)
    ref = initialization.pca(x, 2, random_state=3)
    assert np.abs(init.numpy() - ref).max() < 1e-9 * np.abs(ref).max()
    start = init.numpy() * 1e3
    ot = openTSNE.TSNE(theta=0.0, negative_gradient_method="bh", early_exaggeration_iter=20, n_iter=20,
                       n_jobs=1, random_state=0)
    e = np.asarray(ot.fit(x, affinities=aff, initialization=start.copy()))
    y, _ = tt.optimize(aff.P, torch.from_numpy(start), dtype=torch.float64, early_exaggeration_iter=20,
                       n_iter=20)
    assert np.abs(y.numpy() - e).max() < 1e-8 * np.abs(e).max()


def test_kl_within_3_percent_of_opentsne_on_2000_points():
    """openTSNE's defaults on both sides (PCA init, exaggeration 12 for 250 iterations, 500 more,
    learning rate N/exaggeration), the same affinities, KL(P‖Q) computed by the same exact formula."""
    import openTSNE

    x, y = _blobs(2000)
    aff = exact_affinities(torch.from_numpy(x), 30, n_jobs=1)
    t0 = time.perf_counter()
    ours = tsne(x, y, backend="torch", n_jobs=1)
    t1 = time.perf_counter()
    emb = np.asarray(openTSNE.TSNE(n_jobs=1, random_state=0).fit(x, affinities=aff))
    t2 = time.perf_counter()
    kl_ot = tt.kl_divergence(aff.P, emb)
    kl_torch = tt.kl_divergence(aff.P, ours.embedding)
    assert ours.params["backend"] == "torch" and ours.params["device"] == "cpu"
    assert ours.params["n_iter"] == 500 and ours.params["early_exaggeration_iter"] == 250
    assert abs(ours.params["kl_divergence"] - kl_torch) < 1e-9
    assert abs(kl_torch - kl_ot) <= 0.03 * kl_ot, (kl_torch, kl_ot)
    print(f"2000 points: KL torch {kl_torch:.4f} ({t1 - t0:.1f} s), openTSNE {kl_ot:.4f} ({t2 - t1:.1f} s)")


def test_cuda_without_cuda_is_a_one_line_error_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_work(*a, **k):
        raise AssertionError("work started before the device check")

    monkeypatch.setattr(tsne_mod, "exact_affinities", no_work)
    x, y = _blobs(100, d=5, k=2)
    with pytest.raises(UserError, match="no CUDA device"):
        tsne(x, y, device="cuda")
    with pytest.raises(UserError, match="unknown t-SNE device"):
        tsne(x, y, device="gpu")
    with pytest.raises(UserError, match="backend"):
        tsne(x, y, backend="sklearn")
    g = torch.Generator().manual_seed(0)
    fs = FeatureSet(h=torch.randn(60, 8, generator=g), y=torch.randint(0, 3, (60,), generator=g))
    path = tmp_path / "f.pt"
    save_features(path, fs, fs)
    out = tmp_path / "figs"
    code = main(["tsne", str(path), "--device", "cuda", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "no CUDA device" in err and not out.exists()


def test_cpu_torch_backend_through_cli_and_options(tmp_path, capsys):
    import json

    x, y = _blobs(120, d=8, k=3)
    fs = FeatureSet(h=torch.from_numpy(x).float(), y=torch.from_numpy(y))
    path = tmp_path / "f.pt"
    save_features(path, fs, fs)
    code = main(["tsne", str(path), "--backend", "torch", "--out", str(tmp_path / "figs"),
                 "--perplexity", "10", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    r = json.loads(out.out)
    assert r["h"]["backend"] == "torch" and r["h"]["kl_divergence"] > 0 and r["h"]["n"] == 120
    with pytest.raises(UserError, match="torch backend"):
        tsne(x, backend="torch", theta=0.5)
    with pytest.raises(UserError, match="dof=1"):
        tsne(x, backend="torch", dof=0.5, n_iter=1, early_exaggeration_iter=1)
    res = tsne(x, backend="opentsne", n_jobs=1, n_iter=10, early_exaggeration_iter=10)
    assert res.params["backend"] == "opentsne" and res.params["kl_divergence"] > 0


def test_gpu_request_above_the_limit_falls_back_to_opentsne(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    x, y = _blobs(150, d=6, k=3)
    res = tsne(x, y, device="cuda", exact_limit=100, n_jobs=1, perplexity=10, n_iter=10,
               early_exaggeration_iter=10, neighbors="annoy")
    err = capsys.readouterr().err
    assert res.params["backend"] == "opentsne" and "fallback" in res.params
    assert len(err.strip().splitlines()) == 1 and "openTSNE on the host" in err
