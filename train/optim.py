"""The optimiser and learning-rate schedule a run's ``optim:`` section names.

Paper G: Adam, lr 1e-3, weight decay 1e-6, no schedule; paper S: SGD with
momentum and a cosine schedule. Schemes build their optimizers here (the main
one over backbone, head and the method's parameters, and the separate head
optimizers of the slow schemes); the trainer schedules the main one.
"""

from __future__ import annotations

import math

import torch

from train.settings import OptimConfig, TrainConfig

#: the optimizers ``optim.name`` can name (build_optimizer; the config validation asks here)
OPTIMIZERS = ("adam", "sgd")
#: ``optim.schedule``: ``none`` (constant lr) or ``cosine`` (per step, down to min_lr_ratio)
SCHEDULES = ("none", "cosine")


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (paper G: lr 1e-3, wd 1e-6) or SGD with momentum (paper S) over the parameters
    of ``params`` that require a gradient."""
    o = cfg.optim
    params = [p for p in params if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig, total_steps: int):
    """The per-step schedule of ``optimizer`` over ``total_steps`` steps, or None for ``none``.

    ``cosine``: lr_t = lr (r + (1 - r) (1 + cos(pi t / T)) / 2) with r = ``min_lr_ratio``,
    t the step (held at T beyond it) and T = ``total_steps``.
    """
    if o.schedule == "none":
        return None

    def cosine(step: int) -> float:
        t = min(step, total_steps) / max(1, total_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
