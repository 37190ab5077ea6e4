"""Numerical rank, effective rank and rank deficit (paper G §3.1, eq. 3, Fig. 2c)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from repdiag.diagnostics._common import EXCLUDE, Result, as_matrix, check_chunk, check_rtol, scatter
from repdiag.diagnostics.spectrum import SpectrumResult, spectrum
from repdiag.errors import UserError

RANKME_EPS = 1e-7


@dataclasses.dataclass
class RankResult(Result):
    """Numerical rank of X with the cut-off used, and two effective ranks.

    ``rank`` counts σ_i > ``tol`` = max(atol, σ_1·rtol) as torch.linalg.matrix_rank.
    ``effective_rank`` is RankMe on the uncentred singular values;
    ``effective_rank_centred`` the same entropy on centred covariance eigenvalues
    (PCA variance ratios) — a different, smaller number.
    """

    rank: int
    tol: float
    rtol: float
    atol: float
    dtype: str
    singular_values: torch.Tensor
    effective_rank: float
    effective_rank_centred: float | None
    n: int
    dim: int
    method: str = "svd"
    #: eigenvalues of the centred covariance (descending; the spectrum of X), when computed
    covariance_eigenvalues: torch.Tensor | None = dataclasses.field(default=None, metadata=EXCLUDE)


@dataclasses.dataclass
class RankDeficitResult(Result):
    """rank(H) − rank(Z) (paper G eq. 3) with both rank results."""

    rank_h: int
    rank_z: int
    deficit: int
    h: RankResult
    z: RankResult


def entropy_rank(weights: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """exp(−Σ p_k log p_k) with p_k = w_k/Σw + eps (RankMe's formula); 0.0 if Σw = 0."""
    w = weights.detach().to(torch.float64).clamp_min(0)
    total = w.sum()
    if float(total) == 0.0:
        return 0.0
    p = w / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def _tall_r(X: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """R factor of X by streaming QR over row chunks (σ(R) = σ(X))."""
    r = torch.linalg.qr(X[:chunk_size], mode="r")[1]
    for s in range(chunk_size, X.shape[0], chunk_size):
        r = torch.linalg.qr(torch.cat([r, X[s : s + chunk_size]]), mode="r")[1]
    return r


def rank(X: Any, *, rtol: float | None = None, atol: float = 0.0,
         chunk_size: int | None = None, centred: bool = True, name: str = "X",
         method: str = "auto") -> RankResult:
    """Numerical rank of X (N×m) as torch.linalg.matrix_rank counts it (paper G Fig. 2c).

    rank = #{σ_i > max(atol, σ_1·rtol)}, default rtol = max(N, m)·eps(X.dtype),
    σ = torch.linalg.svdvals(X) of the *uncentred* X in X's own dtype (no Gram
    matrix: a float32 Gram has a noise floor near 3e-4·σ_1 and miscounts).
    With ``chunk_size`` set and N > chunk_size, σ is taken from the R factor of a
    streaming QR over row chunks (same values up to round-off); by default
    svdvals runs on X directly, exactly as matrix_rank does.

    Also reports RankMe (Garrido et al. 2023), exp(−Σ p_k log p_k) with
    p_k = σ_k/‖σ‖₁ + 1e-7 on the uncentred σ, and ``effective_rank_centred``:
    the same formula on the centred covariance eigenvalues normalised to sum 1
    (``centred=False`` or N = 1 leaves it None).

    ``method``: ``"svd"`` (svdvals as above), ``"gram"`` (σ = sqrt of the
    eigenvalues of XᵀX accumulated in float64: σ_i is exact to about
    sqrt(eps64)·σ_1 ≈ 1.5e-8·σ_1, far below a float32 cut-off of
    max(N, m)·1.2e-7·σ_1, and cheaper than an SVD for tall X), or
    ``"auto"``: gram for float32 (or narrower) X with N ≥ 2m, else svd. Float64
    input always takes the SVD route (its cut-off is below the Gram's accuracy).
    """
    X = as_matrix(X, name)
    check_rtol(rtol)
    check_rtol(atol, "atol")
    n, m = X.shape
    eps = torch.finfo(X.dtype).eps
    rtol_used = float(max(n, m) * eps) if rtol is None else float(rtol)
    if method not in ("auto", "svd", "gram"):
        raise UserError(f"unknown rank method '{method}'; use auto, svd or gram")
    use_gram = method == "gram" or (method == "auto" and X.dtype != torch.float64 and n >= 2 * m)
    if use_gram and X.dtype == torch.float64:
        raise UserError("the Gram route is not accurate enough for float64 data; use method='svd'")
    eff_c = None
    cov_eig = None
    if use_gram:  # XᵀX = S + N·μμᵀ with S the centred scatter: one pass serves both
        mean, S = scatter(X, check_chunk(chunk_size))
        sv = torch.linalg.eigvalsh(S + n * torch.outer(mean, mean)).flip(0).clamp_min(0).sqrt()
        if centred and n >= 2:
            cov_eig = torch.linalg.eigvalsh(S / (n - 1)).flip(0)
    elif chunk_size is not None and n > check_chunk(chunk_size) and n > m:
        sv = torch.linalg.svdvals(_tall_r(X, chunk_size))
    else:
        sv = torch.linalg.svdvals(X)
    top = float(sv[0]) if sv.numel() else 0.0
    tol = max(float(atol), top * rtol_used)
    r = int((sv > tol).sum())
    if cov_eig is None and centred and n >= 2:
        cov_eig = spectrum(X).eigenvalues
    if cov_eig is not None:
        eff_c = entropy_rank(cov_eig.clamp_min(0))
    return RankResult(rank=r, tol=tol, rtol=rtol_used, atol=float(atol), dtype=str(X.dtype),
                      method="gram" if use_gram else "svd",
                      singular_values=sv, effective_rank=entropy_rank(sv),
                      effective_rank_centred=eff_c, n=int(n), dim=int(m),
                      covariance_eigenvalues=cov_eig)


def spectrum_rank(X: Any, *, rtol: float | None = None, chunk_size: int | None = None,
                  name: str = "X") -> tuple[SpectrumResult, RankResult]:
    """Covariance spectrum (paper G Fig. 2a/b) and rank (Fig. 2c) of X from one scatter matrix.

    The same numbers as :func:`spectrum` and :func:`rank` called one after the
    other, but for tall float32 X the centred scatter S is accumulated once: the
    spectrum is eig(S/(N−1)) and the singular values come from XᵀX = S + N·μμᵀ.
    """
    X = as_matrix(X, name, min_rows=2)
    r = rank(X, rtol=rtol, chunk_size=chunk_size, name=name)
    spec = SpectrumResult(eigenvalues=r.covariance_eigenvalues, n=r.n, dim=r.dim, normalized=False)
    return spec, r


def rank_deficit(H: Any, Z: Any, **kw: Any) -> RankDeficitResult:
    """Rank deficit rank(H) − rank(Z) of the head g: H → Z (paper G eq. 3).

    Keyword arguments go to :func:`rank` for both.
    """
    H = as_matrix(H, "H")
    Z = as_matrix(Z, "Z")
    if H.shape[0] != Z.shape[0]:
        raise UserError(f"H has {H.shape[0]} rows but Z has {Z.shape[0]}; they must be the same samples")
    rh = rank(H, name="H", **kw)
    rz = rank(Z, name="Z", **kw)
    return RankDeficitResult(rank_h=rh.rank, rank_z=rz.rank, deficit=rh.rank - rz.rank, h=rh, z=rz)
