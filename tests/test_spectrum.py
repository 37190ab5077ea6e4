import json

import numpy as np
import pytest
import torch

from repdiag.diagnostics import (
    alpha_req,
    default_alpha_req_ranks,
    participation_ratio,
    spectrum,
)
from repdiag.errors import UserError


def _data(n=500, m=24, seed=0, offset=0.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.1, m)
    return (rng.standard_normal((n, m)) * scales + offset).astype(dtype)


def _np_eigs(x):
    return np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)))[::-1]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_numpy_cov(dtype):
    x = _data(dtype=dtype)
    res = spectrum(torch.from_numpy(x))
    assert res.eigenvalues.dtype == torch.float64
    assert res.n == 500 and res.dim == 24 and res.normalized is False
    np.testing.assert_allclose(res.eigenvalues.numpy(), _np_eigs(x), rtol=1e-5)
    assert bool((res.eigenvalues[:-1] >= res.eigenvalues[1:]).all())


def test_numpy_input_and_large_mean_offset():
    # a big common offset must not destroy the small eigenvalues (centre before the product)
    x = _data(offset=1e4)
    res = spectrum(x)
    np.testing.assert_allclose(res.eigenvalues.numpy(), _np_eigs(x), rtol=1e-5)


def test_chunking_gives_same_result():
    x = torch.from_numpy(_data(n=301))
    a = spectrum(x, chunk_size=7).eigenvalues
    b = spectrum(x, chunk_size=100000).eigenvalues
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_normalize_rows_first():
    x = _data(offset=1.0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    res = spectrum(torch.from_numpy(x), normalize=True)
    assert res.normalized
    np.testing.assert_allclose(res.eigenvalues.numpy(), _np_eigs(xn), rtol=1e-5, atol=1e-14)


def test_to_dict_is_json():
    d = spectrum(_data(n=50, m=4)).to_dict()
    json.dumps(d)
    assert len(d["eigenvalues"]) == 4 and d["n"] == 50


def test_participation_ratio():
    assert participation_ratio(torch.ones(7)) == pytest.approx(7.0)
    e = np.array([4.0, 2.0, 1.0, 0.5])
    assert participation_ratio(e) == pytest.approx(e.sum() ** 2 / (e**2).sum())
    res = spectrum(_data(n=200, m=6))
    e = res.eigenvalues.numpy()
    assert participation_ratio(res) == pytest.approx(e.sum() ** 2 / (e**2).sum())


def test_alpha_req_recovers_power_law_and_reports_range():
    i = np.arange(1, 257)
    eigs = 5.0 * i ** -1.3
    res = alpha_req(eigs)
    assert res.alpha == pytest.approx(1.3, abs=1e-9)
    assert res.intercept == pytest.approx(np.log(5.0), abs=1e-9)
    assert res.rank_range == (11, 100)
    assert alpha_req(eigs, ranks=(2, 20)).rank_range == (2, 20)
    json.dumps(res.to_dict())
    assert default_alpha_req_ranks(2048) == (11, 100)
    assert default_alpha_req_ranks(32) == (4, 25)


def test_errors():
    x = _data(n=20, m=3)
    x[5, 1] = np.nan
    with pytest.raises(UserError, match="NaN"):
        spectrum(x)
    with pytest.raises(UserError, match="2-D"):
        spectrum(torch.ones(5))
    with pytest.raises(UserError, match="row"):
        spectrum(torch.ones(1, 3))
    with pytest.raises(UserError, match="empty"):
        spectrum(torch.ones(0, 3))
    with pytest.raises(UserError, match="chunk_size"):
        spectrum(torch.ones(4, 3), chunk_size=0)
    with pytest.raises(UserError, match="all-zero row"):
        spectrum(torch.zeros(4, 3), normalize=True)
