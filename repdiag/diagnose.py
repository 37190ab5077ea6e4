"""Reports: the diagnostics of paper G §3 composed over one model's features.

Each function takes a :class:`repdiag.features.FeatureSource` (a checkpoint or
a feature file) and returns a plain dict, the JSON the CLI prints (schemas in
docs/protocols.md). The maths lives in :mod:`repdiag.diagnostics`; this module only
chooses which features go where.
"""

from __future__ import annotations

import torch

from repdiag.diagnostics import (
    head_svd,
    knn_probe,
    knn_probe_split,
    linear_probe,
    linear_probe_split,
    nullspace,
    rank,
    spectrum,
)
from repdiag.diagnostics.probes import DEFAULT_KIND, ProbeRequest, as_request
from repdiag.errors import UserError
from repdiag.features import FeatureSet, FeatureSource

FEATURE_NAMES = ("h", "h_r", "h_n", "z")
CONVERGENCE_KEYS = ("final_loss", "grad_norm", "max_abs_grad", "n_iter")


def _matrices(fs: FeatureSet, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {"h": fs.h}
    if "z" in names:
        if fs.z is None:
            raise UserError("these features hold no z (head output); drop z from --on")
        out["z"] = fs.z
    return out


def spectrum_report(src: FeatureSource, split: str = "test", *, normalize: bool = False,
                    on: tuple[str, ...] = ("h", "z")) -> dict:
    """Covariance eigenvalues of H and Z, descending (paper G Fig. 2a/b)."""
    fs = src.get(split)
    on = tuple(n for n in on if n != "z" or fs.z is not None)
    mats = _matrices(fs, on)
    return {name: spectrum(mats[name], normalize=normalize).eigenvalues.tolist() for name in on}


def rank_report(src: FeatureSource, split: str = "test", *, rtol: float | None = None) -> dict:
    """Numerical and effective rank of H and Z and the deficit rank(H) - rank(Z) (G Fig. 2c)."""
    fs = src.get(split)
    out = {"h": _rank_dict(fs.h, rtol)}
    if fs.z is not None:
        out["z"] = _rank_dict(fs.z, rtol)
        out["rank_deficit"] = out["h"]["rank"] - out["z"]["rank"]
    return out


def _rank_dict(x: torch.Tensor, rtol: float | None) -> dict:
    d = rank(x, rtol=rtol).to_dict()
    d.pop("singular_values", None)
    # with n <= m samples the rank is at most n: a bound set by the sample, not the model
    d["limited_by_samples"] = bool(x.shape[0] <= x.shape[1])
    return d


def _parse_on(on: str | tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(s.strip() for s in on.split(",")) if isinstance(on, str) else tuple(on)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UserError(f"--on takes a comma list of {', '.join(allowed)}; got '{','.join(names)}'")
    return names


def probe_report(src: FeatureSource, probe: ProbeRequest | str = DEFAULT_KIND,
                 on: str | tuple[str, ...] | None = None, *, preset: str | None = None,
                 seed: int = 0) -> dict:
    """Probe accuracies on the test part for each of h, h_r, h_n, z (paper G Fig. 3-4).

    ``probe`` is a :class:`~repdiag.diagnostics.probes.ProbeRequest`, or a kind
    ("knn", "linear") with an optional ``preset`` (default: kNN "g", k=200,
    cosine, weighted vote exp(sim/T), T=0.5; linear "fast"). ``on`` None probes
    h and z (h alone for features without a head output). The train part is
    the probe's training set; nothing is selected on test.
    """
    req = as_request(probe, preset)
    train, test = src.get("train"), src.get("test")
    if on is None:  # h and z, or h alone when there is no head output
        on = ("h", "z") if train.z is not None and test.z is not None else ("h",)
    names = _parse_on(on, FEATURE_NAMES)
    results = {}
    need_split = [n for n in names if n in ("h_r", "h_n")]
    svd = None
    if need_split:
        if train.weight is None:
            raise UserError("h_r/h_n need the head's linear map, and these features have none")
        svd = head_svd(train.weight)
    if svd is not None and svd.rank == 0:  # A = 0: h_r = 0 and h_n = h exactly
        for n in ("h", "h_n"):
            if n in names and "h" not in results:
                results["h"] = _probe(req, train.h, train.y, test.h, test.y, seed)
        if "h_n" in names:
            results["h_n"] = results["h"]
        if "h_r" in names:
            results["h_r"] = None
    elif svd is not None:  # h, h_r, h_n together, without forming h_r or h_n
        if req.kind == "knn":
            trio = knn_probe_split(train.h, train.y, test.h, test.y, svd.basis, preset=req.preset)
        else:
            trio = linear_probe_split(train.h, train.y, test.h, test.y, svd.basis,
                                      preset=req.preset, seed=seed)
        results.update({n: trio[n] for n in names if n in trio})
    for n in names:
        if n in results:
            continue
        tr, te = _pair(train, test, n)
        results[n] = _probe(req, tr, train.y, te, test.y, seed)
    undefined = {}
    if "h_n" in names and (why := null_space_undefined(train.weight, svd)):
        undefined["h_n"] = why
    if results.get("h_r", 0) is None:
        undefined["h_r"] = "the head's map A is zero: its range is {0}, so h_r is identically 0"
    first = next(r for r in results.values() if r is not None)
    out = {"probe": req.kind, "protocol": first.protocol,
           "accuracy": {n: None if n in undefined else float(results[n].accuracy)
                        for n in names},
           "n_train": first.n_train, "n_test": first.n_test}
    if req.kind == "linear":  # how close each probe came to its training objective's optimum
        out["convergence"] = {n: {k: results[n].details[k] for k in CONVERGENCE_KEYS
                                  if k in results[n].details}
                              for n in names if results[n] is not None}
    if undefined:
        out["undefined"] = undefined
    if svd is not None:
        out.update(head_rank=svd.rank, tol=svd.tol)
    return out


def _probe(req: ProbeRequest, tr, ytr, te, yte, seed: int):
    """One kNN or linear probe, as ``req`` names it."""
    if req.kind == "knn":
        return knn_probe(tr, ytr, te, yte, preset=req.preset)
    return linear_probe(tr, ytr, te, yte, preset=req.preset, seed=seed)


def null_space_undefined(weight: torch.Tensor | None, svd=None) -> str | None:
    """Why h_n is not defined for this head, or None if it is.

    h_n = h − A⁺A h (paper G eq. 4) is identically zero when A has full column
    rank m (its null space is {0}): always for no head (A = I), and for a
    first layer that maps m features injectively onto d ≥ m (an MLP whose
    hidden width exceeds m). A probe on h_n then measures nothing.
    """
    if weight is None:
        return None
    d, m = weight.shape
    if d == m and torch.equal(weight, torch.eye(m, dtype=weight.dtype)):
        return "no head: A = I, so h_n = h - A+Ah is identically 0"
    rank = (svd or head_svd(weight)).rank
    if rank == m:
        return (f"the head's map A ({d}x{m}) has full column rank {m}: its null space is {{0}}, "
                "so h_n is identically 0")
    return None


def _pair(train: FeatureSet, test: FeatureSet, name: str) -> tuple:
    if name == "h":
        return train.h, test.h
    if train.z is None or test.z is None:
        raise UserError("these features hold no z (head output); drop z from --on")
    return train.z, test.z


def nullspace_report(src: FeatureSource, probe: ProbeRequest | str = DEFAULT_KIND, *,
                     preset: str | None = None, seed: int = 0) -> dict:
    """Range/null-space split of h under the head's first linear map (paper G eq. 4, Fig. 4).

    Reports the head's singular values and rank, the check max||A h_n||/max||A h||,
    the share of ||h||^2 in the range, and probe accuracies on h, h_r, h_n, z
    (``probe`` and ``preset`` as :func:`probe_report`).
    """
    req = as_request(probe, preset)
    test = src.get("test")
    if test.weight is None:
        raise UserError("nullspace needs the head's linear map (a checkpoint with a head, or a "
                        "feature file with head.weight)")
    on = ("h", "h_r", "h_n") + (("z",) if test.z is not None else ())
    report = probe_report(src, req, on, seed=seed)
    ns = nullspace(test.h, test.weight)
    report.update(head_rank=ns.head_rank, residual=ns.residual, tol=ns.tol,
                  energy_range=ns.energy_range,
                  head_singular_values=ns.singular_values.tolist(),
                  head_shape=list(test.weight.shape))
    return report
