"""Weighted k-nearest-neighbour probe (InstDisc vote, as used by paper G)."""

from __future__ import annotations

from typing import Any

import torch

from repdiag.diagnostics._common import ProbeResult, as_labels, as_matrix, check_chunk
from repdiag.errors import UserError

#: Protocol presets of the peers (REFERENCES.md "Protocols of the peers").
KNN_PRESETS: dict[str, dict[str, Any]] = {
    "g": {"k": 200, "temperature": 0.5, "distance": "cosine"},
    "lightly": {"k": 200, "temperature": 0.1, "distance": "cosine"},
    "solo": {"k": 20, "temperature": 0.07, "distance": "euclidean"},
    "solo-cosine": {"k": 20, "temperature": 0.07, "distance": "cosine"},
}
EUCLID_EPS = 1e-5
_NORM_EPS = 1e-12
_SIM_BUDGET = 2**24  # elements of one chunk x n_train similarity block (auto chunk size)


def _resolve(preset, k, temperature, distance) -> dict[str, Any]:
    name = "g" if preset is None else preset
    if name not in KNN_PRESETS:
        raise UserError(f"unknown kNN preset {name!r}; choose one of {', '.join(KNN_PRESETS)}")
    p = dict(KNN_PRESETS[name])
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"k must be a positive integer, got {k!r}")
        p["k"] = k
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise UserError(f"temperature must be positive, got {temperature!r}")
        p["temperature"] = float(temperature)
    if distance is not None:
        p["distance"] = distance
    if p["distance"] not in ("cosine", "euclidean"):
        raise UserError(f"unknown kNN distance {p['distance']!r}; choose cosine or euclidean")
    p["preset"] = name
    return p


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


def _auto_chunk(chunk_size, n_train, blocks=1) -> int:
    if chunk_size is None:
        return max(1, min(8192, _SIM_BUDGET // (blocks * n_train)))
    return check_chunk(chunk_size)


def _vote(score: torch.Tensor, dist2: bool, labels: torch.Tensor, k: int, T: float,
          num_classes: int) -> torch.Tensor:
    """Top-k of ``score`` per row, weighted class vote, arg-max (ties -> lowest class)."""
    vals, idx = score.topk(k, dim=1, largest=True, sorted=False)
    vals = vals.to(torch.float64)
    if dist2:  # score = -squared distance; solo-learn weight 1/(distance + eps)
        w = 1.0 / (vals.neg().clamp_min(0).sqrt() + EUCLID_EPS)
    else:
        w = torch.exp(vals / T)
    votes = torch.zeros(score.shape[0], num_classes, dtype=torch.float64, device=score.device)
    votes.scatter_add_(1, labels[idx], w)
    return votes.argmax(dim=1)


def _result(pred, yte, p, n_train, k_used, extra=None) -> ProbeResult:
    acc = float((pred == yte).to(torch.float64).mean())
    proto = {"name": "knn", "k": k_used, "k_requested": p["k"], "temperature": p["temperature"],
             "preset": p["preset"], "distance": p["distance"]}
    if p["distance"] == "euclidean":
        proto["weight"] = f"1/(distance+{EUCLID_EPS:g})"
    else:
        proto["weight"] = "exp(cos/T)"
    if extra:
        proto.update(extra)
    return ProbeResult(accuracy=acc, protocol=proto, n_train=int(n_train), n_test=int(yte.shape[0]),
                       predictions=pred)


def knn_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, k: int | None = None,
              temperature: float | None = None, preset: str | None = None,
              num_classes: int | None = None, chunk_size: int | None = None,
              distance: str | None = None) -> ProbeResult:
    """Weighted kNN accuracy (InstDisc rule, Wu et al. 2018; paper G's kNN evaluation).

    Rows are L2-normalised; for each test row the k most cosine-similar training
    rows vote for their class with weight exp(sim/T); the prediction is the
    arg-max (ties go to the lowest class index).  Test rows are processed in
    chunks of ``chunk_size`` (default: as many as keep a chunk×N_train block
    near 16M elements, at most 8192), one matmul and one top-k per chunk; k is
    clipped to the training-set size.

    Presets (explicit ``k``/``temperature``/``distance`` override them):
    "g" (default) k=200, T=0.5, cosine; "lightly" k=200, T=0.1, cosine;
    "solo" k=20, euclidean on the raw (unnormalised) features with weight
    1/(distance + 1e-5) and T unused — solo-learn's default; "solo-cosine"
    k=20, T=0.07, cosine (solo-learn's cosine mode).
    """
    p = _resolve(preset, k, temperature, distance)
    tr, ytr, te, yte, dtype, C = _prepare(train_x, train_y, test_x, test_y, num_classes)
    k_used = min(p["k"], tr.shape[0])
    euclid = p["distance"] == "euclidean"
    if euclid:
        tr_n2 = tr.square().sum(dim=1)
    else:
        tr = torch.nn.functional.normalize(tr, dim=1, eps=_NORM_EPS)
    cs = _auto_chunk(chunk_size, tr.shape[0])
    preds = []
    for s in range(0, te.shape[0], cs):
        x = te[s : s + cs].to(device=tr.device, dtype=dtype)
        if euclid:
            score = 2.0 * (x @ tr.T) - x.square().sum(dim=1, keepdim=True) - tr_n2
        else:
            score = torch.nn.functional.normalize(x, dim=1, eps=_NORM_EPS) @ tr.T
        preds.append(_vote(score, euclid, ytr, k_used, p["temperature"], C))
    pred = torch.cat(preds)
    return _result(pred, yte, p, tr.shape[0], k_used)


def _basis(basis: Any, m: int) -> torch.Tensor:
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
    p = _resolve(preset, k, temperature, distance)
    tr, ytr, te, yte, dtype, C = _prepare(train_h, train_y, test_h, test_y, num_classes,
                                          names=("train_h", "test_h"))
    Q = _basis(basis, tr.shape[1]).to(device=tr.device, dtype=dtype)
    k_used = min(p["k"], tr.shape[0])
    euclid = p["distance"] == "euclidean"
    trP = tr @ Q
    n2 = {"h": tr.square().sum(dim=1), "h_r": trP.square().sum(dim=1)}
    n2["h_n"] = (n2["h"] - n2["h_r"]).clamp_min(0)
    inv = {key: 1.0 / v.sqrt().clamp_min(_NORM_EPS) for key, v in n2.items()}
    cs = _auto_chunk(chunk_size, tr.shape[0], blocks=3)
    preds: dict[str, list[torch.Tensor]] = {"h": [], "h_r": [], "h_n": []}
    for s in range(0, te.shape[0], cs):
        x = te[s : s + cs].to(device=tr.device, dtype=dtype)
        xP = x @ Q
        g = {"h": x @ tr.T, "h_r": xP @ trP.T}
        g["h_n"] = g["h"] - g["h_r"]
        xn2 = {"h": x.square().sum(dim=1), "h_r": xP.square().sum(dim=1)}
        xn2["h_n"] = (xn2["h"] - xn2["h_r"]).clamp_min(0)
        for key, out in preds.items():
            if euclid:
                score = 2.0 * g[key] - xn2[key][:, None] - n2[key][None, :]
            else:
                xinv = 1.0 / xn2[key].sqrt().clamp_min(_NORM_EPS)
                score = g[key] * xinv[:, None] * inv[key][None, :]
            out.append(_vote(score, euclid, ytr, k_used, p["temperature"], C))
            del score
    extra = {"head_rank": int(Q.shape[1])}
    return {key: _result(torch.cat(v), yte, p, tr.shape[0], k_used, {**extra, "features": key})
            for key, v in preds.items()}
