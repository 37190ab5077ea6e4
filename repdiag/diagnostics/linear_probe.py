"""Linear probes on frozen features: a fast full-batch solver and the two papers' protocols."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from repdiag.diagnostics._common import ProbeResult, as_basis, as_labels, as_matrix
from repdiag.diagnostics.logistic import Design, fit_lbfgs, fit_lbfgs_many
from repdiag.errors import UserError

LINEAR_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"C": 1.0, "max_iter": 100, "tolerance_grad": 1e-4, "standardize": True},
    "g": {"epochs": 200, "lr": 1e-3, "weight_decay": 1e-6, "batch_size": 256,
          "standardize": False},
    "s": {"epochs": 50, "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.0, "batch_size": 32,
          "split": (0.7, 0.1, 0.2), "standardize": False},
}


def _settings(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if preset not in LINEAR_PRESETS:
        raise UserError(f"unknown linear-probe preset {preset!r}; choose one of "
                        f"{', '.join(LINEAR_PRESETS)}")
    p = dict(LINEAR_PRESETS[preset])
    for key, val in overrides.items():
        if val is None:
            continue
        if key not in p or key == "split":
            raise UserError(f"option {key!r} does not apply to linear-probe preset {preset!r}")
        if key == "standardize":
            p[key] = bool(val)
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            raise UserError(f"{key} must be a number, got {val!r}")
        if key in ("epochs", "max_iter", "batch_size"):
            if int(val) != val or val < 1:
                raise UserError(f"{key} must be a positive integer, got {val!r}")
            val = int(val)
        elif val < 0 or (key in ("C", "lr") and val == 0):
            raise UserError(f"{key} must be {'positive' if key in ('C', 'lr') else 'non-negative'}"
                            f", got {val!r}")
        p[key] = val
    return p


def _moments(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean and population standard deviation (a zero deviation becomes 1).

    Two chunked passes (sum, then centred squares): faster than
    ``Tensor.std(dim=0)`` on a tall CPU matrix, whose column reduction is strided.
    """
    mean = x.sum(dim=0) / x.shape[0]
    ss = torch.zeros_like(mean)
    for s in range(0, x.shape[0], chunk):
        ss += (x[s : s + chunk] - mean).square_().sum(dim=0)
    std = (ss / x.shape[0]).sqrt_()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _standardizer(x: torch.Tensor):
    mean, std = _moments(x)
    return lambda z: (z - mean) / std


def _seeded_linear(m: int, c: int, seed: int, device, dtype) -> torch.nn.Linear:
    """nn.Linear with PyTorch's default init U(±1/√m) drawn from a private generator."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.utils.skip_init(torch.nn.Linear, m, c, device=device, dtype=dtype)
    bound = 1.0 / math.sqrt(m)
    with torch.no_grad():
        lin.weight.copy_(torch.empty(c, m, dtype=dtype).uniform_(-bound, bound, generator=g))
        lin.bias.copy_(torch.empty(c, dtype=dtype).uniform_(-bound, bound, generator=g))
    return lin


@torch.no_grad()
def _predict(lin, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    return torch.cat([lin(x[s : s + chunk]).argmax(dim=1) for s in range(0, x.shape[0], chunk)])


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).to(torch.float64).mean())


def _fit_minibatch(x, y, C_classes, p, seed, optim: str, val=None):
    """Mini-batch training by indexing a randperm-shuffled tensor (no DataLoader)."""
    n, m = x.shape
    lin = _seeded_linear(m, C_classes, seed, x.device, x.dtype)
    g = torch.Generator().manual_seed(seed + 1)
    if optim == "adam":
        opt = torch.optim.Adam(lin.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        sched = None
    else:
        opt = torch.optim.SGD(lin.parameters(), lr=p["lr"], momentum=p["momentum"],
                              weight_decay=p["weight_decay"])
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min")
    bs = p["batch_size"]
    best = (math.inf, -1, None)
    val_losses: list[float] = []
    for epoch in range(p["epochs"]):
        perm = torch.randperm(n, generator=g).to(x.device)
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            loss = F.cross_entropy(lin(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is not None:
            with torch.no_grad():
                vloss = float(F.cross_entropy(lin(val[0]), val[1]))
            val_losses.append(vloss)
            if sched is not None:
                sched.step(vloss)
            if vloss < best[0]:
                best = (vloss, epoch, copy.deepcopy(lin.state_dict()))
    info: dict[str, Any] = {}
    if val is not None and best[2] is not None:
        lin.load_state_dict(best[2])
        info.update(best_val_loss=best[0], best_epoch=best[1], val_losses=val_losses,
                    final_lr=float(opt.param_groups[0]["lr"]))
    info.update(full_batch_convergence(lin, x, y, p["weight_decay"]))
    return lin, info


def full_batch_convergence(lin: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor,
                           weight_decay: float, chunk: int = 65536) -> dict[str, float]:
    """How far a mini-batch probe is from the optimum of its own training objective.

    The objective the optimiser's L2 weight decay implies, on the whole training
    set: mean cross-entropy + (wd/2)(‖W‖² + ‖b‖²) (PyTorch decays the bias too).
    Returns ``final_loss`` (that objective), ``final_ce`` (its cross-entropy
    part), ``grad_norm`` (‖∇‖₂ over W and b) and ``max_abs_grad`` (‖∇‖∞): at a
    minimum both gradient norms are 0.
    """
    params = [lin.weight, lin.bias]
    n = x.shape[0]
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    grads = [torch.zeros_like(q) for q in params]
    for s in range(0, n, chunk):
        with torch.enable_grad():
            part = F.cross_entropy(lin(x[s : s + chunk]), y[s : s + chunk], reduction="sum") / n
            for g, d in zip(grads, torch.autograd.grad(part, params), strict=True):
                g += d
        total += part.detach()
    with torch.no_grad():
        l2 = sum(float(q.square().sum()) for q in params)
        grads = [g + weight_decay * q for g, q in zip(grads, params, strict=True)]
    flat = torch.cat([g.reshape(-1) for g in grads])
    return {"final_loss": float(total) + 0.5 * weight_decay * l2, "final_ce": float(total),
            "grad_norm": float(flat.norm()), "max_abs_grad": float(flat.abs().max())}


def linear_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, preset: str = "fast",
                 val_x: Any = None, val_y: Any = None, seed: int = 0, device: Any = None,
                 num_classes: int | None = None, epochs: int | None = None,
                 lr: float | None = None, weight_decay: float | None = None,
                 batch_size: int | None = None, C: float | None = None,
                 max_iter: int | None = None, standardize: bool | None = None) -> ProbeResult:
    """Linear-probe accuracy of frozen features (paper G §3 footnote 2 / Fig. 3, 4).

    Presets (a model is never selected on test accuracy):

    - ``"fast"``: features standardised with the train mean/std; full-batch
      multinomial logistic regression minimising mean cross-entropy +
      ½·λ‖W‖² with λ = 1/(C·N) (bias unpenalised) — exactly scikit-learn's
      LogisticRegression objective ½‖W‖²/C + Σ log-loss divided by N, default
      C = 1.0 — solved by torch.optim.LBFGS (strong Wolfe) from W = 0 with
      scikit-learn's stopping rule: gradient ∞-norm of the mean objective
      ≤ 1e-4 or ``max_iter`` = 100 iterations. In the over-parameterised regime
      (m comparable to N) the stopping rule acts as regularisation, so matching
      it matters for matching scikit-learn's accuracy, not only its objective.
    - ``"g"`` (paper G): nn.Linear on the raw features, Adam lr 1e-3, weight
      decay 1e-6, batch 256, 200 epochs, evaluated after the last epoch.
    - ``"s"`` (paper S, simclr-ae): uses ``test_x``/``test_y`` ONLY (S probes the
      official test split; ``train_x``/``train_y`` are ignored and may be None),
      split 70/10/20 by a permutation seeded with ``seed``; nn.Linear, SGD lr
      1e-3, no momentum, wd 0, batch 32, 50 epochs, ReduceLROnPlateau (PyTorch
      defaults: factor 0.1, patience 10) on the validation loss; the weights
      with the best validation loss are kept; accuracy on the 20 % part.

    ``epochs``, ``lr``, ``weight_decay``, ``batch_size``, ``C``, ``max_iter`` and
    ``standardize`` override the preset where they apply (else UserError).
    With ``val_x``/``val_y`` ("fast", "g") the validation accuracy is reported in
    ``details``; it selects nothing.  Runs on ``device`` (default: the features'
    device), in the features' float dtype; ``seed`` fixes init and shuffling.
    """
    p = _settings(preset, {"epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                           "batch_size": batch_size, "C": C, "max_iter": max_iter,
                           "standardize": standardize})
    te = as_matrix(test_x, "test_x")
    dev = torch.device(device) if device is not None else te.device
    yte = as_labels(test_y, te.shape[0], "test_y", dev)
    te = te.to(dev)
    details: dict[str, Any] = {}
    if preset == "s":
        if val_x is not None or val_y is not None:
            raise UserError("linear-probe preset 's' makes its own 70/10/20 split of test_x; "
                            "do not pass val_x/val_y")
        n = te.shape[0]
        n_tr, n_va = int(0.7 * n), int(0.1 * n)
        if n_tr < 1 or n_va < 1 or n - n_tr - n_va < 1:
            raise UserError(f"linear-probe preset 's' needs at least 10 test samples, got {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
        i_tr, i_va, i_te = perm[:n_tr], perm[n_tr : n_tr + n_va], perm[n_tr + n_va :]
        xtr, ytr = te[i_tr], yte[i_tr]
        xva, yva = te[i_va], yte[i_va]
        te, yte = te[i_te], yte[i_te]
        details["ignored"] = "train_x/train_y (paper S probes the official test split only)"
    else:
        if train_x is None or train_y is None:
            raise UserError(f"linear-probe preset {preset!r} needs train_x and train_y")
        xtr = as_matrix(train_x, "train_x").to(dev)
        ytr = as_labels(train_y, xtr.shape[0], "train_y", dev)
        if xtr.shape[1] != te.shape[1]:
            raise UserError(f"train_x has {xtr.shape[1]} features but test_x has {te.shape[1]}")
        xva = yva = None
        if (val_x is None) != (val_y is None):
            raise UserError("pass both val_x and val_y, or neither")
        if val_x is not None:
            xva = as_matrix(val_x, "val_x").to(dev)
            if xva.shape[1] != te.shape[1]:
                raise UserError(f"val_x has {xva.shape[1]} features but test_x has {te.shape[1]}")
            yva = as_labels(val_y, xva.shape[0], "val_y", dev)
    dtype = torch.promote_types(xtr.dtype, te.dtype)
    xtr, te = xtr.to(dtype), te.to(dtype)
    xva = None if xva is None else xva.to(dtype)
    top = max(int(ytr.max()), int(yte.max()), -1 if yva is None else int(yva.max())) + 1
    if num_classes is None:
        num_classes = top
    elif num_classes < top:
        raise UserError(f"num_classes={num_classes} but the labels go up to {top - 1}")
    if preset == "fast":
        mean, scale = _moments(xtr) if p["standardize"] else (None, None)
        design = Design(xtr, mean, scale)
        W, b, info = fit_lbfgs(design, ytr, num_classes, C=p["C"], max_iter=p["max_iter"],
                               tolerance_grad=p["tolerance_grad"])

        def predict(x):
            return design.logits(W, b, x).argmax(dim=1)
    else:
        if p["standardize"]:
            f = _standardizer(xtr)
            xtr, te = f(xtr), f(te)
            xva = None if xva is None else f(xva)
        optim = "adam" if preset == "g" else "sgd"
        lin, info = _fit_minibatch(xtr, ytr, num_classes, p, seed, optim,
                                   val=None if preset == "g" else (xva, yva))

        def predict(x):
            return _predict(lin, x)
    details.update(info)
    details["train_accuracy"] = _acc(predict(xtr), ytr)
    if xva is not None:
        details["val_accuracy"] = _acc(predict(xva), yva)
    pred = predict(te)
    return ProbeResult(accuracy=_acc(pred, yte), protocol=_protocol(preset, p, seed, dtype),
                       n_train=int(xtr.shape[0]), n_test=int(te.shape[0]), predictions=pred,
                       n_val=None if xva is None else int(xva.shape[0]), details=details)


def _protocol(preset: str, p: dict, seed: int, dtype: torch.dtype) -> dict:
    proto = {"name": "linear", "preset": preset, "seed": int(seed), "dtype": str(dtype), **p}
    if preset == "fast":
        proto.update(solver="lbfgs-strong-wolfe", objective="mean CE + 0.5/(C*N)*||W||^2")
    elif preset == "g":
        proto.update(optimizer="adam", selection="last epoch")
    else:
        proto.update(optimizer="sgd", scheduler="ReduceLROnPlateau(val loss)",
                     selection="best validation loss", source="test split only")
    return proto


#: a range/null-space coordinate whose spread is below this fraction of h's is
#: constant at float32 resolution and is left unscaled (as a zero deviation)
_SPLIT_STD_FLOOR = 1e-6


def _split_designs(x: torch.Tensor, Q: torch.Tensor, standardize: bool,
                   chunk: int = 4096) -> dict[str, Design]:
    """Designs for h, h_r = hQQᵀ and h_n = h − h_r over the stored h and hQ (never formed).

    Standardisation statistics of h_r and h_n come from float64 moments of h and
    hQ: var(h_r)_j = (Q Σ_Q Qᵀ)_jj, var(h_n)_j = var(h)_j − 2(Σ_hQ Qᵀ)_jj + var(h_r)_j,
    with Σ_Q = cov(hQ) and Σ_hQ = cov(h, hQ).
    """
    m = x.shape[1]
    hq = x @ Q

    def range_to(V):
        return V @ Q

    def range_from(G):
        return G @ Q.T

    def null(V):
        return V - (V @ Q) @ Q.T

    if not standardize:
        return {"h": Design(x), "h_r": Design(hq, to_data=range_to, from_data=range_from, dim=m),
                "h_n": Design(x, to_data=null, from_data=null)}
    n, r = x.shape[0], Q.shape[1]
    f64 = dict(dtype=torch.float64, device=x.device)
    mean = x.sum(dim=0, dtype=torch.float64) / n
    mean_q = hq.sum(dim=0, dtype=torch.float64) / n
    var_h, cov_hq, cov_q = torch.zeros(m, **f64), torch.zeros(m, r, **f64), torch.zeros(r, r, **f64)
    for s in range(0, n, chunk):
        c = x[s : s + chunk].to(torch.float64) - mean
        cq = hq[s : s + chunk].to(torch.float64) - mean_q
        var_h += c.square().sum(dim=0)
        cov_hq.addmm_(c.T, cq)
        cov_q.addmm_(cq.T, cq)
    Q64 = Q.to(torch.float64)
    var_h, cov_hq, cov_q = var_h / n, cov_hq / n, cov_q / n
    var_r = ((Q64 @ cov_q) * Q64).sum(dim=1)
    var_n = var_h - 2.0 * (cov_hq * Q64).sum(dim=1) + var_r
    std_h = var_h.sqrt()
    floor = _SPLIT_STD_FLOOR * std_h

    def scale(var):
        std = var.clamp_min(0).sqrt()
        return torch.where(std > floor, std, torch.ones_like(std)).to(x.dtype)

    mean_h, std_h_used = _moments(x)
    return {"h": Design(x, mean_h, std_h_used),
            "h_r": Design(hq, mean_q.to(x.dtype), scale(var_r), range_to, range_from, dim=m),
            "h_n": Design(x, mean.to(x.dtype), scale(var_n), null, null)}


def linear_probe_split(train_h: Any, train_y: Any, test_h: Any, test_y: Any, basis: Any, *,
                       preset: str = "fast", seed: int = 0, device: Any = None,
                       num_classes: int | None = None, **overrides: Any) -> dict[str, ProbeResult]:
    """Linear probes on h, h_r = A⁺A h and h_n = h − h_r (paper G eq. 4, Fig. 4).

    ``basis`` is Q (m×r, orthonormal, the head's row space) or a NullspaceResult /
    HeadSVD carrying it.  With the ``"fast"`` preset h_r and h_n are never
    formed: the probe on h_r streams the r-dimensional hQ and the probe on h_n
    streams h with weights projected by I − QQᵀ (same objective, same L-BFGS
    iterates as :func:`linear_probe` on the formed features, up to round-off),
    and the three L-BFGS runs go in lock-step so that each pass over h serves
    the probes on h and h_n together: the three cost about one probe on h.  Other presets form the
    features and call :func:`linear_probe`.  Keyword overrides as
    :func:`linear_probe`.  Returns {"h", "h_r", "h_n"}.
    """
    te = as_matrix(test_h, "test_h")
    Q = as_basis(basis, te.shape[1])
    if preset != "fast":
        Qd = Q.to(te.dtype)

        def parts(h):
            if h is None:
                return {"h": None, "h_r": None, "h_n": None}
            h = as_matrix(h, "train_h")
            hr = (h @ Qd.to(h.device, h.dtype)) @ Qd.to(h.device, h.dtype).T
            return {"h": h, "h_r": hr, "h_n": h - hr}

        tr_parts, te_parts = parts(train_h), parts(te)
        return {key: linear_probe(tr_parts[key], train_y, te_parts[key], test_y, preset=preset,
                                  seed=seed, device=device, num_classes=num_classes, **overrides)
                for key in ("h", "h_r", "h_n")}
    p = _settings(preset, overrides)
    dev = torch.device(device) if device is not None else te.device
    if train_h is None or train_y is None:
        raise UserError("linear-probe preset 'fast' needs train_h and train_y")
    xtr = as_matrix(train_h, "train_h").to(dev)
    if xtr.shape[1] != te.shape[1]:
        raise UserError(f"train_h has {xtr.shape[1]} features but test_h has {te.shape[1]}")
    dtype = torch.promote_types(xtr.dtype, te.dtype)
    xtr, te = xtr.to(dtype), te.to(device=dev, dtype=dtype)
    ytr = as_labels(train_y, xtr.shape[0], "train_y", dev)
    yte = as_labels(test_y, te.shape[0], "test_y", dev)
    top = max(int(ytr.max()), int(yte.max())) + 1
    if num_classes is None:
        num_classes = top
    elif num_classes < top:
        raise UserError(f"num_classes={num_classes} but the labels go up to {top - 1}")
    Q = Q.to(device=dev, dtype=dtype)
    designs = _split_designs(xtr, Q, p["standardize"])
    test_data = {"h": te, "h_r": te @ Q, "h_n": te}
    fits = fit_lbfgs_many(list(designs.values()), ytr, num_classes, C=p["C"],
                          max_iter=p["max_iter"], tolerance_grad=p["tolerance_grad"])
    out = {}
    for (key, design), (W, b, info) in zip(designs.items(), fits, strict=True):
        pred = design.logits(W, b, test_data[key]).argmax(dim=1)
        info["train_accuracy"] = _acc(design.logits(W, b).argmax(dim=1), ytr)
        proto = {**_protocol(preset, p, seed, dtype), "features": key, "head_rank": int(Q.shape[1])}
        out[key] = ProbeResult(accuracy=_acc(pred, yte), protocol=proto, n_train=int(xtr.shape[0]),
                               n_test=int(te.shape[0]), predictions=pred, details=info)
    return out
