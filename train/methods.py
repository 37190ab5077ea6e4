"""Methods: how the head outputs of the two views become a loss.

SimCLR's NT-Xent (:class:`SimCLRMethod`) or SimSiam's symmetric negative
cosine with a predictor MLP and stop-gradient (:class:`SimSiamMethod`).
Schemes (:mod:`train.schemes`) only ever call ``method.loss(z1, z2)``, so
every scheme works with every method unless the scheme's ``check_config``
refuses the pair. Registered under ``method`` in :data:`METHODS`.
"""

from __future__ import annotations

import torch
from torch import nn

from repdiag.errors import UserError
from train.distributed import SINGLE, World
from train.losses import nt_xent, nt_xent_sharded, simsiam_loss
from train.settings import TrainConfig


class SimCLRMethod:
    """NT-Xent with the run's temperature; no parameters of its own.

    With several processes (``self.world``) and ``self.sharded`` (each rank
    holds a slice of the global batch, as in a training step), the loss is
    :func:`~train.losses.nt_xent_sharded`: local anchors against the
    candidates of all ranks. Computations that every rank repeats on the
    same data (validation, the slow-optimal epoch-end fit) run with
    ``sharded`` off (:meth:`train.schemes.base.Scheme.replicated`).
    """

    world: World = SINGLE
    sharded: bool = True

    def __init__(self, cfg: TrainConfig, dim: int, device: torch.device):
        self.temperature = cfg.temperature

    def parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters: none."""
        return []

    def modules(self) -> list[nn.Module]:
        """The method's own modules: none."""
        return []

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """NT-Xent of the two views' head outputs (SimCLR eq. 1, temperature tau)."""
        if self.world.distributed and self.sharded:
            return nt_xent_sharded(z1, z2, self.temperature, self.world)
        return nt_xent(z1, z2, self.temperature)

    def state(self) -> dict:
        """What a resume needs: nothing."""
        return {}

    def load_state(self, state: dict) -> None:
        """SimCLR keeps nothing."""


def build_predictor(dim: int, hidden: int) -> nn.Sequential:
    """SimSiam's predictor h: Linear(d, d/4)-BN-ReLU-Linear(d/4, d) (Chen & He §3, bottleneck)."""
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class SimSiamMethod:
    """SimSiam (Chen & He 2021): predictor p = pred(z), loss D(p1, sg z2)/2 + D(p2, sg z1)/2.

    The predictor belongs to the method: it is trained with the backbone by the
    scheme's main optimizer (never by a head-only optimizer) and saved in the
    checkpoint's ``extra["predictor"]``. The loss lies in [-1, 1]. It is a mean of
    per-pair terms, so with several processes the mean of the ranks' losses is
    the global one and DDP's gradient averaging needs no gather.
    """

    world: World = SINGLE
    sharded: bool = True

    def __init__(self, cfg: TrainConfig, dim: int, device: torch.device):
        hidden = cfg.pred_hidden or max(1, dim // 4)
        self.predictor = build_predictor(dim, hidden).to(device)

    def parameters(self) -> list[nn.Parameter]:
        """The predictor's parameters (trained by the scheme's main optimizer)."""
        return list(self.predictor.parameters())

    def modules(self) -> list[nn.Module]:
        """The predictor (put in eval mode with the models, synced across ranks)."""
        return [self.predictor]

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """D(p1, sg z2)/2 + D(p2, sg z1)/2 with p = predictor(z) and D the negative cosine."""
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        return simsiam_loss(p1, p2, z1, z2)

    def state(self) -> dict:
        """The predictor's state dict (the checkpoint's ``extra["predictor"]``)."""
        return {"predictor": self.predictor.state_dict()}

    def load_state(self, state: dict) -> None:
        """Restore the predictor from a checkpoint's ``extra``."""
        if "predictor" not in state:
            raise UserError("checkpoint of a simsiam run has no predictor state (extra['predictor'])")
        self.predictor.load_state_dict(state["predictor"])


#: ``method`` -> its class: the one list of methods (the config validation asks here)
METHODS = {"simclr": SimCLRMethod, "simsiam": SimSiamMethod}


def build_method(cfg: TrainConfig, dim: int, device: torch.device) -> SimCLRMethod | SimSiamMethod:
    """The method ``cfg.method`` names, for head outputs of ``dim`` features on ``device``."""
    return METHODS[cfg.method](cfg, dim, device)
