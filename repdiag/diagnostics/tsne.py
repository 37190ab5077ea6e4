"""t-SNE map of a feature set (paper G Fig. 1): openTSNE on the CPU, exact-gradient torch on a GPU.

Three separate steps, as openTSNE separates them (``openTSNE.affinity``,
``openTSNE.initialization``, ``TSNE.fit``):

1. :func:`affinities`: the perplexity-calibrated input affinities P, from exact
   neighbours (:func:`exact_affinities`) or from openTSNE's own neighbour search;
2. :func:`initial_embedding`: the starting map (PCA, random, spectral or given);
3. an optimiser, one per backend with one signature ``(affinities, init) ->
   (embedding, info)``: :func:`opentsne_optimiser` (Barnes-Hut / FFT gradient)
   and :func:`torch_optimiser` (exact gradient, :mod:`repdiag.diagnostics.tsne_torch`).

:func:`tsne` checks its input and composes the three.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from repdiag.devices import check_device
from repdiag.diagnostics._common import EXCLUDE, Result, as_labels, as_matrix
from repdiag.diagnostics.knn import nearest_neighbours
from repdiag.errors import UserError

EXACT_LIMIT = 20_000
#: openTSNE.TSNE options that shape its own neighbour search (used when ``neighbors`` is not "exact")
SEARCH_OPTIONS = ("metric", "metric_params", "knn_kwargs", "verbose")
#: ``(affinities, init) -> (N×d float64 embedding, info)``
Optimiser = Callable[[Any, Any], tuple[np.ndarray, dict]]


@dataclasses.dataclass
class TSNEResult(Result):
    """2-D embedding (N×2 float64 numpy) and labels; ``to_dict()`` gives the parameters and n."""

    embedding: np.ndarray = dataclasses.field(metadata=EXCLUDE)
    labels: np.ndarray | None = dataclasses.field(metadata=EXCLUDE)
    params: dict = dataclasses.field(default_factory=dict)
    n: int = 0


# --- 1. affinities -------------------------------------------------------------------------------

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


def searched_affinities(X: torch.Tensor, perplexity: float, method: str, *, n_jobs: int = 1,
                        seed: Any = 0, **search: Any):
    """openTSNE's perplexity affinities with its own neighbour search ``method`` (e.g. annoy);
    ``search`` takes openTSNE's ``metric``, ``metric_params``, ``knn_kwargs``, ``verbose``.
    For one perplexity this is the P that ``openTSNE.TSNE.fit`` builds itself."""
    from openTSNE.affinity import PerplexityBasedNN

    data = X.detach().cpu().to(torch.float64).numpy()
    try:
        return PerplexityBasedNN(data, perplexity=float(perplexity), method=method, n_jobs=n_jobs,
                                 random_state=seed, **search)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad t-SNE neighbour option {method!r}: {e}") from None


def affinities(X: torch.Tensor, perplexity: float, neighbors: str = "exact", *,
               device: torch.device | None = None, n_jobs: int = 1, seed: Any = 0, **search: Any):
    """The input affinities P (an ``openTSNE.affinity.Affinities``; P symmetric, unit sum):
    p_{j|i} ∝ exp(−‖x_i − x_j‖²/2σ_i²) over the ⌊3·perplexity⌋ nearest neighbours of each
    point, σ_i calibrated to the perplexity, P = (P_{j|i} + P_{i|j}) / 2N (van der Maaten &
    Hinton 2008, eq. 1 and §3.1).  ``neighbors="exact"`` finds the neighbours on ``device``
    (:func:`exact_affinities`); any other value is openTSNE's search method
    (:func:`searched_affinities`)."""
    if neighbors == "exact":
        return exact_affinities(X.to(device or "cpu"), perplexity, n_jobs=n_jobs, seed=seed)
    return searched_affinities(X, perplexity, neighbors, n_jobs=n_jobs, seed=seed, **search)


# --- 2. initialisation ---------------------------------------------------------------------------

INITIALIZATIONS = ("pca", "random", "spectral")


def initial_embedding(X: torch.Tensor, how: Any = "pca", n_components: int = 2, seed: Any = 0, *,
                      P: Any = None, torch_pca: bool = False, verbose: bool = False):
    """The starting map (N × ``n_components``), openTSNE's ``initialization`` schemes.

    ``"pca"``: the top principal components of X rescaled so that the first has
    standard deviation 1e-4, plus N(0, (1e-6)²) jitter from
    ``RandomState(seed)`` (``openTSNE.initialization.pca`` on the host, or
    ``torch_pca=True``: its torch twin on X's device,
    :func:`~repdiag.diagnostics.tsne_torch.pca_initialization`, equal to 1e-13).
    ``"random"``: N(0, (1e-4)²) from ``RandomState(seed)``.  ``"spectral"``:
    leading eigenvectors of the affinities ``P``.  An array is used as given.
    """
    if not isinstance(how, str):
        return how
    if how not in INITIALIZATIONS:
        raise UserError(f"unknown t-SNE initialization {how!r}; choose "
                        f"{', '.join(INITIALIZATIONS)} or an array")
    if how == "pca" and torch_pca:
        from repdiag.diagnostics.tsne_torch import pca_initialization

        return pca_initialization(X, n_components, seed)
    from openTSNE import initialization

    if how == "pca":
        data = X.detach().cpu().to(torch.float64).numpy()
        return initialization.pca(data, n_components, random_state=seed, verbose=verbose)
    if how == "random":
        return initialization.random(X.shape[0], n_components, random_state=seed, verbose=verbose)
    return initialization.spectral(P, n_components, random_state=seed, verbose=verbose)


# --- 3. optimisers, one per backend --------------------------------------------------------------

def opentsne_optimiser(params: dict, *, exact_limit: int = EXACT_LIMIT) -> Optimiser:
    """openTSNE's gradient descent (``openTSNE.TSNE(**params).fit``: Barnes-Hut for N < 10,000,
    else FFT-interpolated gradient) as ``(affinities, init) -> (embedding, info)``.

    ``params`` are ``openTSNE.TSNE``'s options, checked here before any work.  ``info``
    holds openTSNE's own KL estimate (``kl_divergence_opentsne``) and, for N ≤
    ``exact_limit``, the exact KL(P‖Q) of the map
    (:func:`~repdiag.diagnostics.tsne_torch.kl_divergence`).
    """
    import openTSNE

    from repdiag.diagnostics.tsne_torch import kl_divergence

    try:
        t = openTSNE.TSNE(**params)
    except TypeError as e:
        raise UserError(f"bad t-SNE option: {e}") from None
    _check_initialization(params.get("initialization", "pca"), INITIALIZATIONS)

    def optimise(aff, init) -> tuple[np.ndarray, dict]:
        result = t.fit(None, affinities=aff, initialization=init)
        emb = np.array(result, dtype=np.float64)
        info = {"kl_divergence_opentsne": float(result.kl_divergence)}
        if emb.shape[0] <= exact_limit:
            info["kl_divergence"] = kl_divergence(aff.P, torch.from_numpy(emb))
        return emb, info

    return optimise


def torch_optimiser(params: dict, device: torch.device) -> Optimiser:
    """The exact-gradient optimiser :func:`~repdiag.diagnostics.tsne_torch.optimize` on
    ``device`` as ``(affinities, init) -> (embedding, info)``.

    ``params`` take openTSNE's names (``n_iter``, ``early_exaggeration_iter``,
    ``learning_rate``, ...) plus ``chunk_size`` and ``dtype``; ``perplexity``,
    ``n_jobs``, ``random_state``, ``n_components`` and ``initialization`` are
    for the other steps.  Unknown names are refused here, before any work.
    """
    from repdiag.diagnostics.tsne_torch import DEFAULTS, optimize

    allowed = set(DEFAULTS) | {"chunk_size", "dtype"}
    ignored = {"perplexity", "n_jobs", "random_state"}
    bad = sorted(set(params) - allowed - ignored)
    if bad:
        raise UserError(f"bad t-SNE option for the torch backend: {', '.join(bad)} "
                        f"(it takes {', '.join(sorted(allowed))})")
    n_components = params.get("n_components", 2)
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise UserError(f"n_components must be a positive integer, got {n_components!r}")
    _check_initialization(params.get("initialization", "pca"), ("pca", "random"), "the torch t-SNE")
    opts = {k: v for k, v in params.items()
            if k in allowed and k not in ("n_components", "initialization")}

    def optimise(aff, init) -> tuple[np.ndarray, dict]:
        emb, info = optimize(aff.P, init, device=device, **opts)
        return emb.cpu().to(torch.float64).numpy(), info

    return optimise


def _check_initialization(how: Any, known: tuple[str, ...], who: str = "t-SNE") -> None:
    if isinstance(how, str) and how not in known:
        raise UserError(f"{who} takes initialization {', '.join(repr(k) for k in known)} or an "
                        f"array, got {how!r}")


# --- the composition -----------------------------------------------------------------------------

def tsne(X: Any, labels: Any = None, *, n_jobs: int | None = None, perplexity: float = 30,
         seed: int = 0, neighbors: str = "exact", device: Any = None, backend: str | None = None,
         exact_limit: int = EXACT_LIMIT, **kw: Any) -> TSNEResult:
    """t-SNE map of X (N×m) to 2-D, PCA initialisation (paper G Fig. 1 uses t-SNE).

    :func:`affinities` from the ⌊3·perplexity⌋ nearest neighbours of each point:
    ``neighbors="exact"`` (default) finds them exactly with repdiag's chunked
    GEMM + top-k; ``neighbors="annoy"`` (or any other openTSNE method) leaves the
    search to openTSNE.  Then :func:`initial_embedding` and one of two optimisers
    on the same affinities:

    - ``backend="opentsne"`` (the default for ``device`` None or "cpu"):
      :func:`opentsne_optimiser`, openTSNE's Barnes-Hut (N < 10,000) or
      FFT-interpolated gradient.
    - ``backend="torch"`` (the default for ``device="cuda"``/``"cuda:N"``;
      on the CPU when asked for explicitly): :func:`torch_optimiser`, the exact
      gradient in torch with openTSNE's defaults and optimiser.
      Above ``exact_limit`` points (default 20,000) on a GPU the exact gradient's
      O(N²) cost loses to openTSNE's O(N) one: openTSNE runs on the host instead,
      with a one-line notice on stderr.

    ``device`` naming a CUDA device this machine lacks is a UserError, before any
    work, as are bad options.  ``params`` in the result say which backend ran
    (``"backend"``) and, for N ≤ ``exact_limit``, the final KL(P‖Q) computed
    exactly on the embedding (``"kl_divergence"``), the same formula for both
    backends.

    ``n_jobs`` defaults to ``os.cpu_count()`` (openTSNE's own default is 1); the
    BLAS/OpenMP thread pools are limited to the same number while it runs
    (openTSNE's ``n_jobs`` alone does not bound them), and torch's intra-op
    threads to min(n_jobs, ``torch.get_num_threads()``), so a caller's lower torch
    setting stands.  ``random_state=seed``.  Other keyword arguments go to
    ``openTSNE.TSNE`` (e.g. ``n_iter``, ``early_exaggeration_iter``,
    ``learning_rate``, ``negative_gradient_method``, ``initialization``) or, for
    the torch backend, to :func:`~repdiag.diagnostics.tsne_torch.optimize` (the
    same names, plus ``chunk_size`` and ``dtype``).
    """
    dev, backend = _device_and_backend(device, backend, exact_limit)
    X, lab = _checked_input(X, labels, perplexity)
    n = X.shape[0]
    jobs = int(n_jobs) if n_jobs is not None else (os.cpu_count() or 1)
    extra: dict[str, Any] = {}
    if backend == "torch" and dev.type == "cuda" and n > exact_limit:
        print(f"repdiag: t-SNE of {n} points is above the exact-gradient GPU limit ({exact_limit}); "
              "optimising with openTSNE on the host instead", file=sys.stderr, flush=True)
        backend, extra["fallback"] = "opentsne", f"N > exact_limit={exact_limit}"
    params = {"perplexity": float(perplexity), "initialization": "pca", "n_jobs": jobs,
              "random_state": int(seed), **kw}
    params.setdefault("n_components", 2)
    on_torch = backend == "torch"
    if on_torch:
        optimise = torch_optimiser(params, dev)
    else:
        optimise = opentsne_optimiser({**params, "neighbors": "auto" if neighbors == "exact"
                                       else neighbors}, exact_limit=exact_limit)
    rs = seed if on_torch else params["random_state"]  # openTSNE seeds search and init with it
    search = {} if on_torch else {k: params[k] for k in SEARCH_OPTIONS if k in params}
    with _thread_limits(jobs):
        P = affinities(X, perplexity, neighbors, device=dev, n_jobs=jobs,
                       seed=seed if neighbors == "exact" else rs, **search)
        init = initial_embedding(X.to(dev) if on_torch else X, params["initialization"],
                                 params["n_components"], rs, P=P.P, torch_pca=on_torch,
                                 verbose=params.get("verbose", False))
        emb, info = optimise(P, init)
    extra.update(info)
    plain = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
             for k, v in {**params, "neighbors": neighbors, "backend": backend,
                          "device": str(dev) if on_torch else "cpu", **extra}.items()}
    return TSNEResult(embedding=emb, labels=lab, params=plain, n=int(n))


def _device_and_backend(device: Any, backend: str | None, exact_limit: Any
                        ) -> tuple[torch.device, str]:
    """The checked device (CPU when None) and backend (torch for a CUDA device, else opentsne)."""
    dev = None if device is None else check_device(str(device), "t-SNE device")
    if backend is None:
        backend = "torch" if dev is not None and dev.type == "cuda" else "opentsne"
    if backend not in ("opentsne", "torch"):
        raise UserError(f"unknown t-SNE backend {backend!r}; choose opentsne or torch")
    if isinstance(exact_limit, bool) or not isinstance(exact_limit, int) or exact_limit < 2:
        raise UserError(f"exact_limit must be an integer >= 2, got {exact_limit!r}")
    return dev or torch.device("cpu"), backend


def _checked_input(X: Any, labels: Any, perplexity: float) -> tuple[torch.Tensor, np.ndarray | None]:
    """X as a float matrix (rescaled to unit scale when far from it) and the labels as numpy;
    a bad perplexity or points that do not vary are a UserError."""
    X = as_matrix(X, "X", min_rows=2)
    top = float(X.abs().max())
    if top > 0 and not 1e-6 <= top <= 1e6:
        # far from unit scale (float64 features of 1e39 or 1e-50): the perplexity-calibrated
        # affinities do not depend on a global scale, but float32 steps inside the
        # optimisers overflow or underflow, so map onto unit scale first
        X = X / top
    n = X.shape[0]
    lab = None if labels is None else as_labels(labels, n, "labels", torch.device("cpu")).numpy()
    if not perplexity > 0:
        raise UserError(f"perplexity must be positive, got {perplexity!r}")
    if 3 * perplexity >= n:
        raise UserError(f"perplexity {perplexity} is too large for {n} points (need n > 3*perplexity)")
    if bool((X == X[:1]).all()):  # no distances: the affinities are 0/0 and the map all NaN
        raise UserError(f"t-SNE: all {n} points are identical (the features do not "
                        "vary), so there is no map to draw")
    return X, lab


@contextlib.contextmanager
def _thread_limits(jobs: int):
    """BLAS/OpenMP pools limited to ``jobs`` threads, torch's to min(jobs, its current count)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    try:
        with threadpool_limits(limits=jobs):
            torch.set_num_threads(min(jobs, threads))
            yield
    finally:
        torch.set_num_threads(threads)
