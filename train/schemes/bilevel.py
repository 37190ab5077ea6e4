"""Bilevel head/backbone updates (paper G §4, eq. 8)."""

from __future__ import annotations

import torch

from train.schemes.base import Scheme, frozen_stats

#: ``scheme.inner_optim``: the optimisers of the inner head steps
INNER_OPTIMIZERS = ("adam", "sgd")


class BilevelScheme(Scheme):
    """Paper G eq. 8: l inner head steps on the mini-batch, then one backbone step through g_{k+1}.

    Per mini-batch: **one** backbone forward of both views gives h. With h
    detached, the head alone takes ``scheme.inner_steps`` (l, default 5) steps
    on ``loss(g(h)) + lam * ||theta_g - theta_g^k||^2``. Then the loss through
    the updated head g_{k+1} is back-propagated from the non-detached h into
    the backbone (and SimSiam's predictor), which takes one step of the main
    optimizer; the head's parameters get no gradient from this outer pass and
    are not updated again. The cost over a joint step is the l small
    head-only forward/backward passes on the batch's features.

    Paper G gives no code: running the inner steps on detached features (no
    unrolled differentiation through the inner loop) is our reading of eq. 8,
    whose outer step is the gradient w.r.t. f at fixed g_{k+1}.

    Inner optimiser (``scheme.inner_optim``): by default Adam (G §5: "we use
    the Adam optimizer ... the same learning rate with five inner optimization
    steps"), lr ``scheme.inner_lr`` (default ``optim.lr``), betas (0.9, 0.999),
    eps 1e-8, no weight decay, with the proximal term applied in closed form
    in Adam's own metric: with d = sqrt(v_hat) + eps and the plain Adam step
    y = theta - lr m_hat / d on the loss gradient,
    ``theta <- theta_k + (y - theta_k) / (1 + 2 lr lam / d)`` (the minimiser of
    Adam's local quadratic model plus lam ||theta - theta_k||^2). With lam = 0
    this is exactly torch.optim.Adam; as lam -> inf the head stays at g_k
    (an explicit Adam step on the prox gradient would instead oscillate
    around g_k with an amplitude of about lr). The moment estimates persist
    across mini-batches (and are saved for resume), the "momentum based
    gradients" of G §4.1 over the truncated inner problems. ``inner_optim=sgd`` is momentum SGD
    (``scheme.inner_momentum``, 0.9) with the proximal term in closed form (a
    proximal-gradient step): with v = mu v + grad(loss),
    ``theta <- theta_k + (theta - lr v - theta_k) / (1 + 2 lr lam)``, which
    equals one explicit SGD step on the full objective to first order in
    lr*lam, is stable for any lam >= 0 and keeps the head at g_k as lam -> inf.
    At an Adam learning rate the SGD inner loop barely moves the head, which is
    why Adam is the default.

    BatchNorm in the head: the inner steps run in training mode (batch
    statistics) but leave the running statistics untouched; the outer forward
    through g_{k+1} updates them once per mini-batch, as a joint step does. So
    with l = 0 a step is exactly a joint step without the head update.

    Precision: the inner steps run in float32 (head on float32 copies of the
    detached features, no autocast) whatever ``precision`` is; the backbone
    forward and the outer pass through the head use the run's autocast, as a
    joint step does. With several processes the inner steps' head gradients
    are averaged over the ranks (the loss sees the global batch's negatives),
    so every rank takes the same inner steps and the head stays identical.
    """

    head_in_main_optimizer = False
    needs_head_parameters = True

    def __init__(self, cfg, backbone, head):
        super().__init__(cfg, backbone, head)
        s = cfg.scheme
        self.inner_steps = s.inner_steps
        self.lam = s.lam
        self.inner_lr = s.inner_lr if s.inner_lr is not None else cfg.optim.lr
        self.inner_optim = s.inner_optim
        self.inner_momentum = s.inner_momentum
        self.inner_params = [p for p in self.head_parameters() if p.requires_grad]
        self.momentum = [torch.zeros_like(p) for p in self.inner_params]
        # proximal Adam state: step count, first and second moment estimates
        self.adam_step = 0
        self.adam_m = [torch.zeros_like(p) for p in self.inner_params]
        self.adam_v = [torch.zeros_like(p) for p in self.inner_params]

    @torch.no_grad()
    def _adam_update(self, grads, anchor, betas=(0.9, 0.999), eps=1e-8) -> None:
        """One proximal Adam step on loss + lam ||theta - theta_k||^2 (gradients of the loss)."""
        b1, b2 = betas
        self.adam_step += 1
        c1, c2 = 1.0 - b1 ** self.adam_step, 1.0 - b2 ** self.adam_step
        for p, g, a, m, v in zip(self.inner_params, grads, anchor, self.adam_m, self.adam_v,
                                 strict=True):
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            d = (v / c2).sqrt_().add_(eps)
            y = p - self.inner_lr * (m / c1) / d
            p.copy_(a + (y - a) / (1.0 + 2.0 * self.inner_lr * self.lam / d))

    @torch.no_grad()
    def _sgd_update(self, grads, anchor) -> None:
        shrink = 1.0 / (1.0 + 2.0 * self.inner_lr * self.lam)
        for p, g, a, v in zip(self.inner_params, grads, anchor, self.momentum, strict=True):
            v.mul_(self.inner_momentum).add_(g)
            step = p - self.inner_lr * v - a
            p.copy_(a + step * shrink)

    def inner_loop(self, h_detached: torch.Tensor) -> None:
        """l steps of the head alone on detached features (g_k -> g_{k+1})."""
        if not self.inner_params or self.inner_steps == 0:
            return
        anchor = [p.detach().clone() for p in self.inner_params]
        h_detached = h_detached.float()
        with frozen_stats(self.head):
            for _ in range(self.inner_steps):
                loss = self.loss_from_h(h_detached, autocast=False)
                grads = self.world.average_(list(torch.autograd.grad(loss, self.inner_params)))
                if self.inner_optim == "adam":
                    self._adam_update(grads, anchor)
                else:
                    self._sgd_update(grads, anchor)

    def train_step(self, v1, v2):
        self.optimizer.zero_grad(set_to_none=True)
        h = self.features(torch.cat([v1, v2]))
        self.inner_loop(h.detach())
        loss = self.loss_from_h(h)
        loss.backward(inputs=self.main_params)
        self.world.average_grads_(self.synced_parameters())
        self.optimizer.step()
        return float(loss.detach())

    def extra_state(self):
        return {**super().extra_state(), "inner_momentum_buffers": list(self.momentum),
                "inner_adam": {"step": self.adam_step, "m": list(self.adam_m),
                               "v": list(self.adam_v)}}

    def load_extra(self, extra):
        super().load_extra(extra)
        adam = extra.get("inner_adam")
        if adam is not None:
            self.adam_step = int(adam["step"])
            with torch.no_grad():
                for mine, saved in zip(self.adam_m + self.adam_v, list(adam["m"]) + list(adam["v"]),
                                       strict=True):
                    mine.copy_(saved)
        bufs = extra.get("inner_momentum_buffers")
        if bufs is not None:
            with torch.no_grad():
                for v, b in zip(self.momentum, bufs, strict=True):
                    v.copy_(b)
