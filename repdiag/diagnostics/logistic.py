"""Full-batch multinomial logistic regression by L-BFGS on an implicit design matrix.

The "fast" linear probe minimises scikit-learn's objective

    L(W, b) = mean_i CE(softmax(W x̃_i + b), y_i) + ½·λ‖W‖²,   λ = 1/(C·N),

over standardised features x̃ = D⁻¹ M (x − μ).  The features are never formed:
a :class:`Design` holds the stored data (N×k) and the linear map M (m×k) that
turns a stored row into a feature row, so a probe on h_r = QQᵀh runs on the
r-dimensional hQ and a probe on h_n = (I − QQᵀ)h on h itself (paper G eq. 4),
with the same objective and the same L-BFGS iterates as on the formed features.
Each objective evaluation streams the data once, in row chunks small enough
that the second product (the gradient) reads the chunk from cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

#: elements of one row chunk of the data (8 MB in float32: stays in the L3 cache
#: between the logits product and the gradient product; 10% faster than unchunked)
CHUNK_ELEMENTS = 2**21



def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


@dataclasses.dataclass
class Design:
    """Feature rows x̃_i = D⁻¹ M (d_i − μ) given by stored rows d_i (N×k) and a map M.

    ``to_data(V)`` returns V M (C×m → C×k) and ``from_data(G)`` returns G Mᵀ
    (C×k → C×m); identity when the data are the features.  ``mean`` (k, of
    the data) and ``scale`` (m, feature standard deviations) are None for raw
    features.
    """

    data: torch.Tensor
    mean: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    to_data: Callable[[torch.Tensor], torch.Tensor] = _identity
    from_data: Callable[[torch.Tensor], torch.Tensor] = _identity
    dim: int | None = None

    @property
    def n_features(self) -> int:
        return self.data.shape[1] if self.dim is None else self.dim

    def affine(self, W: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Vd, c) with logits = d Vdᵀ + c for stored rows d: Vd = (W D⁻¹) M, c = b − Vd μ."""
        V = W if self.scale is None else W / self.scale
        Vd = self.to_data(V)
        c = b if self.mean is None else b - Vd @ self.mean
        return Vd, c

    def logits(self, W: torch.Tensor, b: torch.Tensor, data: torch.Tensor | None = None):
        """Logits of ``data`` (default: the design's own rows), chunked."""
        Vd, c = self.affine(W, b)
        x = self.data if data is None else data
        cs = max(1, CHUNK_ELEMENTS // max(1, x.shape[1]))
        return torch.cat([torch.addmm(c, x[s : s + cs], Vd.T) for s in range(0, x.shape[0], cs)])


def loss_and_grad(design: Design, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                  lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L(W, b) and its gradients in one pass over the data (module docstring objective).

    Per chunk: logits = d Vdᵀ + c, g = (softmax − onehot)/N, then Gd += gᵀ d while
    the chunk is still in cache; finally ∂L/∂W = (Gd − (Σg) μᵀ) Mᵀ D⁻¹ + λW and
    ∂L/∂b = Σg.  The loss is accumulated in float64.
    """
    x = design.data
    n = x.shape[0]
    Vd, c = design.affine(W, b)
    g_data = torch.zeros_like(Vd)
    g_sum = torch.zeros_like(b)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    cs = max(1, CHUNK_ELEMENTS // max(1, x.shape[1]))
    for s in range(0, n, cs):
        xc, yc = x[s : s + cs], y[s : s + cs]
        logits = torch.addmm(c, xc, Vd.T)
        lse = torch.logsumexp(logits, dim=1)
        loss += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum(dtype=torch.float64)
        g = torch.exp_(logits.sub_(lse[:, None]))
        g[torch.arange(g.shape[0], device=g.device), yc] -= 1.0
        g_data.addmm_(g.T, xc)
        g_sum += g.sum(dim=0)
    g_data /= n
    g_sum /= n
    if design.mean is not None:
        g_data -= torch.outer(g_sum, design.mean)
    gW = design.from_data(g_data)
    if design.scale is not None:
        gW = gW / design.scale
    gW = gW + lam * W
    total = loss / n + 0.5 * lam * W.double().square().sum()
    return total, gW, g_sum


def fit_lbfgs(design: Design, y: torch.Tensor, num_classes: int, *, C: float, max_iter: int,
              tolerance_grad: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Minimise L(W, b) from W = 0, b = 0 by full-batch L-BFGS (strong Wolfe line search).

    Stops when the gradient's ∞-norm ≤ ``tolerance_grad`` or after ``max_iter``
    iterations (scikit-learn's lbfgs rule).  Returns (W, b, info).
    """
    x = design.data
    n = x.shape[0]
    W = torch.zeros(num_classes, design.n_features, dtype=x.dtype, device=x.device)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    lam = 1.0 / (C * n)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=tolerance_grad, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        loss, W.grad, b.grad = loss_and_grad(design, y, W, b, lam)
        return loss.to(x.dtype)

    opt.step(closure)
    loss, gW, gb = loss_and_grad(design, y, W, b, lam)
    n_iter = int(opt.state[W].get("n_iter", 0))
    info = {"n_iter": n_iter, "final_loss": float(loss),
            "max_abs_grad": float(max(gW.abs().max(), gb.abs().max())), "l2_lambda": lam,
            "stopped_before_max_iter": n_iter < max_iter}
    return W, b, info
