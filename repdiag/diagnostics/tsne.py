"""t-SNE map of a feature set (paper G Fig. 1): openTSNE on the CPU, exact-gradient torch on a GPU."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import numpy as np
import torch

from repdiag.devices import check_device
from repdiag.diagnostics._common import EXCLUDE, Result, as_labels, as_matrix
from repdiag.diagnostics.knn import nearest_neighbours
from repdiag.errors import UserError


@dataclasses.dataclass
class TSNEResult(Result):
    """2-D embedding (N×2 float64 numpy) and labels; ``to_dict()`` gives the parameters and n."""

    embedding: np.ndarray = dataclasses.field(metadata=EXCLUDE)
    labels: np.ndarray | None = dataclasses.field(metadata=EXCLUDE)
    params: dict = dataclasses.field(default_factory=dict)
    n: int = 0


def exact_affinities(X: torch.Tensor, perplexity: float, *, n_jobs: int = 1, seed: int = 0):
    """openTSNE perplexity affinities from the exact ⌊3·perplexity⌋ Euclidean neighbours.

    The neighbours come from :func:`~repdiag.diagnostics.knn.nearest_neighbours`
    (chunked GEMM + top-k, each point's own entry excluded); openTSNE then
    calibrates σ_i to the perplexity and symmetrises P = (P_{j|i} + P_{i|j}) / 2N
    exactly as for its own index (same P as its ``method="exact"``).
    """
    from openTSNE.affinity import PerplexityBasedNN
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    k = min(X.shape[0] - 1, int(3 * perplexity))
    dist, idx = nearest_neighbours(X, X, k, metric="euclidean", exclude_self=True)
    index = PrecomputedNeighbors(idx.cpu().numpy(), dist.cpu().to(torch.float64).numpy())
    return PerplexityBasedNN(perplexity=float(perplexity), knn_index=index, n_jobs=n_jobs,
                             random_state=int(seed))


EXACT_LIMIT = 20_000


def tsne(X: Any, labels: Any = None, *, n_jobs: int | None = None, perplexity: float = 30,
         seed: int = 0, neighbors: str = "exact", device: Any = None, backend: str | None = None,
         exact_limit: int = EXACT_LIMIT, **kw: Any) -> TSNEResult:
    """t-SNE map of X (N×m) to 2-D, PCA initialisation (paper G Fig. 1 uses t-SNE).

    The input affinities p_{j|i} ∝ exp(−‖x_i − x_j‖²/2σ_i²) (perplexity-calibrated
    σ_i, symmetrised) are built from the ⌊3·perplexity⌋ nearest neighbours of each
    point.  ``neighbors="exact"`` (default) finds them exactly with repdiag's
    chunked GEMM + top-k (:func:`~repdiag.diagnostics.knn.nearest_neighbours`):
    on 10,000 points of dimension 2048 that takes 4-5 s on 2 cores where
    openTSNE's approximate Annoy index takes about 21 s.  ``neighbors="annoy"``
    (or any other openTSNE method) leaves the search to openTSNE.

    Two optimisers, on the same affinities:

    - ``backend="opentsne"`` (the default for ``device`` None or "cpu"):
      openTSNE's Barnes-Hut (N < 10,000) or FFT-interpolated gradient.
    - ``backend="torch"`` (the default for ``device="cuda"``/``"cuda:N"``;
      on the CPU when asked for explicitly): the exact gradient in torch with
      openTSNE's defaults and optimiser, :mod:`repdiag.diagnostics.tsne_torch`.
      Above ``exact_limit`` points (default 20,000) on a GPU the exact gradient's
      O(N²) cost loses to openTSNE's O(N) one: openTSNE runs on the host instead,
      with a one-line notice on stderr.

    ``device`` naming a CUDA device this machine lacks is a UserError, before any
    work.  ``params`` in the result say which backend ran (``"backend"``) and,
    for N ≤ ``exact_limit``, the final KL(P‖Q) computed exactly on the embedding
    (``"kl_divergence"``, :func:`~repdiag.diagnostics.tsne_torch.kl_divergence`),
    the same formula for both backends.

    ``n_jobs`` defaults to ``os.cpu_count()`` (openTSNE's own default is 1), and the
    BLAS/OpenMP thread pools are limited to the same number while it runs
    (openTSNE's ``n_jobs`` alone does not bound them), and torch's intra-op
    threads to min(n_jobs, ``torch.get_num_threads()``), so a caller's lower torch
    setting stands (on a busy machine one thread can be many times faster than two
    spinning OpenMP threads for these small per-element kernels).  ``random_state=seed``.
    Other keyword arguments go to ``openTSNE.TSNE`` (e.g. ``n_iter``,
    ``early_exaggeration_iter``, ``learning_rate``, ``negative_gradient_method``) or,
    for the torch backend, to :func:`~repdiag.diagnostics.tsne_torch.optimize`
    (the same names, plus ``chunk_size`` and ``dtype``).
    """
    import openTSNE
    from threadpoolctl import threadpool_limits

    from repdiag.diagnostics import tsne_torch

    dev = None if device is None else check_device(str(device), "t-SNE device")
    if backend is None:
        backend = "torch" if dev is not None and dev.type == "cuda" else "opentsne"
    if backend not in ("opentsne", "torch"):
        raise UserError(f"unknown t-SNE backend {backend!r}; choose opentsne or torch")
    if isinstance(exact_limit, bool) or not isinstance(exact_limit, int) or exact_limit < 2:
        raise UserError(f"exact_limit must be an integer >= 2, got {exact_limit!r}")
    X = as_matrix(X, "X", min_rows=2)
    top = float(X.abs().max())
    if top > 0 and not 1e-6 <= top <= 1e6:
        # far from unit scale (float64 features of 1e39 or 1e-50): the perplexity-calibrated
        # affinities do not depend on a global scale, but float32 steps inside the
        # optimisers overflow or underflow, so map onto unit scale first
        X = X / top
    n = X.shape[0]
    lab = None
    if labels is not None:
        lab = as_labels(labels, n, "labels", torch.device("cpu")).numpy()
    if not perplexity > 0:
        raise UserError(f"perplexity must be positive, got {perplexity!r}")
    if 3 * perplexity >= n:
        raise UserError(f"perplexity {perplexity} is too large for {n} points (need n > 3*perplexity)")
    if bool((X == X[:1]).all()):  # no distances: the affinities are 0/0 and the map all NaN
        raise UserError(f"t-SNE: all {n} points are identical (the features do not "
                        "vary), so there is no map to draw")
    jobs = int(n_jobs) if n_jobs is not None else (os.cpu_count() or 1)
    dev = dev or torch.device("cpu")
    extra: dict[str, Any] = {}
    if backend == "torch" and dev.type == "cuda" and n > exact_limit:
        print(f"repdiag: t-SNE of {n} points is above the exact-gradient GPU limit ({exact_limit}); "
              "optimising with openTSNE on the host instead", file=sys.stderr, flush=True)
        backend, extra["fallback"] = "opentsne", f"N > exact_limit={exact_limit}"
    params = {"perplexity": float(perplexity), "initialization": "pca", "n_jobs": jobs,
              "random_state": int(seed), **kw}
    params.setdefault("n_components", 2)
    if backend == "torch":
        run = _torch_options(params)
    else:
        data = X.detach().cpu().to(torch.float64).numpy()
        try:
            t = openTSNE.TSNE(**params, neighbors=neighbors if neighbors != "exact" else "auto")
        except TypeError as e:
            raise UserError(f"bad t-SNE option: {e}") from None
    threads = torch.get_num_threads()
    try:
        with threadpool_limits(limits=jobs):
            torch.set_num_threads(min(jobs, threads))
            if neighbors == "exact":
                affinities = exact_affinities(X.to(dev), perplexity, n_jobs=jobs, seed=seed)
            elif backend == "torch":
                affinities = _opentsne_affinities(X, perplexity, neighbors, jobs, seed)
            else:
                affinities = None
            if backend == "torch":
                Xd = X.to(dev)
                if isinstance(run["init"], str) and run["init"] == "pca":
                    init = tsne_torch.pca_initialization(Xd, run["n_components"], seed)
                elif isinstance(run["init"], str):
                    init = torch.from_numpy(np.random.RandomState(seed).normal(
                        0, 1e-4, (n, run["n_components"])))
                else:
                    init = run["init"]
                emb_t, info = tsne_torch.optimize(affinities.P, init, device=dev, **run["opts"])
                emb = emb_t.cpu().to(torch.float64).numpy()
                extra.update(info)
            else:
                result = t.fit(data, affinities=affinities)
                emb = np.array(result, dtype=np.float64)
                extra["kl_divergence_opentsne"] = float(result.kl_divergence)
                if n <= exact_limit:
                    P = (affinities if affinities is not None else result.affinities).P
                    extra["kl_divergence"] = tsne_torch.kl_divergence(P, torch.from_numpy(emb))
    finally:
        torch.set_num_threads(threads)
    plain = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
             for k, v in {**params, "neighbors": neighbors, "backend": backend,
                          "device": str(dev) if backend == "torch" else "cpu", **extra}.items()}
    return TSNEResult(embedding=emb, labels=lab, params=plain, n=int(n))


def _torch_options(params: dict) -> dict:
    """Split tsne()'s keyword arguments into the torch optimiser's options, refusing unknown ones."""
    from repdiag.diagnostics.tsne_torch import DEFAULTS

    allowed = set(DEFAULTS) | {"chunk_size", "dtype"}
    ignored = {"perplexity", "n_jobs", "random_state"}
    bad = sorted(set(params) - allowed - ignored)
    if bad:
        raise UserError(f"bad t-SNE option for the torch backend: {', '.join(bad)} "
                        f"(it takes {', '.join(sorted(allowed))})")
    n_components = params.get("n_components", 2)
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise UserError(f"n_components must be a positive integer, got {n_components!r}")
    init = params.get("initialization", "pca")
    if isinstance(init, str) and init not in ("pca", "random"):
        raise UserError(f"the torch t-SNE takes initialization 'pca', 'random' or an array, got {init!r}")
    opts = {k: v for k, v in params.items()
            if k in allowed and k not in ("n_components", "initialization")}
    return {"n_components": n_components, "init": init, "opts": opts}


def _opentsne_affinities(X: torch.Tensor, perplexity: float, method: str, jobs: int, seed: int):
    """openTSNE's own perplexity affinities with neighbour search ``method`` (e.g. annoy)."""
    from openTSNE.affinity import PerplexityBasedNN

    data = X.detach().cpu().to(torch.float64).numpy()
    try:
        return PerplexityBasedNN(data, perplexity=float(perplexity), method=method, n_jobs=jobs,
                                 random_state=int(seed))
    except (TypeError, ValueError) as e:
        raise UserError(f"bad t-SNE neighbour option {method!r}: {e}") from None
