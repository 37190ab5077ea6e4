"""Head-update schemes: how the backbone f and the head g are stepped.

A scheme owns the optimizer (``self.optimizer``, the one the trainer schedules
and checkpoints) and implements ``train_step(v1, v2) -> loss`` for one
mini-batch of two views, ``on_train_start(trainer)`` before the first epoch of
a fresh run, and ``on_epoch_end(trainer)`` for schemes that update the head
between epochs. ``extra_state``/``load_extra`` carry whatever a scheme (or the
method, e.g. SimSiam's predictor) must keep across a resume (plain types and
tensors only). Each scheme checks its part of a config in the classmethod
``check_config(cfg)``, which the config validation calls before any work.
Registered under ``scheme.kind`` in :data:`SCHEMES`:

- ``joint``: standard backprop through head and backbone (:class:`JointScheme`);
- ``fixed``: the head is never updated (:class:`FixedScheme`);
- ``pca-top`` / ``pca-bottom``: linear head = top/bottom principal directions
  of H, refitted at each epoch end (:mod:`train.schemes.pca`); an ``mlp`` head
  becomes the linear one (:meth:`PCAScheme.check_config`);
- ``slow-single`` / ``slow-optimal``: :mod:`train.schemes.slow`;
- ``bilevel``: paper G eq. 8 (:mod:`train.schemes.bilevel`).
"""

from __future__ import annotations

from torch import nn

from train.schemes.base import Scheme, frozen_stats
from train.schemes.bilevel import BilevelScheme
from train.schemes.pca import PCABottomScheme, PCATopScheme, principal_directions
from train.schemes.simple import FixedScheme, JointScheme
from train.schemes.slow import SlowOptimalScheme, SlowSingleScheme
from train.settings import TrainConfig

#: ``scheme.kind`` -> its class: the one list of schemes (the config validation asks here)
SCHEMES = {
    "joint": JointScheme,
    "fixed": FixedScheme,
    "pca-top": PCATopScheme,
    "pca-bottom": PCABottomScheme,
    "slow-single": SlowSingleScheme,
    "slow-optimal": SlowOptimalScheme,
    "bilevel": BilevelScheme,
}


def build_scheme(cfg: TrainConfig, backbone: nn.Module, head: nn.Module) -> Scheme:
    """The scheme object for ``cfg.scheme.kind`` (models already on their device)."""
    return SCHEMES[cfg.scheme.kind](cfg, backbone, head)


__all__ = [
    "SCHEMES", "BilevelScheme", "FixedScheme", "JointScheme", "PCABottomScheme", "PCATopScheme",
    "Scheme", "SlowOptimalScheme", "SlowSingleScheme", "build_scheme", "frozen_stats",
    "principal_directions",
]
