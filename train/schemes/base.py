"""The scheme base class: what every head-update scheme shares.

A *scheme* decides how the backbone f and the head g are stepped; the
*method* (:mod:`train.methods`) turns the head outputs of the two views into
a loss. Schemes only ever call ``self.method.loss(z1, z2)``, so every scheme
works with every method unless its :meth:`Scheme.check_config` refuses the
pair. Each scheme checks its own part of a config there, before any work.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from repdiag.errors import UserError
from repdiag.precision import autocast, resolve_precision
from train.distributed import SINGLE, World
from train.methods import build_method
from train.optim import build_optimizer
from train.settings import TrainConfig


def module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def frozen_stats(module: nn.Module):
    """Run ``module`` (in whatever mode it is) without changing its buffers.

    A head held fixed by a scheme still normalises with batch statistics in
    training mode, but its BatchNorm running statistics (and batch counters)
    are restored afterwards, so its whole state dict stays bitwise unchanged.
    """
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, c in saved:
                b.copy_(c)


def head_output_dim(head: nn.Module) -> int:
    spec = getattr(head, "spec", None)
    if spec is None:
        raise TypeError("a scheme's head must carry a HeadSpec as .spec (repdiag.models.Head)")
    return spec.output_dim


# --------------------------------------------------------------------- base scheme
class Scheme:
    """Base class: one optimizer (``self.optimizer``) over the backbone, the method's
    parameters and, if ``head_in_main_optimizer``, the head.

    Interface used by the trainer: ``train_step(v1, v2) -> float``,
    ``on_train_start(trainer)`` (before the first epoch of a fresh run),
    ``on_epoch_end(trainer)``, ``extra_state()`` / ``load_extra(extra)``.

    Precision (``cfg.precision``, resolved for the backbone's device): the
    backbone and head forwards run under bf16 autocast when it resolves to
    bf16; the head outputs are cast to float32 before the method's loss, which
    itself runs in float32. ``backbone_forward`` is what training forwards
    call: the backbone itself, or its DDP wrapper / compiled form
    (:meth:`distribute`); state dicts always come from ``self.backbone``.
    """

    head_in_main_optimizer = True
    # a head fixed within the step: its BN running statistics are restored after the step
    freeze_head_stats = False
    # the scheme moves the head's weights itself (slow-*, bilevel): a head without parameters
    # (none, directclr) leaves it nothing to do and is refused by check_config
    needs_head_parameters = False

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        """Refuse, in one line and before any work, a config this scheme cannot train.

        Called by the config validation (``train.config.validate``) for the scheme
        ``cfg.scheme.kind`` names. The base rule: a scheme that updates the head
        itself needs a head with parameters. Subclasses add their own rules.
        """
        if cls.needs_head_parameters and not cfg.head.has_parameters:
            raise UserError(f"scheme.kind={cfg.scheme.kind} updates the head, but "
                            f"head.kind={cfg.head.kind} has no parameters; use "
                            "scheme.kind=fixed or a linear/mlp head")

    def __init__(self, cfg: TrainConfig, backbone: nn.Module, head: nn.Module):
        self.cfg = cfg
        self.backbone = backbone
        self.head = head
        self.device = module_device(backbone)
        self.method = build_method(cfg, head_output_dim(head), self.device)
        self.main_params = [p for p in self.main_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.main_params, cfg)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.world = SINGLE
        self.backbone_forward: nn.Module = backbone

    def distribute(self, world: World, backbone_forward: nn.Module | None = None) -> None:
        """Train as one of ``world``'s ranks; ``backbone_forward`` is the DDP-wrapped backbone."""
        self.world = world
        self.method.world = world
        if backbone_forward is not None:
            self.backbone_forward = backbone_forward

    def synced_parameters(self) -> list[nn.Parameter]:
        """Parameters stepped every step whose gradients DDP does not average (head, predictor)."""
        params = list(self.method.parameters())
        if self.head_in_main_optimizer:
            params += list(self.head.parameters())
        return [p for p in params if p.requires_grad]

    @contextlib.contextmanager
    def replicated(self):
        """Every rank computes the same thing on the same data: no cross-rank gather in the loss."""
        before = self.method.sharded
        self.method.sharded = False
        try:
            yield
        finally:
            self.method.sharded = before

    def autocast(self):
        """bf16 autocast for the backbone/head forwards when the run's precision is bf16."""
        return autocast(self.precision, self.device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of a training batch (``backbone_forward``, under the run's autocast)."""
        with self.autocast():
            return self.backbone_forward(x)

    def main_parameters(self) -> list[nn.Parameter]:
        params = list(self.backbone.parameters()) + self.method.parameters()
        if self.head_in_main_optimizer:
            params += list(self.head.parameters())
        return params

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def loss_from_h(self, h: torch.Tensor, *, autocast: bool = True) -> torch.Tensor:
        """The method's loss of backbone features h = f(cat(v1, v2)) through the head.

        The head runs under the run's autocast (``autocast=False``: in float32,
        on float32 features, as the bilevel inner steps do); its outputs are
        cast to float32 before the loss.
        """
        if autocast:
            with self.autocast():
                z = self.head(h)
        else:
            z = self.head(h.float())
        z1, z2 = z.float().chunk(2)
        return self.method.loss(z1, z2)

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """Both views through the backbone as one batch, then head and method loss."""
        return self.loss_from_h(self.features(torch.cat([v1, v2])))

    def train_step(self, v1: torch.Tensor, v2: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        # buffers are restored only after backward (BN saves them for its backward)
        with frozen_stats(self.head) if self.freeze_head_stats else contextlib.nullcontext():
            loss = self.loss(v1, v2)
            loss.backward()
        self.world.average_grads_(self.synced_parameters())
        self.optimizer.step()
        return float(loss.detach())

    @contextlib.contextmanager
    def evaluating(self):
        """Backbone, head and the method's modules in eval mode without gradients (restored after).

        Every rank evaluates the same data, so the loss is not gathered across ranks.
        """
        modules = [self.backbone, self.head, *self.method.modules()]
        modes = [m.training for m in modules]
        try:
            for m in modules:
                m.eval()
            with torch.no_grad(), self.replicated():
                yield
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    def on_train_start(self, trainer) -> None:
        """Called once before the first epoch of a fresh run (not on resume)."""

    def on_epoch_end(self, trainer) -> None:
        """Called after each epoch's steps, before the checkpoint is written."""

    def epoch_metrics(self) -> dict:
        """Numbers of the scheme's own to log with the epoch (e.g. the PCA eigenvalues)."""
        return {}

    def extra_state(self) -> dict:
        return dict(self.method.state())

    def load_extra(self, extra: dict) -> None:
        self.method.load_state(extra)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
