import json

import pytest
import torch

from repdiag.diagnostics import head_svd, nullspace, pinv_from_svd
from repdiag.errors import UserError


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_full_row_rank_pinv_is_right_inverse():
    A = _rand(8, 32)
    right = A.T @ torch.linalg.inv(A @ A.T)  # paper G eq. 4: A⁺ = Aᵀ(AAᵀ)⁻¹
    torch.testing.assert_close(pinv_from_svd(A), right, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.linalg.pinv(A), right, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head_svd(A).pinv(), right, rtol=1e-10, atol=1e-12)


def test_decomposition_properties():
    A = _rand(8, 32)
    H = _rand(200, 32, seed=1) + 0.5
    res = nullspace(H, A)
    assert res.head_rank == 8 and res.n == 200 and res.dim == 32 and res.out_dim == 8
    torch.testing.assert_close(res.h_r + res.h_n, H, rtol=0, atol=1e-12)
    # h_r = A⁺A h (eq. 4), computed independently
    P = A.T @ torch.linalg.inv(A @ A.T) @ A
    torch.testing.assert_close(res.h_r, H @ P.T, rtol=1e-9, atol=1e-10)
    assert float((res.h_r * res.h_n).sum(dim=1).abs().max()) < 1e-10  # h_r ⟂ h_n row-wise
    assert float((res.h_n @ A.T).abs().max()) < 1e-10  # A h_n = 0
    assert res.residual < 1e-12
    e = float(res.h_r.square().sum() / H.square().sum())
    assert res.energy_range == pytest.approx(e, rel=1e-12)
    torch.testing.assert_close(res.singular_values, torch.linalg.svdvals(A))
    Q = res.basis
    assert Q.shape == (32, 8)
    torch.testing.assert_close(Q.T @ Q, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("r", [1, 5, 12])
def test_rank_deficient_head(r):
    A = _rand(16, r, seed=2) @ _rand(r, 48, seed=3)  # rank r exactly (up to round-off)
    H = _rand(100, 48, seed=4)
    res = nullspace(H, A)
    assert res.head_rank == r == int(torch.linalg.matrix_rank(A))
    assert res.basis.shape == (48, r)
    assert res.residual < 1e-12
    P = torch.linalg.pinv(A) @ A
    torch.testing.assert_close(res.h_r, H @ P.T, rtol=1e-8, atol=1e-9)
    assert res.tol == pytest.approx(float(res.singular_values[0]) * 48 * torch.finfo(A.dtype).eps)


def test_float32_residual_and_rtol():
    A = _rand(16, 64, dtype=torch.float32)
    H = _rand(500, 64, seed=5, dtype=torch.float32)
    res = nullspace(H, A)
    assert res.h_r.dtype == torch.float32
    assert res.residual < 1e-5
    assert nullspace(H, A, rtol=1.0).head_rank == 0  # cut-off at σ_1 drops everything
    assert torch.equal(nullspace(H, A, rtol=1.0).h_n, H)


def test_chunking_and_bias():
    A = _rand(6, 20)
    H = _rand(97, 20, seed=1)
    a = nullspace(H, A, chunk_size=10)
    b = nullspace(H, A, bias=torch.ones(6))
    torch.testing.assert_close(a.h_r, b.h_r, rtol=0, atol=1e-14)
    assert a.energy_range == pytest.approx(b.energy_range, rel=1e-12)
    assert b.bias_norm == pytest.approx(6**0.5)
    d = b.to_dict()
    json.dumps(d)
    assert "h_r" not in d and "h_n" not in d and "basis" not in d
    assert d["head_rank"] == 6 and len(d["singular_values"]) == 6


def test_errors():
    A = _rand(4, 10)
    with pytest.raises(UserError, match="features"):
        nullspace(_rand(5, 11), A)
    with pytest.raises(UserError, match="bias"):
        nullspace(_rand(5, 10), A, bias=torch.ones(3))
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        nullspace(_rand(5, 10), bad)
    with pytest.raises(UserError, match="2-D"):
        nullspace(_rand(5, 10), torch.ones(10))
