"""Exact-gradient t-SNE in torch (GPU or CPU), with openTSNE's defaults and optimiser.

The objective is the Kullback-Leibler divergence of van der Maaten & Hinton
(2008), eq. 2 with the Student-t (Cauchy, one degree of freedom) kernel of
eq. 4::

    C = KL(P‖Q) = Σ_{i≠j} p_ij log(p_ij / q_ij),
    q_ij = w_ij / Z,   w_ij = (1 + ‖y_i − y_j‖²)⁻¹,   Z = Σ_{k≠l} w_kl,

and its gradient is their eq. 5::

    ∂C/∂y_i = 4 Σ_j (p_ij − q_ij) w_ij (y_i − y_j).

The input affinities P are the sparse, symmetric, unit-sum matrix openTSNE
builds (:func:`repdiag.diagnostics.tsne.exact_affinities`), so the attractive
part Σ_j p_ij w_ij (y_i − y_j) is a sum over P's non-zeros, and the repulsive
part Σ_j w_ij² (y_i − y_j) / Z over all pairs is computed exactly, once per
unordered pair, in strips of ``chunk_size`` rows: memory is O(chunk·N), never an
N×N matrix unless it fits the budget (blocks of 2^19 elements on the CPU, 2^26
on a GPU, where the whole upper triangle is one strip up to N ≈ 8,000).

The optimiser reproduces openTSNE 1.0.4's ``gradient_descent`` step by step
(read from its source): its gradient is ∂C/∂y / 4 (the factor 4 of eq. 5 is
dropped, so the same learning rate gives the same dynamics); delta-bar-delta
gains (+0.2 where the gradient's sign differs from the previous update's, else
×0.8 + ``min_gain``); ``update = momentum·update − lr·gains·grad``, each row's
update clipped to norm ``max_step_norm`` (5); the embedding re-centred after
every step; learning rate ``"auto"`` = N / exaggeration in each phase;
early exaggeration 12 (openTSNE's "auto": max(12, exaggeration)) for 250
iterations, then 500 iterations without
exaggeration, momentum 0.8 in both phases (openTSNE's ``initial_momentum`` and
``final_momentum`` defaults); gains and update carried from one phase to the next.
The initialisation is openTSNE's ``initialization.pca``: the top principal
components (signs as scikit-learn's PCA gives them), rescaled so that the first
column has standard deviation 1e-4, plus N(0, (1e-6)²) jitter drawn from
``numpy.random.RandomState(seed)``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from repdiag.errors import UserError

# Elements of one chunk×N block of the repulsive term (two such blocks live at once).
CPU_BLOCK = 1 << 19
GPU_BLOCK = 1 << 26

DEFAULTS = {
    "n_components": 2,
    "n_iter": 500,
    "early_exaggeration_iter": 250,
    "early_exaggeration": "auto",
    "exaggeration": None,
    "learning_rate": "auto",
    "initial_momentum": 0.8,
    "final_momentum": 0.8,
    "min_gain": 0.01,
    "max_step_norm": 5.0,
    "max_grad_norm": None,
    "dof": 1,
    "initialization": "pca",
}


def _chunk(chunk_size: int | None, n: int, device: torch.device) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise UserError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return min(chunk_size, n)
    budget = GPU_BLOCK if device.type == "cuda" else CPU_BLOCK
    return max(1, min(n, max(64, budget // max(n, 1))))


def _as_coo(P: Any, n: int):
    """P as a checked scipy COO matrix (square, side n, finite, non-negative, zero diagonal)."""
    import scipy.sparse as sp

    if isinstance(P, torch.Tensor):
        P = P.to_dense().cpu().numpy() if P.is_sparse else P.detach().cpu().numpy()
    if not (sp.issparse(P) or isinstance(P, np.ndarray)):
        raise UserError(f"P must be a scipy sparse matrix or an array, got {type(P).__name__}")
    coo = sp.coo_matrix(P, dtype=np.float64)
    if coo.shape != (n, n):
        raise UserError(f"P has shape {coo.shape} but the embedding has {n} points")
    coo.sum_duplicates()
    coo.eliminate_zeros()
    if not np.isfinite(coo.data).all() or (coo.data < 0).any():
        raise UserError("P must be finite and non-negative")
    if (coo.row == coo.col).any():
        raise UserError("P must have a zero diagonal (p_ii = 0)")
    return coo


def sparse_coo(P: Any, n: int, device: torch.device, dtype: torch.dtype):
    """The non-zeros of an N×N affinity matrix as (rows, cols, values) tensors on ``device``.

    ``P`` is a scipy sparse matrix (openTSNE's ``affinities.P``), a dense numpy
    array or a torch tensor (dense or sparse COO); it must be square with side
    ``n``, finite, non-negative, with a zero diagonal.
    """
    coo = _as_coo(P, n)
    rows = torch.from_numpy(coo.row.astype(np.int64)).to(device)
    cols = torch.from_numpy(coo.col.astype(np.int64)).to(device)
    vals = torch.from_numpy(coo.data).to(device=device, dtype=dtype)
    return rows, cols, vals


def _pairs(P: Any, n: int, device: torch.device, dtype: torch.dtype, segmented: bool | None = None
           ) -> tuple:
    """P's non-zeros prepared for :func:`_attraction`.

    −Σ p_kl log w_kl has the same gradient for P and for its symmetric part
    p̄ = (P + Pᵀ)/2 (w is symmetric; openTSNE's P is symmetric already, p̄ = P).
    Scatter form (the CPU default): the pairs i < j of p̄, each used for both
    ends, then one ``index_add_``: half the gathers and kernel evaluations.
    Segmented form (the CUDA default, ``segmented=True``): all entries of p̄
    sorted by row and summed per row by ``segment_reduce``, with no atomic
    additions, so the sum's order and a run's numbers repeat exactly.
    """
    import scipy.sparse as sp

    coo = _as_coo(P, n)
    sym = ((coo + coo.T) * 0.5).tocsr()
    sym.eliminate_zeros()
    if segmented is None:
        segmented = device.type == "cuda"
    if segmented:
        full = sym.tocoo()  # CSR order: sorted by row
        i = torch.from_numpy(full.row.astype(np.int64)).to(device)
        j = torch.from_numpy(full.col.astype(np.int64)).to(device)
        v = torch.from_numpy(full.data).to(device=device, dtype=dtype)
        counts = torch.from_numpy(np.diff(sym.indptr).astype(np.int64)).to(device)
        return i, j, v, counts, True
    up = sp.triu(sym, k=1).tocoo()
    i = torch.from_numpy(up.row.astype(np.int64)).to(device)
    j = torch.from_numpy(up.col.astype(np.int64)).to(device)
    v = torch.from_numpy(up.data).to(device=device, dtype=dtype)
    return i, j, v, torch.cat([i, j]), False


def _attraction(pairs: tuple, Yt: torch.Tensor) -> torch.Tensor:
    """Σ_j p_ij w_ij (y_i − y_j) over P's non-zeros (gather, then a scatter-add or segment sum).

    The embedding is passed transposed (d×N, one contiguous row per coordinate)
    and so is the result: 1-D gathers and reductions are several times faster on
    the CPU than the same on N×2 rows.  In scatter form each pair i < j adds
    p_ij w_ij (y_i − y_j) to row i and its negative to row j (:func:`_pairs`).
    """
    i, j, vals, index, segmented = pairs
    diff = Yt.index_select(1, i) - Yt.index_select(1, j)
    w = diff[0] * diff[0]
    for k in range(1, Yt.shape[0]):  # over embedding dimensions (2), not samples
        w.addcmul_(diff[k], diff[k])
    diff.mul_(w.add_(1).reciprocal_().mul_(vals))
    if segmented:
        return torch.segment_reduce(diff.T.contiguous(), "sum", lengths=index, axis=0).T.contiguous()
    diff = torch.cat([diff, -diff], dim=1)
    return torch.zeros_like(Yt).index_add_(1, index, diff)


def _kernel_block(Y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """w_ij = (1 + ‖y_i − y_j‖²)⁻¹ for rows start:stop against all N, w_ii = 0.

    Squared distances are summed coordinate by coordinate from the differences
    (no ‖y_i‖² + ‖y_j‖² − 2⟨y_i, y_j⟩ cancellation between close points far
    from the origin).
    """
    yc = Y[start:stop]
    W = (yc[:, 0:1] - Y[:, 0]).square_()
    for k in range(1, Y.shape[1]):  # over embedding dimensions (2), not samples
        d = yc[:, k : k + 1] - Y[:, k]
        W.addcmul_(d, d)
    W.add_(1).reciprocal_()
    W[:, start:stop].diagonal().zero_()
    return W


def _repulsion(Yt: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z, R) with Z = Σ_{i≠j} w_ij and R_i = Σ_j w_ij² (y_i − y_j), exactly, by row strips.

    ``Yt`` is the embedding transposed (d×N); R comes back the same way.  w is
    symmetric, so each unordered pair is evaluated once: strip s holds rows
    s:s+c against columns s:N with the block's lower triangle and diagonal
    zeroed, and adds its w_ij² to both row i's and row j's sums (two small GEMMs
    with [Y, 1]).  About N²/2 kernel evaluations, c·(N − s) elements alive.
    """
    d, n = Yt.shape
    # [y_j, 1] as rows of a (d+1)×N matrix: one GEMM gives Σ_j w_ij² y_j and Σ_j w_ij²
    # (the 3×M-by-M×c orientation is several times faster on the CPU than M×c-by-c×3).
    Ya = torch.cat([Yt, Yt.new_ones(1, n)], dim=0)
    acc = torch.zeros_like(Ya)
    Z = Yt.new_zeros(())
    for s in range(0, n, chunk_size):  # over strips of rows
        e = min(s + chunk_size, n)
        W = (Ya[0, s:e].unsqueeze(1) - Ya[0, s:]).square_()
        for k in range(1, d):  # over embedding dimensions (2), not samples
            diff = Ya[k, s:e].unsqueeze(1) - Ya[k, s:]
            W.addcmul_(diff, diff)
        W.add_(1).reciprocal_()
        W[:, : e - s].triu_(1)  # pairs i < j only
        Z += W.sum()
        W.square_()
        acc[:, s:e] += torch.mm(Ya[:, s:], W.T)
        acc[:, s:] += torch.mm(Ya[:, s:e], W)
    return 2 * Z, Yt * acc[d:] - acc[:d]


def _forces(pairs, Yt: torch.Tensor, exaggeration: float, chunk_size: int) -> torch.Tensor:
    """openTSNE's gradient, transposed (d×N): ∂C/∂y_i / 4 = Σ_j (α p_ij − q_ij) w_ij (y_i − y_j),
    α the exaggeration (the attraction from P's non-zeros, the repulsion over all pairs)."""
    attr = _attraction(pairs, Yt)
    Z, R = _repulsion(Yt, chunk_size)
    if exaggeration != 1:
        attr.mul_(exaggeration)
    return attr.sub_(R.div_(Z))


def _embedding(Y: Any) -> torch.Tensor:
    if isinstance(Y, np.ndarray):
        Y = torch.from_numpy(np.ascontiguousarray(Y))
    if not isinstance(Y, torch.Tensor) or Y.ndim != 2 or Y.shape[0] < 2 or not Y.is_floating_point():
        raise UserError("the embedding Y must be a floating N×d array with N >= 2")
    return Y


def kl_gradient(P: Any, Y: Any, *, exaggeration: float = 1.0, chunk_size: int | None = None
                ) -> torch.Tensor:
    """Exact gradient ∂C/∂y_i = 4 Σ_j (α p_ij − q_ij) w_ij (y_i − y_j) (van der Maaten & Hinton
    2008, eq. 5), in Y's dtype and on Y's device.

    α = ``exaggeration``; at α = 1 this is the gradient of KL(P‖Q), otherwise of
    C_α = Σ p log p − α Σ p_ij log w_ij + log Z, the objective that early
    exaggeration (P multiplied by α, Q unchanged) follows.

    The repulsive sum runs ``chunk_size`` rows at a time (default: a block of
    about 4M elements on the CPU, 128M on a GPU).
    """
    Y = _embedding(Y)
    pairs = _pairs(P, Y.shape[0], Y.device, Y.dtype)
    Yt = Y.T.contiguous()
    return 4 * _forces(pairs, Yt, float(exaggeration), _chunk(chunk_size, Y.shape[0], Y.device)).T


def kl_divergence(P: Any, Y: Any, *, chunk_size: int | None = None) -> float:
    """KL(P‖Q) = Σ p_ij log(p_ij / q_ij) over the non-zero p_ij, q_ij = w_ij / Z with the full
    normalisation Z = Σ_{k≠l} (1 + ‖y_k − y_l‖²)⁻¹ (van der Maaten & Hinton 2008, eqs. 2 and 4).

    Computed exactly in float64 on Y's device (Z by row chunks), whatever
    produced Y, so the value of any two embeddings of the same P compare.
    """
    Y = _embedding(Y).to(torch.float64)
    n = Y.shape[0]
    rows, cols, p = sparse_coo(P, n, Y.device, torch.float64)
    cs = _chunk(chunk_size, n, Y.device)
    Z = Y.new_zeros(())
    for s in range(0, n, cs):  # over chunks of rows
        Z += _kernel_block(Y, s, s + cs).sum()
    log_w = (Y[rows] - Y[cols]).square().sum(1).log1p().neg()
    return float((p * (p.log() - log_w)).sum() + p.sum() * Z.log())


def pca_initialization(X: torch.Tensor, n_components: int = 2, seed: int = 0) -> torch.Tensor:
    """openTSNE's ``initialization.pca``, in float64 on X's device.

    The top principal components of the centred X (eigenvectors of XᵀX, with
    scikit-learn's sign convention: each component's largest-magnitude entry
    positive), the scores rescaled so that column 0 has standard deviation 1e-4,
    then jitter N(0, (0.01·1e-4)²) from ``numpy.random.RandomState(seed)``, as
    openTSNE draws it.
    """
    X = X.to(torch.float64)
    Xc = X - X.mean(0)
    if n_components > min(X.shape):
        raise UserError(f"PCA initialisation needs n_components <= min(N, m) = {min(X.shape)}")
    _, vecs = torch.linalg.eigh(Xc.T @ Xc)
    V = vecs[:, -n_components:].flip(1)
    big = V.abs().argmax(0)
    V = V * torch.sign(V[big, torch.arange(n_components, device=V.device)])
    Y = Xc @ V
    Y = Y / (Y[:, 0].std(correction=0) / 1e-4)
    jitter_std = float(Y[:, 0].std(correction=0)) * 0.01
    rs = np.random.RandomState(seed)
    return Y + torch.from_numpy(rs.normal(0, jitter_std, tuple(Y.shape))).to(Y.device)


def optimize(P: Any, init: Any, *, device: str | torch.device | None = None,
             dtype: torch.dtype = torch.float32, chunk_size: int | None = None,
             n_iter: int = 500, early_exaggeration_iter: int = 250,
             early_exaggeration: float | str = "auto", exaggeration: float | None = None,
             learning_rate: float | str = "auto", initial_momentum: float = 0.8,
             final_momentum: float = 0.8, min_gain: float = 0.01,
             max_step_norm: float | None = 5.0, max_grad_norm: float | None = None,
             dof: float = 1) -> tuple[torch.Tensor, dict]:
    """Run openTSNE's two-phase gradient descent on the exact t-SNE gradient, in torch.

    ``init`` (N×d) is the starting embedding; ``P`` the sparse affinities.  The
    steps are those of openTSNE's ``gradient_descent`` (module docstring) with
    the exact gradient of eq. 5 in place of Barnes-Hut or FFT interpolation.
    Returns the final embedding (``dtype``, on ``device``) and a dict with the
    settings used, the seconds spent and the exact final KL divergence
    (:func:`kl_divergence`).
    """
    if dof != 1:
        raise UserError(f"the torch t-SNE supports dof=1 (Cauchy kernel) only, got dof={dof!r}")
    for name, v in (("n_iter", n_iter), ("early_exaggeration_iter", early_exaggeration_iter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"{name} must be a non-negative integer, got {v!r}")
    if not (learning_rate == "auto" or (isinstance(learning_rate, (int, float)) and learning_rate > 0)):
        raise UserError(f"learning_rate must be 'auto' or positive, got {learning_rate!r}")
    if early_exaggeration == "auto":  # openTSNE.TSNE's rule
        early_exaggeration = 12.0 if exaggeration is None else max(12.0, float(exaggeration))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    Y = _embedding(init).to(device=dev, dtype=dtype)
    n = Y.shape[0]
    pairs = _pairs(P, n, dev, dtype)
    cs = _chunk(chunk_size, n, dev)
    Yt = Y.T.contiguous()  # d×N: the layout the gradient works in
    update = torch.zeros_like(Yt)
    gains = torch.ones_like(Yt)
    phases = [(early_exaggeration_iter, early_exaggeration, initial_momentum),
              (n_iter, 1.0 if exaggeration is None else exaggeration, final_momentum)]
    t0 = time.perf_counter()
    for iters, exag, momentum in phases:
        lr = n / exag if learning_rate == "auto" else float(learning_rate)
        for _ in range(iters):  # gradient-descent iterations
            grad = _forces(pairs, Yt, float(exag), cs)
            if max_grad_norm is not None:
                coeff = max_grad_norm / (grad.norm(dim=0, keepdim=True) + 1e-6)
                grad = torch.where(coeff < 1, grad * coeff, grad)
            flipped = torch.sign(update) != torch.sign(grad)
            gains = torch.where(flipped, gains + 0.2, gains * 0.8 + min_gain)
            update.mul_(momentum).sub_(lr * gains * grad)
            if max_step_norm is not None:
                norm = update.norm(dim=0, keepdim=True)
                update = torch.where(norm > max_step_norm, update / norm * max_step_norm, update)
            Yt += update
            Yt -= Yt.mean(1, keepdim=True)
    Y = Yt.T.contiguous()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    info = {"n_iter": n_iter, "early_exaggeration_iter": early_exaggeration_iter,
            "early_exaggeration": float(early_exaggeration),
            "exaggeration": None if exaggeration is None else float(exaggeration),
            "learning_rate": learning_rate if learning_rate == "auto" else float(learning_rate),
            "initial_momentum": float(initial_momentum), "final_momentum": float(final_momentum),
            "min_gain": float(min_gain), "max_step_norm": max_step_norm, "max_grad_norm": max_grad_norm,
            "dof": 1, "dtype": str(dtype).removeprefix("torch."), "chunk_size": cs,
            "optimize_seconds": round(seconds, 3),
            "kl_divergence": kl_divergence(P, Y, chunk_size=chunk_size)}
    return Y, info
