import json

import numpy as np
import pytest
import torch

from repdiag.diagnostics import knn_probe, knn_probe_split, nearest_neighbours, nullspace
from repdiag.errors import UserError


def _data(n_train=300, n_test=120, m=12, c=5, seed=0, dtype=torch.float64, sep=1.0):
    g = torch.Generator().manual_seed(seed)
    centers = sep * torch.randn(c, m, generator=g, dtype=torch.float64)
    ytr = torch.randint(0, c, (n_train,), generator=g)
    yte = torch.randint(0, c, (n_test,), generator=g)
    xtr = centers[ytr] + torch.randn(n_train, m, generator=g, dtype=torch.float64)
    xte = centers[yte] + torch.randn(n_test, m, generator=g, dtype=torch.float64)
    return xtr.to(dtype), ytr, xte.to(dtype), yte


def _reference(xtr, ytr, xte, k, T, c, distance="cosine"):
    """Brute force, one test sample at a time, in numpy float64."""
    xtr, xte = np.asarray(xtr, np.float64), np.asarray(xte, np.float64)
    ytr = np.asarray(ytr)
    k = min(k, len(xtr))
    if distance == "cosine":
        xtr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
        xte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    preds = []
    for x in xte:
        if distance == "cosine":
            sim = xtr @ x
            nn = np.argsort(-sim)[:k]
            w = np.exp(sim[nn] / T)
        else:
            dist = np.sqrt(((xtr - x) ** 2).sum(axis=1))
            nn = np.argsort(dist)[:k]
            w = 1.0 / (dist[nn] + 1e-5)
        votes = np.zeros(c)
        for j, wj in zip(nn, w, strict=True):
            votes[ytr[j]] += wj
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize(("preset", "k", "T"), [("g", 200, 0.5), ("lightly", 200, 0.1),
                                                 ("solo-cosine", 20, 0.07)])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_matches_bruteforce_cosine(preset, k, T, chunk_size):
    xtr, ytr, xte, yte = _data()
    res = knn_probe(xtr, ytr, xte, yte, preset=preset, chunk_size=chunk_size)
    ref = _reference(xtr, ytr, xte, k, T, 5)
    np.testing.assert_array_equal(res.predictions.numpy(), ref)
    assert res.accuracy == pytest.approx(float((ref == yte.numpy()).mean()))
    assert res.protocol == {**res.protocol, "name": "knn", "k": k, "temperature": T,
                            "preset": preset, "distance": "cosine"}


def test_matches_bruteforce_euclidean_solo():
    xtr, ytr, xte, yte = _data(sep=2.0)
    res = knn_probe(xtr, ytr, xte, yte, preset="solo", chunk_size=16)
    ref = _reference(xtr, ytr, xte, 20, None, 5, distance="euclidean")
    np.testing.assert_array_equal(res.predictions.numpy(), ref)
    assert res.protocol["distance"] == "euclidean" and res.protocol["k"] == 20


def test_default_is_paper_g_and_overrides_and_k_clip():
    xtr, ytr, xte, yte = _data(n_train=50, n_test=30)
    res = knn_probe(xtr, ytr, xte, yte)  # k=200 > 50 training rows: clipped
    assert res.protocol["preset"] == "g" and res.protocol["k"] == 50
    assert res.protocol["k_requested"] == 200
    np.testing.assert_array_equal(res.predictions.numpy(), _reference(xtr, ytr, xte, 50, 0.5, 5))
    res = knn_probe(xtr, ytr, xte, yte, k=3, temperature=0.2)
    np.testing.assert_array_equal(res.predictions.numpy(), _reference(xtr, ytr, xte, 3, 0.2, 5))


def test_float32_and_numpy_inputs():
    xtr, ytr, xte, yte = _data(dtype=torch.float32)
    res = knn_probe(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), k=10)
    ref = _reference(xtr, ytr, xte, 10, 0.5, 5)
    assert (res.predictions.numpy() == ref).mean() >= 0.98


def test_separable_data_is_accurate():
    xtr, ytr, xte, yte = _data(sep=6.0)
    assert knn_probe(xtr, ytr, xte, yte, k=20).accuracy > 0.95


def test_ties_go_to_lowest_class():
    xtr = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ytr = torch.tensor([2, 1, 0])
    res = knn_probe(xtr, ytr, torch.tensor([[1.0, 0.0]]), torch.tensor([1]), k=2)
    assert res.predictions.tolist() == [1]


def test_to_dict_json_without_predictions():
    xtr, ytr, xte, yte = _data(n_train=40, n_test=10)
    d = knn_probe(xtr, ytr, xte, yte, k=5).to_dict()
    json.dumps(d)
    assert "predictions" not in d and d["n_train"] == 40 and d["n_test"] == 10
    assert 0.0 <= d["accuracy"] <= 1.0


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_split_matches_explicit_h_r_h_n(distance):
    xtr, ytr, xte, yte = _data(n_train=400, n_test=150, m=24, c=4, sep=1.5)
    A = torch.randn(6, 24, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ns_tr, ns_te = nullspace(xtr, A), nullspace(xte, A)
    split = knn_probe_split(xtr, ytr, xte, yte, ns_tr.basis, k=30, distance=distance,
                            chunk_size=37)
    assert set(split) == {"h", "h_r", "h_n"}
    for key, (a, b) in {"h": (xtr, xte), "h_r": (ns_tr.h_r, ns_te.h_r),
                        "h_n": (ns_tr.h_n, ns_te.h_n)}.items():
        ref = knn_probe(a, ytr, b, yte, k=30, distance=distance)
        assert torch.equal(split[key].predictions, ref.predictions), key
        assert split[key].accuracy == ref.accuracy
        assert split[key].protocol["features"] == key


def test_split_float32_agrees():
    xtr, ytr, xte, yte = _data(n_train=400, n_test=200, m=24, c=4, sep=1.5, dtype=torch.float32)
    A = torch.randn(6, 24, generator=torch.Generator().manual_seed(9))
    ns = nullspace(torch.cat([xtr, xte]), A)
    split = knn_probe_split(xtr, ytr, xte, yte, ns, k=30)  # NullspaceResult accepted as basis
    for key, feats in {"h_r": ns.h_r, "h_n": ns.h_n}.items():
        ref = knn_probe(feats[:400], ytr, feats[400:], yte, k=30)
        assert (split[key].predictions == ref.predictions).float().mean() >= 0.99


def test_errors():
    xtr, ytr, xte, yte = _data(n_train=20, n_test=5)
    with pytest.raises(UserError, match="unknown kNN preset"):
        knn_probe(xtr, ytr, xte, yte, preset="nope")
    with pytest.raises(UserError, match="features"):
        knn_probe(xtr, ytr, xte[:, :3], yte)
    with pytest.raises(UserError, match="labels"):
        knn_probe(xtr, ytr[:-1], xte, yte)
    bad = xte.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        knn_probe(xtr, ytr, bad, yte)
    with pytest.raises(UserError, match="empty"):
        knn_probe(xtr[:0], ytr[:0], xte, yte)
    with pytest.raises(UserError, match="k must"):
        knn_probe(xtr, ytr, xte, yte, k=0)
    with pytest.raises(UserError, match="orthonormal"):
        knn_probe_split(xtr, ytr, xte, yte, torch.ones(12, 2))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_neighbours_match_bruteforce(metric):
    xtr, _, xte, _ = _data(n_train=200, n_test=50)
    vals, idx = nearest_neighbours(xte, xtr, 7, metric=metric, chunk_size=9)
    a, b = xte.numpy(), xtr.numpy()
    if metric == "cosine":
        full = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1)[:, None]).T
        order = np.argsort(-full, axis=1)[:, :7]
    else:
        full = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        order = np.argsort(full, axis=1)[:, :7]
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_allclose(vals.numpy(), np.take_along_axis(full, order, 1), rtol=1e-9, atol=1e-9)


def test_nearest_neighbours_exclude_self_and_errors():
    x = _data(n_train=60)[0]
    vals, idx = nearest_neighbours(x, x, 5, metric="euclidean", exclude_self=True, chunk_size=7)
    assert not (idx == torch.arange(60)[:, None]).any() and (vals > 0).all()
    d = torch.cdist(x, x).fill_diagonal_(float("inf"))
    np.testing.assert_allclose(vals.numpy(), d.topk(5, largest=False).values.numpy(), rtol=1e-9)
    with pytest.raises(UserError, match="k must be an integer in 1..59"):
        nearest_neighbours(x, x, 60, exclude_self=True)
    with pytest.raises(UserError, match="metric"):
        nearest_neighbours(x, x, 3, metric="manhattan")
    with pytest.raises(UserError, match="features"):
        nearest_neighbours(x, x[:, :3], 3)
