"""Slow head updates (paper G Table 2, "Slow-Single" and "Slow-Optimal")."""

from __future__ import annotations

import torch

from repdiag.augment import two_views
from repdiag.errors import UserError
from train.monitor import fixed_subset
from train.optim import build_optimizer
from train.schemes.base import Scheme, frozen_stats


class _HeadOptimizerState:
    """Keeps a slow scheme's separate head optimizer in the checkpoint for resume."""

    def extra_state(self):
        return {**super().extra_state(), "head_optimizer": self.head_optimizer.state_dict()}

    def load_extra(self, extra):
        super().load_extra(extra)
        if "head_optimizer" in extra:
            self.head_optimizer.load_state_dict(extra["head_optimizer"])


class SlowSingleScheme(_HeadOptimizerState, Scheme):
    """The backbone trains against a fixed head; the head takes one step per epoch.

    Every mini-batch, one backward pass gives gradients for backbone and head;
    the backbone (and SimSiam's predictor) is stepped by ``self.optimizer``,
    the head's gradients are only accumulated. At epoch end the head's
    optimizer (a separate ``cfg.optim`` optimizer, not scheduled) takes exactly
    one step with the accumulated gradient **averaged over the epoch's steps**.
    The head's BatchNorm running statistics (if any) are not updated during
    the epoch (it normalises with batch statistics). With several processes
    the accumulated head gradients are averaged over the ranks before the
    step (the average of sums is the sum of the per-step global gradients).
    """

    head_in_main_optimizer = False
    needs_head_parameters = True

    def __init__(self, cfg, backbone, head):
        super().__init__(cfg, backbone, head)
        self.head_optimizer = build_optimizer(self.head_parameters(), cfg)
        self.accumulated = 0

    def train_step(self, v1, v2):
        self.optimizer.zero_grad(set_to_none=True)
        with frozen_stats(self.head):
            loss = self.loss(v1, v2)
            loss.backward()  # head .grad accumulates: nothing zeroes it within the epoch
        self.world.average_grads_(self.synced_parameters())
        self.optimizer.step()
        self.accumulated += 1
        return float(loss.detach())

    @torch.no_grad()
    def on_epoch_end(self, trainer) -> None:
        if self.accumulated:
            self.world.average_grads_(self.head_parameters())
            for p in self.head_parameters():
                if p.grad is not None:
                    p.grad.div_(self.accumulated)
            self.head_optimizer.step()
        self.head_optimizer.zero_grad(set_to_none=True)
        self.accumulated = 0


class SlowOptimalScheme(_HeadOptimizerState, Scheme):
    """The backbone trains against a fixed head; at epoch end the head is optimised to convergence.

    At each epoch end, ``scheme.slow_subset`` training images (a fresh seeded
    draw per epoch) get two augmented views; their backbone features are
    computed once, backbone in eval mode, without gradients. Then the head
    alone takes full-pass steps with its own ``cfg.optim`` optimizer: one step
    is the gradient of the mean loss over the subset split into fixed chunks of
    ``batch_size`` pairs (so NT-Xent sees the training batch size's
    negatives). It stops when the relative change of that loss between steps
    is below ``scheme.slow_tol`` or after ``scheme.slow_max_steps`` steps.
    During the epoch the head is fixed (not in the optimizer, BN statistics
    untouched); during the epoch-end fit its BN layers are in training mode.
    The fit runs in float32 (no autocast). With several processes every rank
    runs the same fit on the same subset (the loss is not gathered) and the
    trainer then broadcasts rank 0's head.
    """

    head_in_main_optimizer = False
    freeze_head_stats = True
    needs_head_parameters = True

    @classmethod
    def check_config(cls, cfg) -> None:
        """Also refuses SimSiam (see the message)."""
        super().check_config(cfg)
        if cfg.method == "simsiam":
            raise UserError("scheme.kind=slow-optimal is not supported with method=simsiam: "
                            "optimising the head to convergence against SimSiam's stop-gradient "
                            "target with a frozen backbone admits the collapsed constant head")

    def __init__(self, cfg, backbone, head):
        super().__init__(cfg, backbone, head)
        self.head_optimizer = build_optimizer(self.head_parameters(), cfg)
        self.last_fit: dict = {}
        self._head_grad(False)

    def _head_grad(self, on: bool) -> None:
        for p in self.head_parameters():
            p.requires_grad_(on)

    @torch.no_grad()
    def subset_features(self, trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features (eval mode, no grad) of two augmented views of this epoch's subset."""
        images = trainer.data.train.images
        idx = fixed_subset(len(images), self.cfg.scheme.slow_subset,
                           self.cfg.seed * 7919 + 5 + trainer.epoch)
        gen = torch.Generator().manual_seed(
            (self.cfg.seed * 1_000_003 + 500_000 + trainer.epoch) % 2**64)
        was = self.backbone.training
        self.backbone.eval()
        h1, h2 = [], []
        bs = self.cfg.batch_size
        for i in range(0, len(idx), bs):
            x = images[idx[i:i + bs]].to(trainer.device)
            v1, v2 = two_views(x, trainer.aug, generator=gen)
            h1.append(self.backbone(v1))
            h2.append(self.backbone(v2))
        self.backbone.train(was)
        return torch.cat(h1), torch.cat(h2)

    def fit_head(self, h1: torch.Tensor, h2: torch.Tensor) -> dict:
        """Optimise the head on fixed features to the tolerance or the step cap."""
        s, bs, n = self.cfg.scheme, self.cfg.batch_size, len(h1)
        chunks = [(i, min(i + bs, n)) for i in range(0, n, bs)]
        chunks = [(a, b) for a, b in chunks if b - a >= 2] or [(0, n)]
        used = sum(b - a for a, b in chunks)
        was = self.head.training
        self.head.train()
        self._head_grad(True)
        prev, steps, value = None, 0, float("nan")
        try:
            while steps < s.slow_max_steps:
                steps += 1
                self.head_optimizer.zero_grad(set_to_none=True)
                value = 0.0
                for a, b in chunks:
                    part = self.method.loss(self.head(h1[a:b]), self.head(h2[a:b])) * (b - a) / used
                    part.backward()
                    value += float(part.detach())
                self.head_optimizer.step()
                if prev is not None and abs(value - prev) <= s.slow_tol * max(abs(prev), 1e-12):
                    break
                prev = value
        finally:
            self._head_grad(False)
            self.head_optimizer.zero_grad(set_to_none=True)
            self.head.train(was)
        return {"steps": steps, "loss": value}

    def on_epoch_end(self, trainer) -> None:
        if len(trainer.data.train) < 2:
            return
        h1, h2 = self.subset_features(trainer)
        with self.replicated():
            self.last_fit = self.fit_head(h1.float(), h2.float())
