"""A PyTorch Lightning callback: the head's diagnostics as training curves.

::

    from repdiag.lightning import HeadDiagnostics
    trainer = lightning.Trainer(callbacks=[HeadDiagnostics(every_n_epochs=5)])

Every ``every_n_epochs`` epochs and at the last epoch, at the end of the
training epoch, the callback runs :class:`repdiag.monitor.HeadMonitor` on
the LightningModule's backbone and head and logs its numbers through the
module's own ``self.log`` (so TensorBoard, CSV or W&B loggers draw them) as
``repdiag/rankme_h``, ``repdiag/rank_deficit``, ``repdiag/knn_h_n`` ...
(:data:`repdiag.monitor.METRIC_KEYS`). Values that are not defined (kNN on
h_n for a head without null space) are not logged.

Backbone and head are found by attribute name: the first of
``backbone_attrs`` and of ``head_attrs`` that the module has (defaults cover
lightly's examples, ``backbone`` / ``projection_head``, DINO's
``student_backbone`` / ``student_head``, and solo-learn's ``backbone`` /
``projector``).

Bank and queries: given as (images, labels) tensors, a Dataset or a
DataLoader; when both are omitted, the validation data are used (the
trainer's first validation DataLoader, batches (images, labels, ...), read
once at the first measurement): its first half is the kNN bank and its
second half the queries.

Distributed (DDP): only global rank 0 measures (on the unwrapped module,
whose eval-mode forward needs no collective) and logs with
``rank_zero_only=True``; the other ranks skip the call. The cost is one
process's, stated in :class:`repdiag.monitor.HeadMonitor` and measured in
``bench/README.md``. The model's training flags and the RNG streams are
left as they were, so a run with the callback trains exactly as one without.

Lightning is needed only here (``pip install repdiag[lightning]``);
``import repdiag`` does not import it.
"""

from __future__ import annotations

import os
from typing import Any

try:
    import lightning as L
except ImportError as e:  # pragma: no cover - only without the extra
    raise ImportError("repdiag.lightning needs PyTorch Lightning: pip install "
                      "'repdiag[lightning]' (or pip install lightning)") from e

from torch import nn

from repdiag.errors import UserError
from repdiag.monitor import METRIC_KEYS, HeadMonitor, finite_or_none

BACKBONE_ATTRS = ("backbone", "student_backbone", "online_backbone", "encoder")
HEAD_ATTRS = ("projection_head", "projector", "student_projection_head", "student_head",
              "online_projection_head", "head")


def find_module(module: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    """The first attribute of ``module`` among ``names`` that is an nn.Module; one-line error if none."""
    for name in names:
        found = getattr(module, name, None)
        if isinstance(found, nn.Module):
            return found
    have = sorted(n for n, _ in module.named_children())
    raise UserError(f"{type(module).__name__} has no {what} under any of {', '.join(names)} "
                    f"(its submodules: {', '.join(have) or 'none'}); pass "
                    f"{'backbone_attrs' if what == 'backbone' else 'head_attrs'}=(...)")


class HeadDiagnostics(L.Callback):
    """Log paper G's head diagnostics (RankMe, ranks, deficit, range energy, kNN on h, h_r, h_n, z).

    Arguments: ``bank``/``queries`` (see the module docstring; both or
    neither), ``every_n_epochs`` (default 1; the last epoch is always
    measured), ``backbone_attrs``/``head_attrs`` (attribute names to look
    for), ``jsonl`` (also append each line to this file), ``preset`` (kNN
    preset, default "g": k = 200, T = 0.5, cosine), ``prefix`` of the logged
    names, ``max_bank``/``max_queries`` (caps on the samples read).
    ``history`` holds every measured line (rank 0).
    """

    def __init__(self, bank: Any = None, queries: Any = None, *, every_n_epochs: int = 1,
                 backbone_attrs: tuple[str, ...] = BACKBONE_ATTRS,
                 head_attrs: tuple[str, ...] = HEAD_ATTRS, jsonl: str | os.PathLike | None = None,
                 preset: str | None = None, prefix: str = "repdiag/", batch_size: int = 512,
                 max_bank: int | None = 10000, max_queries: int | None = 2000):
        super().__init__()
        if (bank is None) != (queries is None):
            raise UserError("HeadDiagnostics takes both bank and queries, or neither (then the "
                            "validation data are split in two)")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) \
                or every_n_epochs < 1:
            raise UserError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.bank, self.queries = bank, queries
        self.every = every_n_epochs
        self.backbone_attrs, self.head_attrs = tuple(backbone_attrs), tuple(head_attrs)
        self.kw = dict(jsonl=jsonl, preset=preset, batch_size=batch_size, max_bank=max_bank,
                       max_queries=max_queries)
        self.prefix = prefix
        self.monitor: HeadMonitor | None = None
        self._modules: tuple[nn.Module, nn.Module] | None = None

    @property
    def history(self) -> list[dict]:
        return [] if self.monitor is None else self.monitor.history

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # the module is checked on every rank, so a wrong layout fails before the first epoch
        backbone = find_module(pl_module, self.backbone_attrs, "backbone")
        head = find_module(pl_module, self.head_attrs, "projection head")
        self._modules = (backbone, head)
        if self.bank is None:
            from lightning.pytorch.utilities.model_helpers import is_overridden

            if not is_overridden("validation_step", pl_module):
                raise UserError(f"HeadDiagnostics was given no bank and queries, and "
                                f"{type(pl_module).__name__} has no validation_step to take them "
                                "from: pass bank=(images, labels) and queries=(images, labels)")
        if trainer.global_rank == 0 and self.bank is not None:
            self.monitor = HeadMonitor(backbone, head, self.bank, self.queries, every=1, **self.kw)

    def _split_validation(self, trainer: L.Trainer):
        loaders = trainer.val_dataloaders  # set once the validation loop has run
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise UserError("HeadDiagnostics needs a bank and queries: pass bank=(images, labels) "
                            "and queries=(images, labels), or give the trainer validation data")
        from repdiag.monitor import _as_pair

        limit = None
        if self.kw["max_bank"] is not None and self.kw["max_queries"] is not None:
            limit = self.kw["max_bank"] + self.kw["max_queries"]
        x, y = _as_pair(loaders, "the validation data", limit)
        if len(x) < 2:
            raise UserError("the validation data hold fewer than 2 samples: too few for a bank "
                            "and queries")
        half = len(x) // 2
        return (x[:half], y[:half]), (x[half:], y[half:])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure (when due) and log; a line's ``epoch`` counts the epochs completed."""
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 \
            and epoch >= trainer.max_epochs
        if trainer.global_rank != 0 or not (epoch % self.every == 0 or last or trainer.should_stop):
            return
        if self.monitor is None:  # the validation data, read at the first measurement
            bank, queries = self._split_validation(trainer)
            self.monitor = HeadMonitor(*self._modules, bank, queries, every=1, **self.kw)
        line = self.monitor.step(epoch, force=True)
        for key in METRIC_KEYS:
            value = finite_or_none(line.get(key))
            if value is not None:
                pl_module.log(self.prefix + key, float(value), rank_zero_only=True,
                              on_step=False, on_epoch=True)
