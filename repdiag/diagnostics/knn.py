"""Weighted k-nearest-neighbour probe (InstDisc vote, as used by paper G)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from repdiag.diagnostics._common import ProbeResult, as_basis, as_labels, as_matrix, check_chunk
from repdiag.diagnostics.probes import EUCLID_EPS, knn_protocol, knn_settings
from repdiag.errors import UserError

_NORM_EPS = 1e-12
#: elements of one chunk x n_train score buffer (auto chunk size): large enough for chunks of
#: ~1000 rows, which the GEMM needs to run efficiently (timed by bench/bench_diagnostics.py)
_SIM_BUDGET = 2**26


def _prepare(train_x, train_y, test_x, test_y, num_classes, names=("train_x", "test_x")):
    tr = as_matrix(train_x, names[0])
    te = as_matrix(test_x, names[1])
    if tr.shape[1] != te.shape[1]:
        raise UserError(f"{names[0]} has {tr.shape[1]} features but {names[1]} has {te.shape[1]}")
    dev = tr.device
    dtype = torch.promote_types(tr.dtype, te.dtype)
    tr = tr.to(dtype)
    ytr = as_labels(train_y, tr.shape[0], "train_y", dev)
    yte = as_labels(test_y, te.shape[0], "test_y", dev)
    top = int(max(int(ytr.max()), int(yte.max()))) + 1
    if num_classes is None:
        num_classes = top
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < top:
        raise UserError(f"num_classes={num_classes!r} but the labels go up to {top - 1}")
    return tr, ytr, te, yte, dtype, num_classes


def _auto_chunk(chunk_size, n_train) -> int:
    if chunk_size is None:
        return max(1, min(8192, _SIM_BUDGET // n_train))
    return check_chunk(chunk_size)


def nearest_neighbours(queries: Any, bank: Any, k: int, *, metric: str = "cosine",
                       exclude_self: bool = False, chunk_size: int | None = None,
                       sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest ``bank`` rows of every query row, exactly, by chunked GEMM and top-k.

    ``metric="cosine"``: rows are L2-normalised and the values returned are the
    cosine similarities (largest first); ``"euclidean"``: the values are the
    distances ‖q − b‖ from ‖q‖² + ‖b‖² − 2⟨q, b⟩ (smallest first).  Query rows
    are processed ``chunk_size`` at a time (default: a chunk×N_bank block of
    about 64M elements) into one reused buffer, so no query×bank matrix is ever
    held whole.  ``exclude_self=True`` (queries and bank the same rows) drops
    each row's own entry.  Returns ``(values, indices)``, each (N_query × k);
    ``sorted=False`` leaves each row's order unspecified (cheaper).
    """
    q = as_matrix(queries, "queries")
    b = q if bank is queries else as_matrix(bank, "bank")
    if q.shape[1] != b.shape[1]:
        raise UserError(f"queries have {q.shape[1]} features but the bank has {b.shape[1]}")
    if metric not in ("cosine", "euclidean"):
        raise UserError(f"unknown neighbour metric {metric!r}; choose cosine or euclidean")
    if exclude_self and q.shape[0] != b.shape[0]:
        raise UserError("exclude_self needs the queries to be the bank's own rows")
    n_bank = b.shape[0] - int(exclude_self)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_bank:
        raise UserError(f"k must be an integer in 1..{n_bank}, got {k!r}")
    dtype = torch.promote_types(q.dtype, b.dtype)
    b = b.to(dtype)
    cosine = metric == "cosine"
    if cosine:
        b = F.normalize(b, dim=1, eps=_NORM_EPS)
    else:
        neg_b2 = b.square().sum(dim=1).neg_()
    cs = _auto_chunk(chunk_size, b.shape[0])
    buf = torch.empty(min(cs, q.shape[0]), b.shape[0], dtype=dtype, device=b.device)
    vals, idxs = [], []
    for s in range(0, q.shape[0], cs):
        x = q[s : s + cs].to(device=b.device, dtype=dtype)
        out = buf[: x.shape[0]]
        if cosine:  # ranking by <x, b̂> per row equals ranking by cosine
            torch.mm(x, b.T, out=out)
        else:  # 2<x, b> - |b|^2 = |x|^2 - |x - b|^2: same order as -distance
            torch.addmm(neg_b2, x, b.T, alpha=2.0, out=out)
        if exclude_self:
            out.diagonal(offset=s).fill_(-math.inf)
        v, i = out.topk(k, dim=1, largest=True, sorted=sorted)
        vals.append(_score_to_value(v, x.square().sum(dim=1), cosine))
        idxs.append(i)
    return torch.cat(vals), torch.cat(idxs)


def _score_to_value(v: torch.Tensor, x2: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Top-k ranking scores of one query chunk to cosines or distances.

    Cosine scores are <x, b>/|b| (so divide by |x|); euclidean scores are
    2<x, b> - |b|^2 (so |x - b| = sqrt(|x|^2 - score)).  ``x2`` holds |x|^2 per row.
    """
    if cosine:
        return v / x2.sqrt().clamp_min(_NORM_EPS)[:, None]
    return (x2[:, None] - v).clamp_min_(0).sqrt_()


def _vote(vals: torch.Tensor, idx: torch.Tensor, euclid: bool, labels: torch.Tensor, T: float,
          num_classes: int) -> torch.Tensor:
    """Weighted class vote over each row's neighbours, arg-max (ties -> lowest class).

    ``vals`` are cosine similarities (weight exp(sim/T)) or, with ``euclid``,
    distances (solo-learn's weight 1/(distance + eps)).
    """
    vals = vals.to(torch.float64)
    w = 1.0 / (vals + EUCLID_EPS) if euclid else torch.exp(vals / T)
    votes = torch.zeros(vals.shape[0], num_classes, dtype=torch.float64, device=vals.device)
    votes.scatter_add_(1, labels[idx], w)
    return votes.argmax(dim=1)


def _result(pred, yte, p, n_train, k_used, extra=None) -> ProbeResult:
    acc = float((pred == yte).to(torch.float64).mean())
    return ProbeResult(accuracy=acc, protocol=knn_protocol(p, k_used, extra), n_train=int(n_train),
                       n_test=int(yte.shape[0]), predictions=pred)


def knn_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, k: int | None = None,
              temperature: float | None = None, preset: str | None = None,
              num_classes: int | None = None, chunk_size: int | None = None,
              distance: str | None = None) -> ProbeResult:
    """Weighted kNN accuracy (InstDisc rule, Wu et al. 2018; paper G's kNN evaluation).

    Rows are L2-normalised; for each test row the k most cosine-similar training
    rows vote for their class with weight exp(sim/T); the prediction is the
    arg-max (ties go to the lowest class index).  Test rows are processed in
    chunks of ``chunk_size`` (default: as many as keep a chunk×N_train block
    near 64M elements, at most 8192), one matmul and one top-k per chunk; k is
    clipped to the training-set size.

    Presets (explicit ``k``/``temperature``/``distance`` override them):
    "g" (default) k=200, T=0.5, cosine; "lightly" k=200, T=0.1, cosine;
    "solo" k=20, euclidean on the raw (unnormalised) features with weight
    1/(distance + 1e-5) and T unused — solo-learn's default; "solo-cosine"
    k=20, T=0.07, cosine (solo-learn's cosine mode).
    """
    p = knn_settings(preset, k, temperature, distance)
    tr, ytr, te, yte, dtype, C = _prepare(train_x, train_y, test_x, test_y, num_classes)
    k_used = min(p["k"], tr.shape[0])
    vals, idx = nearest_neighbours(te, tr, k_used, metric=p["distance"], chunk_size=chunk_size,
                                   sorted=False)
    pred = _vote(vals, idx, p["distance"] == "euclidean", ytr, p["temperature"], C)
    return _result(pred, yte, p, tr.shape[0], k_used)


def knn_probe_split(train_h: Any, train_y: Any, test_h: Any, test_y: Any, basis: Any, *,
                    k: int | None = None, temperature: float | None = None,
                    preset: str | None = None, num_classes: int | None = None,
                    chunk_size: int | None = None,
                    distance: str | None = None) -> dict[str, ProbeResult]:
    """kNN probes on h, h_r = A⁺A h and h_n = h − h_r (paper G eq. 4, Fig. 4) in one pass.

    ``basis`` is Q (m×r, orthonormal columns spanning the head's row space), or a
    NullspaceResult / HeadSVD carrying it.  Per test chunk only one m-dimensional
    inner-product block ⟨h, h'⟩ is computed; ⟨h_r, h'_r⟩ = ⟨hQ, h'Q⟩ is
    r-dimensional and ⟨h_n, h'_n⟩ = ⟨h, h'⟩ − ⟨h_r, h'_r⟩ (h_r ⟂ h_n); squared
    norms likewise.  Cosine = inner / (norm·norm').  Same vote, presets and
    arguments as :func:`knn_probe`, whose predictions on explicitly formed h_r,
    h_n it reproduces up to round-off ties.  Returns {"h", "h_r", "h_n"}.
    """
    p = knn_settings(preset, k, temperature, distance)
    tr, ytr, te, yte, dtype, C = _prepare(train_h, train_y, test_h, test_y, num_classes,
                                          names=("train_h", "test_h"))
    Q = as_basis(basis, tr.shape[1]).to(device=tr.device, dtype=dtype)
    k_used = min(p["k"], tr.shape[0])
    cosine = p["distance"] == "cosine"
    trP = tr @ Q
    n2 = {"h": tr.square().sum(dim=1), "h_r": trP.square().sum(dim=1)}
    n2["h_n"] = (n2["h"] - n2["h_r"]).clamp_min(0)
    # per-column factor of the ranking score: 1/|h'| (cosine) or -|h'|^2 (euclidean, 2<h,h'> - |h'|^2)
    col = {key: (1.0 / v.sqrt().clamp_min(_NORM_EPS) if cosine else -v) for key, v in n2.items()}
    cs = _auto_chunk(chunk_size, tr.shape[0])
    rows = min(cs, te.shape[0])
    g_h, g_r, score = (torch.empty(rows, tr.shape[0], dtype=dtype, device=tr.device) for _ in range(3))
    found: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"h": [], "h_r": [], "h_n": []}

    def top(key: str, g: torch.Tensor, out: torch.Tensor, x2: torch.Tensor) -> None:
        if cosine:
            torch.mul(g, col[key], out=out)
        else:
            torch.add(col[key], g, alpha=2.0, out=out)
        v, i = out.topk(k_used, dim=1, sorted=False)
        found[key].append((_score_to_value(v, x2, cosine), i))

    for s in range(0, te.shape[0], cs):
        x = te[s : s + cs].to(device=tr.device, dtype=dtype)
        n = x.shape[0]
        xP = x @ Q
        torch.mm(x, tr.T, out=g_h[:n])
        torch.mm(xP, trP.T, out=g_r[:n])
        x2 = {"h": x.square().sum(dim=1), "h_r": xP.square().sum(dim=1)}
        x2["h_n"] = (x2["h"] - x2["h_r"]).clamp_min(0)
        top("h", g_h[:n], score[:n], x2["h"])
        top("h_r", g_r[:n], score[:n], x2["h_r"])
        g_h[:n].sub_(g_r[:n])  # <h_n, h_n'> = <h, h'> - <h_r, h_r'>
        top("h_n", g_h[:n], g_h[:n], x2["h_n"])
    preds = {}
    for key, parts in found.items():
        vals, idx = torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])
        preds[key] = _vote(vals, idx, not cosine, ytr, p["temperature"], C)
    extra = {"head_rank": int(Q.shape[1])}
    return {key: _result(pred, yte, p, tr.shape[0], k_used, {**extra, "features": key})
            for key, pred in preds.items()}
