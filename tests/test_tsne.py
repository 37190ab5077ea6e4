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
