"""Head-update schemes: how the backbone f and the head g are stepped.

A scheme owns the optimizer and implements ``train_step(v1, v2) -> loss`` for
one mini-batch of two views, plus ``on_epoch_end(trainer)`` for schemes that
update the head between epochs. ``extra_state``/``load_extra`` carry whatever
a scheme must keep across a resume (plain types and tensors only).
"""

from __future__ import annotations

import torch
from torch import nn

from train.config import TrainConfig
from train.losses import nt_xent


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (paper G: lr 1e-3, wd 1e-6) or SGD with momentum (paper S)."""
    o = cfg.optim
    params = [p for p in params if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


class JointScheme:
    """Standard SimCLR: one backward pass through head and backbone together."""

    def __init__(self, cfg: TrainConfig, backbone: nn.Module, head: nn.Module):
        self.cfg = cfg
        self.backbone = backbone
        self.head = head
        self.optimizer = build_optimizer(
            list(backbone.parameters()) + list(head.parameters()), cfg)

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """NT-Xent on both views, passed through the backbone as one batch."""
        z = self.head(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.cfg.temperature)

    def train_step(self, v1: torch.Tensor, v2: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(v1, v2)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def on_epoch_end(self, trainer) -> None:
        """Joint training does nothing between epochs."""

    def extra_state(self) -> dict:
        return {}

    def load_extra(self, extra: dict) -> None:
        """Joint training keeps no state beyond the optimizer's."""


SCHEMES = {"joint": JointScheme}


def build_scheme(cfg: TrainConfig, backbone: nn.Module, head: nn.Module):
    """The scheme object for ``cfg.scheme.kind``."""
    return SCHEMES[cfg.scheme.kind](cfg, backbone, head)
