import json

import numpy as np
import pytest
import torch

from repdiag.diagnostics import tsne
from repdiag.errors import UserError


def test_two_separated_clusters_stay_separated():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    labels = np.repeat([0, 1], 150)
    x[labels == 1] += 20.0
    res = tsne(x, labels, n_jobs=1, perplexity=20, n_iter=100, early_exaggeration_iter=50)
    e = res.embedding
    assert e.shape == (300, 2) and e.dtype == np.float64 and np.isfinite(e).all()
    assert np.array_equal(res.labels, labels)
    c0, c1 = e[labels == 0].mean(0), e[labels == 1].mean(0)
    spread = max(np.linalg.norm(e[labels == k] - c, axis=1).max() for k, c in ((0, c0), (1, c1)))
    assert np.linalg.norm(c0 - c1) > 2 * spread  # clusters do not overlap
    d = res.to_dict()
    json.dumps(d)
    assert d["n"] == 300 and d["params"]["perplexity"] == 20 and d["params"]["random_state"] == 0
    assert d["params"]["initialization"] == "pca" and "embedding" not in d


def test_errors():
    x = np.zeros((50, 3))
    with pytest.raises(UserError, match="labels"):
        tsne(x, np.zeros(49, dtype=int))
    with pytest.raises(UserError, match="perplexity"):
        tsne(x, perplexity=30)


def test_exact_affinities_equal_opentsne_exact():
    from openTSNE.affinity import PerplexityBasedNN

    from repdiag.diagnostics.tsne import exact_affinities

    x = np.random.default_rng(1).standard_normal((400, 20))
    ref = PerplexityBasedNN(x, perplexity=10, method="exact", random_state=0)
    ours = exact_affinities(torch.from_numpy(x), 10)
    assert ours.P.nnz == ref.P.nnz
    assert abs(ours.P - ref.P).max() < 1e-6 * ref.P.max()


def test_annoy_neighbours_still_selectable():
    x = np.random.default_rng(2).standard_normal((200, 5))
    res = tsne(x, n_jobs=1, perplexity=10, n_iter=20, early_exaggeration_iter=10, neighbors="annoy")
    assert res.params["neighbors"] == "annoy" and np.isfinite(res.embedding).all()


def test_opentsne_backend_with_openTSNE_neighbours_is_openTSNE_fit_to_the_bit():
    """Affinities, initialisation and optimiser run as separate steps give exactly the map
    openTSNE.TSNE.fit makes on its own (same P, same PCA start, same descent)."""
    import openTSNE

    x = np.random.default_rng(3).standard_normal((150, 6))
    opts = dict(n_iter=30, early_exaggeration_iter=20, negative_gradient_method="bh")
    for init in ("pca", "random", "spectral"):
        ref = openTSNE.TSNE(perplexity=10, n_jobs=1, random_state=4, neighbors="annoy",
                            initialization=init, **opts).fit(x)
        res = tsne(x, n_jobs=1, perplexity=10, seed=4, neighbors="annoy", initialization=init, **opts)
        assert np.array_equal(res.embedding, np.asarray(ref)), init
        assert res.params["kl_divergence_opentsne"] == float(ref.kl_divergence)


def test_the_steps_refuse_unknown_names_before_any_work(monkeypatch):
    import importlib

    tsne_mod = importlib.import_module("repdiag.diagnostics.tsne")

    def no_work(*a, **k):
        raise AssertionError("work started before the option check")

    monkeypatch.setattr(tsne_mod, "affinities", no_work)
    x = np.random.default_rng(4).standard_normal((60, 4))
    with pytest.raises(UserError, match="^t-SNE takes initialization 'pca', 'random', 'spectral' "
                                        "or an array, got 'umap'$"):
        tsne(x, perplexity=5, initialization="umap")
    with pytest.raises(UserError, match="^the torch t-SNE takes initialization 'pca', 'random' or "
                                        "an array, got 'spectral'$"):
        tsne(x, perplexity=5, backend="torch", initialization="spectral")
    monkeypatch.undo()
    with pytest.raises(UserError, match="^bad t-SNE neighbour option 'bogus': "):
        tsne(x, perplexity=5, neighbors="bogus")
