import numpy as np
import pytest
import torch

from repdiag.diagnostics import cka
from repdiag.errors import UserError


def _np_cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_orthogonal_transform_gives_one():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12)) * np.geomspace(4, 0.3, 12) + 2.0
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert cka(torch.from_numpy(x), torch.from_numpy(x @ q)) == pytest.approx(1.0, abs=1e-12)


def test_isotropic_scaling_invariance_and_numpy_match():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 10))
    y = np.tanh(x @ rng.standard_normal((10, 7))) + 0.3 * rng.standard_normal((400, 7))
    ref = _np_cka(x, y)
    assert 0.05 < ref < 0.99
    assert cka(x, y) == pytest.approx(ref, rel=1e-10)
    assert cka(3.7 * x, y) == pytest.approx(ref, rel=1e-10)
    assert cka(x, 0.01 * y + 5.0) == pytest.approx(ref, rel=1e-10)
    assert cka(x, y) == pytest.approx(cka(y, x), rel=1e-12)
    # float32 inputs, small chunks
    xf, yf = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    assert cka(xf, yf, chunk_size=13) == pytest.approx(ref, rel=1e-5)


def test_independent_random_is_near_zero():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 5, generator=g)
    y = torch.randn(20000, 5, generator=g)
    assert cka(x, y) < 0.01


def test_errors():
    with pytest.raises(UserError, match="same samples"):
        cka(torch.randn(10, 3), torch.randn(11, 3))
    with pytest.raises(UserError, match="NaN"):
        cka(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.randn(2, 2))
    with pytest.raises(UserError, match="2-D"):
        cka(torch.randn(10), torch.randn(10, 3))
