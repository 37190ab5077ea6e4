"""Range / null-space split of backbone features under a linear head (paper G §3.2, eq. 4)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from repdiag.diagnostics._common import EXCLUDE, Result, as_matrix, check_chunk, check_rtol
from repdiag.errors import UserError


@dataclasses.dataclass
class NullspaceResult(Result):
    """h = h_r + h_n with h_r = A⁺A h in A's row space and h_n in A's null space.

    ``basis`` Q (m×r, float64, orthonormal) spans the row space R(Aᵀ).  ``h_r``
    and ``h_n`` are formed on first access (h_r = (HQ)Qᵀ, h_n = H − h_r, in H's
    dtype) and cached: the probes never need them (see ``knn_probe_split``,
    ``linear_probe_split``).  ``features``, ``basis``, ``h_r`` and ``h_n`` are left
    out of ``to_dict()``.
    """

    features: torch.Tensor = dataclasses.field(metadata=EXCLUDE, repr=False)
    basis: torch.Tensor = dataclasses.field(metadata=EXCLUDE)
    singular_values: torch.Tensor
    head_rank: int
    tol: float
    rtol: float
    residual: float
    energy_range: float
    n: int
    dim: int
    out_dim: int
    bias_norm: float | None = None

    @functools.cached_property
    def h_r(self) -> torch.Tensor:
        """Range part A⁺A h = (HQ)Qᵀ (N×m), formed on first access."""
        Q = self.basis.to(device=self.features.device, dtype=self.features.dtype)
        return (self.features @ Q) @ Q.T

    @functools.cached_property
    def h_n(self) -> torch.Tensor:
        """Null-space part h − h_r (N×m), formed on first access."""
        return self.features - self.h_r


@dataclasses.dataclass
class HeadSVD:
    """Thin SVD of a head weight A = U diag(S) Vᵀ (float64) with the rank cut-off applied."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    rank: int
    tol: float
    rtol: float

    @property
    def basis(self) -> torch.Tensor:
        """Q: right singular vectors with σ > tol, an orthonormal basis of R(Aᵀ) (m×r)."""
        return self.Vh[: self.rank].T

    def pinv(self) -> torch.Tensor:
        """A⁺ = V_r Σ_r⁻¹ U_rᵀ (m×d); equals Aᵀ(AAᵀ)⁻¹ when A has full row rank (eq. 4)."""
        r = self.rank
        return (self.Vh[:r].T / self.S[:r]) @ self.U[:, :r].T


def head_svd(A: Any, *, rtol: float | None = None) -> HeadSVD:
    """One thin SVD of the head weight A (d×m, torch Linear layout), in float64.

    Cut-off: σ > σ_1·rtol with rtol default max(d, m)·eps(A.dtype), as
    torch.linalg.pinv (the eps of A's own dtype, since that is the precision A
    was stored in; the SVD itself runs in float64 for an accurate basis).
    """
    A = as_matrix(A, "A")
    check_rtol(rtol)
    d, m = A.shape
    rtol_used = float(max(d, m) * torch.finfo(A.dtype).eps) if rtol is None else float(rtol)
    U, S, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
    tol = float(S[0]) * rtol_used
    r = int((S > tol).sum())
    return HeadSVD(U=U, S=S, Vh=Vh, rank=r, tol=tol, rtol=rtol_used)


def pinv_from_svd(A: Any, *, rtol: float | None = None) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse A⁺ = V Σ⁻¹ Uᵀ (float64) with the cut-off of :func:`head_svd`."""
    return head_svd(A, rtol=rtol).pinv()


def nullspace(H: Any, A: Any, *, rtol: float | None = None, bias: Any = None,
              chunk_size: int | None = None) -> NullspaceResult:
    """Split H (N×m) into range and null-space parts of the head z = A h + b (paper G eq. 4).

    h_r = A⁺A h = (H Q) Qᵀ with Q the right singular vectors of A above the
    cut-off (see :func:`head_svd`), h_n = h − h_r, so h_r ⟂ h_n and A h_n ≈ 0.
    The bias b does not change the split (it shifts every z equally); when
    given it is only checked and its norm reported.  Computation runs on H's
    device in H's dtype, chunked over rows; h_r and h_n are only formed if asked for.

    ``residual`` = max_i ‖A h_n,i‖ / max_i ‖A h_i‖ (a round-off check, ~1e-6 in
    float32); ``energy_range`` = ‖H_r‖²_F / ‖H‖²_F.
    """
    H = as_matrix(H, "H")
    svd = head_svd(A, rtol=rtol)
    A_t = as_matrix(A, "A")
    d, m = A_t.shape
    if H.shape[1] != m:
        raise UserError(f"H has {H.shape[1]} features but the head A (d x m) has m = {m} inputs")
    bias_norm = None
    if bias is not None:
        b = torch.as_tensor(bias)
        if b.shape != (d,):
            raise UserError(f"bias must have shape ({d},), got {tuple(b.shape)}")
        if not bool(torch.isfinite(b).all()):
            raise UserError("bias contains NaN or inf values")
        bias_norm = float(torch.linalg.vector_norm(b.to(torch.float64)))
    cs = check_chunk(chunk_size)
    Q = svd.basis.to(device=H.device)
    Qc = Q.to(H.dtype)
    Ac = A_t.to(device=H.device, dtype=H.dtype)
    max_ah = torch.zeros((), dtype=torch.float64, device=H.device)
    max_ahn = torch.zeros((), dtype=torch.float64, device=H.device)
    e_h = torch.zeros((), dtype=torch.float64, device=H.device)
    e_r = torch.zeros((), dtype=torch.float64, device=H.device)
    for s in range(0, H.shape[0], cs):
        x = H[s : s + cs]
        xq = x @ Qc
        xn = x - xq @ Qc.T
        max_ah = torch.maximum(max_ah, torch.linalg.vector_norm(x @ Ac.T, dim=1).max().double())
        max_ahn = torch.maximum(max_ahn, torch.linalg.vector_norm(xn @ Ac.T, dim=1).max().double())
        e_h += torch.linalg.vector_norm(x).double().square()
        e_r += torch.linalg.vector_norm(xq).double().square()  # ‖h_r‖ = ‖Qᵀh‖ (Q orthonormal)
    residual = 0.0 if float(max_ah) == 0.0 else float(max_ahn / max_ah)
    energy = 0.0 if float(e_h) == 0.0 else float(e_r / e_h)
    return NullspaceResult(features=H, basis=Q, singular_values=svd.S, head_rank=svd.rank,
                           tol=svd.tol, rtol=svd.rtol, residual=residual, energy_range=energy,
                           n=int(H.shape[0]), dim=int(m), out_dim=int(d), bias_norm=bias_norm)
