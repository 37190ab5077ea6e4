"""Linear probes on frozen features: a fast full-batch solver and the two papers' protocols."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from repdiag.diagnostics._common import ProbeResult, as_labels, as_matrix
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


def _standardizer(x: torch.Tensor):
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
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


def _fit_fast(x, y, C_classes, p):
    """Multinomial logistic regression, full batch, L-BFGS (strong Wolfe)."""
    n, m = x.shape
    W = torch.zeros(C_classes, m, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(C_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    lam = 1.0 / (p["C"] * n)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=p["max_iter"], history_size=20,
                            tolerance_grad=p["tolerance_grad"], tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(torch.addmm(b, x, W.T), y) + 0.5 * lam * W.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    loss = closure().detach()
    gmax = float(max(W.grad.abs().max(), b.grad.abs().max()))
    lin = torch.nn.utils.skip_init(torch.nn.Linear, m, C_classes, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    state = opt.state[W]
    info = {"n_iter": int(state.get("n_iter", 0)), "final_loss": float(loss),
            "max_abs_grad": gmax, "l2_lambda": lam,
            "stopped_before_max_iter": int(state.get("n_iter", 0)) < p["max_iter"]}
    return lin, info


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
    return lin, info


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
    if p["standardize"]:
        f = _standardizer(xtr)
        xtr, te = f(xtr), f(te)
        xva = None if xva is None else f(xva)
    if preset == "fast":
        lin, info = _fit_fast(xtr, ytr, num_classes, p)
    elif preset == "g":
        lin, info = _fit_minibatch(xtr, ytr, num_classes, p, seed, "adam")
    else:
        lin, info = _fit_minibatch(xtr, ytr, num_classes, p, seed, "sgd", val=(xva, yva))
    details.update(info)
    details["train_accuracy"] = _acc(_predict(lin, xtr), ytr)
    if xva is not None:
        details["val_accuracy"] = _acc(_predict(lin, xva), yva)
    pred = _predict(lin, te)
    proto = {"name": "linear", "preset": preset, "seed": int(seed), "dtype": str(dtype), **p}
    if preset == "fast":
        proto.update(solver="lbfgs-strong-wolfe", objective="mean CE + 0.5/(C*N)*||W||^2")
    elif preset == "g":
        proto.update(optimizer="adam", selection="last epoch")
    else:
        proto.update(optimizer="sgd", scheduler="ReduceLROnPlateau(val loss)",
                     selection="best validation loss", source="test split only")
    return ProbeResult(accuracy=_acc(pred, yte), protocol=proto, n_train=int(xtr.shape[0]),
                       n_test=int(te.shape[0]), predictions=pred,
                       n_val=None if xva is None else int(xva.shape[0]), details=details)
