import json

import numpy as np
import pytest
import torch

from repdiag.diagnostics import rank, rank_deficit
from repdiag.errors import UserError


def _low_rank(n, m, r, seed=0, noise=0.01, dtype=torch.float64):
    """Rank-r product of random factors plus noise whose spectral norm is ``noise`` times
    the float64 cut-off σ_1·max(n, m)·eps, i.e. safely below it."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, r, generator=g, dtype=torch.float64)
    b = torch.randn(r, m, generator=g, dtype=torch.float64)
    x = a @ b
    cut = float(torch.linalg.svdvals(x)[0]) * max(n, m) * torch.finfo(torch.float64).eps
    e = torch.randn(n, m, generator=g, dtype=torch.float64)
    x = x + noise * cut * e / float(torch.linalg.svdvals(e)[0])
    return x.to(dtype)


@pytest.mark.parametrize(("n", "m", "r"), [(400, 64, 17), (40, 100, 9), (300, 30, 30), (50, 8, 1)])
def test_known_rank_float64_agrees_with_matrix_rank(n, m, r):
    x = _low_rank(n, m, r)
    res = rank(x)
    assert res.rank == r == int(torch.linalg.matrix_rank(x))
    assert res.dtype == "torch.float64"
    sv = torch.linalg.svdvals(x)
    eps = torch.finfo(torch.float64).eps
    assert res.rtol == pytest.approx(max(n, m) * eps)
    assert res.tol == pytest.approx(float(sv[0]) * max(n, m) * eps)
    torch.testing.assert_close(res.singular_values, sv)


def test_known_rank_float32_agrees_with_matrix_rank():
    # the float32 Gram route would overcount here; svdvals on X does not
    x = _low_rank(1000, 128, 40, noise=0.0, dtype=torch.float32)
    res = rank(x)
    assert res.dtype == "torch.float32"
    assert res.rank == 40 == int(torch.linalg.matrix_rank(x))


def test_rtol_atol_as_matrix_rank():
    x = _low_rank(200, 20, 20, noise=0.0)
    x[:, -1] *= 1e-6  # one small direction
    for kw in ({"rtol": 1e-4}, {"rtol": 1e-8}, {"atol": 1.0, "rtol": 0.0}, {"atol": 1e3}):
        assert rank(x, **kw).rank == int(torch.linalg.matrix_rank(x, **kw))
    assert rank(x, rtol=1e-4).rank == 19
    assert rank(x, atol=1e3).tol == 1e3


def test_streaming_qr_route_matches_direct():
    x = _low_rank(1000, 32, 12)
    a, b = rank(x), rank(x, chunk_size=64)
    assert a.rank == b.rank == 12
    torch.testing.assert_close(a.singular_values, b.singular_values, rtol=1e-9, atol=1e-9)


def test_effective_ranks_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 16)) * np.geomspace(5, 0.2, 16) + 3.0
    res = rank(x)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert res.effective_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    lam = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 0, None)
    q = lam / lam.sum() + 1e-7
    assert res.effective_rank_centred == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-8)
    # the two are different numbers (variance ratios ∝ σ² concentrate more)
    z = rng.standard_normal((500, 16)) * np.geomspace(5, 0.2, 16)
    rz = rank(z)
    assert rz.effective_rank_centred < rz.effective_rank


def test_rank_deficit():
    h = _low_rank(300, 40, 25)
    w = _low_rank(40, 16, 6, seed=3, noise=0.0)  # head of rank 6
    res = rank_deficit(h, h @ w)
    assert (res.rank_h, res.rank_z, res.deficit) == (25, 6, 19)
    d = res.to_dict()
    json.dumps(d)
    assert d["h"]["rank"] == 25 and d["deficit"] == 19


def test_errors():
    with pytest.raises(UserError, match="NaN"):
        rank(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
    with pytest.raises(UserError, match="2-D"):
        rank(torch.ones(2, 2, 2))
    with pytest.raises(UserError, match="same samples"):
        rank_deficit(torch.randn(10, 3), torch.randn(9, 3))
    with pytest.raises(UserError, match="rtol"):
        rank(torch.randn(10, 3), rtol=-1.0)


def test_noise_above_cutoff_counts_as_full_rank():
    x = _low_rank(300, 20, 5, noise=100.0)
    assert rank(x).rank == 20 == int(torch.linalg.matrix_rank(x))


@pytest.mark.parametrize("n,m,r", [(1000, 128, 40), (3000, 256, 200), (600, 64, 64)])
def test_gram_route_agrees_with_matrix_rank_on_tall_float32(n, m, r):
    g = torch.Generator().manual_seed(n + r)
    X = (torch.randn(n, r, generator=g) @ torch.randn(r, m, generator=g)).float()
    gram = rank(X, method="gram")
    svd = rank(X, method="svd")
    assert gram.method == "gram" and svd.method == "svd"
    assert gram.rank == svd.rank == int(torch.linalg.matrix_rank(X)) == r
    torch.testing.assert_close(gram.singular_values[:r].double(), svd.singular_values[:r].double(),
                               rtol=1e-4, atol=1e-4 * float(svd.singular_values[0]))
    assert gram.effective_rank == pytest.approx(svd.effective_rank, rel=1e-3)
    assert gram.effective_rank_centred == pytest.approx(svd.effective_rank_centred, rel=1e-3)
    assert rank(X).method == "gram"


def test_gram_route_refused_for_float64():
    with pytest.raises(UserError, match="not accurate enough for float64"):
        rank(torch.randn(100, 5, dtype=torch.float64), method="gram")
    assert rank(torch.randn(100, 5, dtype=torch.float64)).method == "svd"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectrum_rank_equals_separate_calls(dtype):
    from repdiag.diagnostics import spectrum, spectrum_rank

    g = torch.Generator().manual_seed(5)
    X = (torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 20, generator=g,
                                                                           dtype=torch.float64) + 3.0)
    X = X.to(dtype)
    spec, r = spectrum_rank(X)
    ref_r, ref_s = rank(X), spectrum(X)
    # uncentred rank: 6 factors + the mean direction
    assert r.rank == ref_r.rank == 7 and r.tol == ref_r.tol and r.method == ref_r.method
    top = float(ref_s.eigenvalues[0])
    torch.testing.assert_close(spec.eigenvalues, ref_s.eigenvalues, rtol=1e-9, atol=1e-9 * top)
    ref = np.linalg.eigvalsh(np.cov(X.double().numpy(), rowvar=False))[::-1]
    np.testing.assert_allclose(spec.eigenvalues[:6].numpy(), ref[:6].copy(), rtol=1e-5)
    assert spec.n == 400 and spec.dim == 20 and not spec.normalized
