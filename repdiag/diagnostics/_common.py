"""Shared helpers for the diagnostics: input checking, chunking, result base class."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from repdiag.errors import UserError

DEFAULT_CHUNK = 8192


def as_matrix(x: Any, name: str, *, min_rows: int = 1) -> torch.Tensor:
    """Return ``x`` as a 2-D floating torch tensor on its own device, or raise UserError.

    numpy arrays are converted without copying where possible; integer and bool
    inputs become float64, half precisions become float32.  NaN/inf, wrong ndim
    and empty inputs are user mistakes.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise UserError(f"{name} must be a numeric array, got dtype object")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise UserError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise UserError(f"{name} must be 2-D (samples x features), got shape {tuple(x.shape)}")
    if x.shape[0] < max(1, min_rows) or x.shape[1] < 1:
        need = f"at least {max(1, min_rows)} row(s) and 1 column"
        raise UserError(f"{name} is empty or too small: shape {tuple(x.shape)}, need {need}")
    if x.is_complex():
        raise UserError(f"{name} must be real, got {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str, chunk_size: int = DEFAULT_CHUNK) -> None:
    """Raise UserError naming the first row that holds NaN or inf.

    Fast path: a finite sum proves every element finite (NaN and ±inf
    propagate through a sum), one cheap pass; only a non-finite sum (a bad value,
    or an overflow of huge finite ones) pays for the element-wise scan.
    """
    if x.numel() == 0 or math.isfinite(float(x.sum())):
        return
    for start in range(0, x.shape[0], chunk_size):
        ok = torch.isfinite(x[start : start + chunk_size])
        if not bool(ok.all()):
            row = start + int((~ok.reshape(ok.shape[0], -1).all(dim=1)).nonzero()[0, 0])
            raise UserError(f"{name} contains NaN or inf values (first in row {row})")


def as_labels(y: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """Return ``y`` as a 1-D int64 tensor of length ``n`` on ``device``, or raise UserError."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    elif not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"{name} must be a 1-D array of integer class labels") from None
    if y.ndim != 1:
        raise UserError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise UserError(f"{name} has {y.shape[0]} labels but the features have {n} rows")
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise UserError(f"{name} must hold integer class labels")
    elif y.dtype == torch.bool or y.is_complex():
        raise UserError(f"{name} must hold integer class labels, got {y.dtype}")
    y = y.to(device=device, dtype=torch.int64)
    if n and int(y.min()) < 0:
        raise UserError(f"{name} holds a negative class label ({int(y.min())})")
    return y


def as_basis(basis: Any, m: int) -> torch.Tensor:
    """Q (m×r, orthonormal columns) from a tensor or an object with ``.basis``, or UserError."""
    if hasattr(basis, "basis"):
        basis = basis.basis
    Q = as_matrix(basis, "basis")
    if Q.shape[0] != m or Q.shape[1] > m:
        raise UserError(f"basis must be (m x r) with m = {m} features, got {tuple(Q.shape)}")
    gram = Q.T.to(torch.float64) @ Q.to(torch.float64)
    err = float((gram - torch.eye(Q.shape[1], dtype=torch.float64, device=Q.device)).abs().max())
    if err > 1e-4:
        raise UserError(f"basis columns are not orthonormal (max |QᵀQ - I| = {err:.2g})")
    return Q


def check_chunk(chunk_size: int | None, default: int = DEFAULT_CHUNK) -> int:
    if chunk_size is None:
        return default
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise UserError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def check_rtol(rtol: float | None, name: str = "rtol") -> None:
    if rtol is not None and not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol >= 0):
        raise UserError(f"{name} must be a non-negative finite number, got {rtol!r}")


def _column_mean(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Column mean in float64 from per-chunk sums (chunks summed in x's dtype)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        total += x[s : s + chunk_size].sum(dim=0).to(torch.float64)
    return total / x.shape[0]


def scatter(x: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean μ and centred scatter matrix S = Σ_i (x_i − μ)(x_i − μ)ᵀ, both float64.

    Two passes: the mean first, then each row chunk is centred in float64 before
    its product (no cancellation from the one-pass ΣxxᵀΣ − Nμμᵀ).  On the CPU the
    product runs as numpy's ``c.T @ c``, which BLAS evaluates as a symmetric
    rank-k update (half the FLOPs of torch's general GEMM).
    """
    x = x.detach()
    mean = _column_mean(x, chunk_size)
    m = x.shape[1]
    if x.device.type == "cpu":
        mu = mean.numpy()
        g = np.zeros((m, m))
        for s in range(0, x.shape[0], chunk_size):
            c = x[s : s + chunk_size].numpy().astype(np.float64) - mu
            g += c.T @ c
        return mean, torch.from_numpy(g)
    g = torch.zeros(m, m, dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        c = x[s : s + chunk_size].to(torch.float64) - mean
        g.addmm_(c.T, c)
    return mean, g


def cross_scatter(x: torch.Tensor, y: torch.Tensor, chunk_size: int):
    """Centred float64 products ``(XcᵀXc, YcᵀXc, YcᵀYc)``, chunked, means taken first."""
    n = x.shape[0]
    mx = _column_mean(x, chunk_size)
    my = _column_mean(y.to(x.device), chunk_size)
    gxx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    gyy = torch.zeros(y.shape[1], y.shape[1], dtype=torch.float64, device=x.device)
    gyx = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, n, chunk_size):
        cx = x[s : s + chunk_size].to(torch.float64) - mx
        cy = y[s : s + chunk_size].to(device=x.device, dtype=torch.float64) - my
        gxx.addmm_(cx.T, cx)
        gyy.addmm_(cy.T, cy)
        gyx.addmm_(cy.T, cx)
    return gxx, gyx, gyy


def to_plain(v: Any) -> Any:
    """Convert tensors, numpy values and containers to JSON-serialisable plain types."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.ndim == 0 else v.tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Result):
        return v.to_dict()
    if isinstance(v, dict):
        return {str(k): to_plain(val) for k, val in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(val) for val in v]
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v)
    return v


#: dataclass field metadata marking a field left out of ``to_dict()`` (large tensors, arrays)
EXCLUDE = {"to_dict": False}


@dataclasses.dataclass
class Result:
    """Base of every diagnostic result: ``to_dict()`` gives JSON-serialisable plain types."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("to_dict", True):
                out[f.name] = to_plain(getattr(self, f.name))
        return out


@dataclasses.dataclass
class ProbeResult(Result):
    """Accuracy of a probe (kNN or linear) with the protocol that produced it.

    ``accuracy`` is a fraction in [0, 1] on the ``n_test`` evaluated samples;
    ``predictions`` (left out of ``to_dict()``) are the predicted class indices.
    """

    accuracy: float
    protocol: dict
    n_train: int
    n_test: int
    predictions: torch.Tensor = dataclasses.field(default=None, metadata=EXCLUDE)
    n_val: int | None = None
    details: dict = dataclasses.field(default_factory=dict)
