"""Covariance eigen-spectrum of a feature set (paper G §3.1, Fig. 2)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from repdiag.diagnostics._common import Result, as_matrix, check_chunk, scatter
from repdiag.errors import UserError


@dataclasses.dataclass
class SpectrumResult(Result):
    """Eigenvalues (descending, float64) of the centred covariance with N−1 denominator."""

    eigenvalues: torch.Tensor
    n: int
    dim: int
    normalized: bool


@dataclasses.dataclass
class AlphaReqResult(Result):
    """Power-law decay fit log λ_i = −α log i + b over ranks ``rank_range`` (1-based, inclusive)."""

    alpha: float
    intercept: float
    rank_range: tuple[int, int]
    n_points: int


def spectrum(X: Any, *, normalize: bool = False, chunk_size: int | None = None) -> SpectrumResult:
    """Eigenvalues of the centred covariance of ``X`` (N×m), descending (paper G Fig. 2).

    C = (X − μ)ᵀ(X − μ) / (N − 1), accumulated chunk by chunk (``chunk_size`` rows,
    default 8192) in float64 on X's device, after a first pass for the mean;
    eigenvalues by ``torch.linalg.eigvalsh``.  Tiny negative values (round-off) are
    kept as computed.  ``normalize=True`` L2-normalises each row first (DirectCLR's
    collapse plot).
    """
    X = as_matrix(X, "X", min_rows=2)
    cs = check_chunk(chunk_size)
    if normalize:
        norms = torch.linalg.vector_norm(X, dim=1)
        if bool((norms == 0).any()):
            row = int((norms == 0).nonzero()[0, 0])
            raise UserError(f"X has an all-zero row ({row}); cannot L2-normalise it")
        X = X / norms[:, None]
    _, g = scatter(X, cs)
    cov = g / (X.shape[0] - 1)
    eig = torch.linalg.eigvalsh(cov).flip(0)
    return SpectrumResult(eigenvalues=eig, n=int(X.shape[0]), dim=int(X.shape[1]),
                          normalized=bool(normalize))


def _eigs(eigs: Any) -> np.ndarray:
    if isinstance(eigs, SpectrumResult):
        eigs = eigs.eigenvalues
    if isinstance(eigs, torch.Tensor):
        eigs = eigs.detach().cpu().to(torch.float64).numpy()
    e = np.asarray(eigs, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise UserError(f"eigenvalues must be a non-empty 1-D array, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise UserError("eigenvalues contain NaN or inf values")
    return e


def participation_ratio(eigs: Any) -> float:
    """Participation ratio (Σλ)² / Σλ² of a spectrum (negative round-off clipped to 0).

    Accepts a SpectrumResult, tensor or array.  Returns 0.0 for an all-zero spectrum.
    """
    e = np.clip(_eigs(eigs), 0.0, None)
    s2 = float(np.sum(e * e))
    return 0.0 if s2 == 0.0 else float(np.sum(e) ** 2 / s2)


def default_alpha_req_ranks(dim: int) -> tuple[int, int]:
    """Rank range for the α-ReQ fit chosen from the dimension (1-based, inclusive).

    The reference fits ranks 11–100, fine for m ≥ 128 but meaningless for d = 32.
    Here: skip the top min(10, ⌊m/10⌋) eigenvalues and stop at min(100, ⌊0.8·m⌋)
    (the far tail is the numerical floor); m = 2048 gives 11–100, m = 128 gives
    11–100, m = 32 gives 4–25.
    """
    lo = min(10, dim // 10) + 1
    hi = min(100, int(0.8 * dim))
    if hi - lo + 1 < 3:
        lo, hi = 1, dim
    return lo, hi


def alpha_req(eigs: Any, ranks: tuple[int, int] | None = None) -> AlphaReqResult:
    """α-ReQ (Agrawal et al. 2022): fit log λ_i = −α log i + b, least squares weighted 1/i.

    ``ranks`` = (first, last), 1-based inclusive; by default chosen from the
    dimension (:func:`default_alpha_req_ranks`) and reported in the result.
    Non-positive eigenvalues inside the range are dropped; at least 3 points are
    needed.
    """
    e = np.sort(_eigs(eigs))[::-1]
    lo, hi = default_alpha_req_ranks(e.size) if ranks is None else (int(ranks[0]), int(ranks[1]))
    if not (1 <= lo < hi <= e.size):
        raise UserError(f"alpha_req ranks must satisfy 1 <= first < last <= {e.size}, got {(lo, hi)}")
    i = np.arange(lo, hi + 1, dtype=np.float64)
    lam = e[lo - 1 : hi]
    keep = lam > 0
    if keep.sum() < 3:
        raise UserError(f"alpha_req needs at least 3 positive eigenvalues in ranks {lo}-{hi}")
    x, y, w = np.log(i[keep]), np.log(lam[keep]), 1.0 / i[keep]
    sw = np.sqrt(w)
    design = np.stack([-x, np.ones_like(x)], axis=1) * sw[:, None]
    (alpha, b), *_ = np.linalg.lstsq(design, y * sw, rcond=None)
    if not math.isfinite(alpha):
        raise UserError("alpha_req fit failed (degenerate spectrum)")
    return AlphaReqResult(alpha=float(alpha), intercept=float(b), rank_range=(lo, hi),
                          n_points=int(keep.sum()))
