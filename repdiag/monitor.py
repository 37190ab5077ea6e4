"""Diagnose the head while training: :class:`HeadMonitor` for any training loop.

Paper G §3's diagnostics on a fixed bank and query set, every few epochs::

    mon = repdiag.HeadMonitor(model.backbone, model.projection_head,
                              bank=(bank_images, bank_labels),
                              queries=(query_images, query_labels), jsonl="head.jsonl")
    for epoch in range(epochs):
        train_one_epoch(...)
        print(mon.step(epoch))     # a dict, also appended to head.jsonl

Each call extracts h = backbone(x) (flattened) and z = head(h) in eval mode
under ``torch.no_grad()``, then computes exactly what ``repdiag rank`` and
``repdiag nullspace`` report offline on the same features (the query set
plays the test split, the bank the probe's training set): numerical rank
and RankMe of H and Z, the rank deficit rank(H) − rank(Z) (G eq. 3), the
share of ‖h‖² in the range of the head's first linear map (G eq. 4), and
kNN accuracy on h, h_r, h_n and z (k = 200, cosine, vote exp(sim/T), preset
"g"). The model's training flags (every submodule's) and the torch RNG
streams (CPU and CUDA) are restored afterwards, so training continues
exactly as without the monitor.

Cost: two forward passes over bank + queries and one kNN; see
``bench/README.md`` for the measured seconds per call on CPU. With
``torch.distributed`` initialised, only rank 0 computes (the other ranks
return ``{}`` at once): the bank is not sharded, so the cost is that of one
process.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repdiag.errors import UserError, user_error
from repdiag.features import FeatureSet

#: keys of a monitor line, in order (besides epoch, n_bank, n_queries, seconds)
METRIC_KEYS = ("rankme_h", "rankme_z", "rank_h", "rank_z", "rank_deficit", "energy_range",
               "knn_h", "knn_h_r", "knn_h_n", "knn_z")


class _MemorySource:
    """The bank (train split) and queries (test split) as a source for :mod:`repdiag.diagnose`."""

    checkpoint = None

    def __init__(self, train: FeatureSet, test: FeatureSet):
        self._sets = {"train": train, "test": test}

    def get(self, split: str) -> FeatureSet:
        return self._sets[split]


def first_linear(head: nn.Module) -> nn.Linear | None:
    """The head's first ``nn.Linear`` in module order (the map A of paper G eq. 4), or None."""
    if hasattr(head, "first_linear"):
        return head.first_linear()
    return next((m for m in head.modules() if isinstance(m, nn.Linear)), None)


def head_metrics(bank: FeatureSet, queries: FeatureSet, *, preset: str | None = None) -> dict:
    """The monitor's numbers from features: ranks, deficit, range energy, kNN on h, h_r, h_n, z.

    ``bank`` is the kNN probe's training set, ``queries`` its test set and the
    set whose ranks are measured; both need h, z and labels, and ``weight``
    (the head's first linear map A, d×m) for h_r, h_n and the range energy.
    The values are those of :func:`repdiag.diagnose.rank_report` and
    :func:`repdiag.diagnose.nullspace_report` (or ``probe_report`` without
    A): rank = #{σ_i > σ_1·max(N, m)·eps}, RankMe = exp(−Σ p_k log p_k),
    p = σ/‖σ‖₁ (Garrido et al. 2023), deficit = rank(H) − rank(Z) (G eq. 3),
    energy_range = ‖H Q‖²_F / ‖H‖²_F with Q a basis of A's row space (G eq. 4).
    h_n's accuracy is None when A has full column rank (h_n ≡ 0).
    """
    from repdiag import diagnose

    src = _MemorySource(bank, queries)
    ranks = diagnose.rank_report(src, "test")
    if queries.weight is not None:
        probes = diagnose.nullspace_report(src, "knn", preset=preset)
        energy = probes["energy_range"]
    else:
        probes = diagnose.probe_report(src, "knn", ("h", "z"), preset=preset)
        energy = None
    acc = probes["accuracy"]
    return {"rankme_h": ranks["h"]["effective_rank"], "rankme_z": ranks["z"]["effective_rank"],
            "rank_h": ranks["h"]["rank"], "rank_z": ranks["z"]["rank"],
            "rank_deficit": ranks["rank_deficit"], "energy_range": energy,
            "knn_h": acc.get("h"), "knn_h_r": acc.get("h_r"), "knn_h_n": acc.get("h_n"),
            "knn_z": acc.get("z")}


def _as_pair(data: Any, what: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a tensor pair, a Dataset of (x, y, ...) or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__") and not \
            isinstance(data, torch.utils.data.IterableDataset):
        n = len(data) if limit is None else min(limit, len(data))
        items = [data[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(it[0]) for it in items]) if items else torch.empty(0)
        y = torch.as_tensor([int(it[1]) for it in items])
    elif isinstance(data, Iterable):
        xs, ys, n = [], [], 0
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise UserError(f"{what}: each batch must be (images, labels, ...), got "
                                f"{type(batch).__name__}")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
            n += len(xs[-1])
            if limit is not None and n >= limit:
                break
        if not xs:
            raise UserError(f"{what} is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise UserError(f"{what} must be (images, labels) tensors, a Dataset or a DataLoader; "
                        f"got {type(data).__name__}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) == 0:
        raise UserError(f"{what} is empty")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{what}: labels must have shape ({len(x)},), got {tuple(y.shape)}")
    if y.is_floating_point() or int(y.min()) < 0:
        raise UserError(f"{what}: labels must be class indices 0, 1, 2, ...")
    return x, y.long()


def _training_flags(*modules: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for mod in modules for m in mod.modules()]


@torch.no_grad()
def embed(backbone: nn.Module, head: nn.Module, images: torch.Tensor, *,
          batch_size: int = 512, device: torch.device | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """h = backbone(x).flatten(1) and z = head(h) in eval mode, batched, no grad, float32 on CPU.

    Every submodule's training flag and the torch RNG state (CPU and the
    current CUDA device) are as before when it returns.
    """
    dev = device or next((p.device for p in backbone.parameters()), torch.device("cpu"))
    flags = _training_flags(backbone, head)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            backbone.eval()
            head.eval()
            hs, zs = [], []
            for i in range(0, len(images), batch_size):
                h = backbone(images[i:i + batch_size].to(dev)).flatten(1)
                hs.append(h.float().cpu())
                zs.append(head(h).flatten(1).float().cpu())
    finally:
        for m, flag in flags:
            m.training = flag
    return torch.cat(hs), torch.cat(zs)


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class HeadMonitor:
    """Paper G's head diagnostics on a fixed bank and query set, for a plain training loop.

    ``bank`` and ``queries``: (images, labels) tensors, a map-style Dataset of
    (image, label, ...) items or a DataLoader of (images, labels, ...) batches,
    read once (at most ``max_bank`` / ``max_queries`` samples) and kept on the
    CPU; images go to the backbone as they are (apply the evaluation transform
    beforehand). ``step(epoch)`` returns one dict (keys :data:`METRIC_KEYS` plus
    epoch, n_bank, n_queries, seconds) and appends it as one JSON line to
    ``jsonl`` if given; ``history`` keeps every line. ``every`` skips epochs
    whose number is not a multiple of it (``force=True`` measures anyway).

    Bounded cost: one eval-mode forward of backbone and head over
    ``n_bank + n_queries`` images and one kNN of n_queries × n_bank; measured
    in ``bench/README.md`` (a 10,000-image bank on a 2-core CPU). Under
    ``torch.distributed`` only rank 0 computes; the others return ``{}``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, bank: Any, queries: Any, *,
                 jsonl: str | os.PathLike | None = None, every: int = 1,
                 preset: str | None = None, batch_size: int = 512,
                 max_bank: int | None = 10000, max_queries: int | None = 2000):
        if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module):
            raise UserError("HeadMonitor needs the backbone and the head as torch modules")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UserError(f"every must be a positive integer, got {every!r}")
        if batch_size < 1:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        from repdiag.diagnostics.knn import _resolve

        _resolve(preset, None, None, None)  # an unknown preset fails here, not at epoch 1
        self.backbone, self.head = backbone, head
        self.bank_x, self.bank_y = _as_pair(bank, "bank", max_bank)
        self.query_x, self.query_y = _as_pair(queries, "queries", max_queries)
        if self.bank_x.shape[1:] != self.query_x.shape[1:]:
            raise UserError(f"bank images have shape {tuple(self.bank_x.shape[1:])} but queries "
                            f"{tuple(self.query_x.shape[1:])}")
        self.jsonl = Path(jsonl) if jsonl is not None else None
        if self.jsonl is not None:
            try:
                self.jsonl.parent.mkdir(parents=True, exist_ok=True)
                self.jsonl.open("a").close()
            except OSError as e:
                raise user_error(f"cannot write {self.jsonl}", e) from None
        self.every, self.preset, self.batch_size = every, preset, batch_size
        self.history: list[dict] = []

    def features(self) -> tuple[FeatureSet, FeatureSet]:
        """Bank and query FeatureSets (h, z, y and the head's first linear map) of the model now."""
        if hasattr(self.head, "linear_map"):  # repdiag's heads: also DirectCLR's selection
            weight = self.head.linear_map()[0].detach().float().cpu().clone()
        else:
            lin = first_linear(self.head)
            weight = None if lin is None else lin.weight.detach().float().cpu().clone()
        out = []
        for x, y, split in ((self.bank_x, self.bank_y, "train"), (self.query_x, self.query_y, "test")):
            h, z = embed(self.backbone, self.head, x, batch_size=self.batch_size)
            for name, t in (("h", h), ("z", z)):
                if not bool(torch.isfinite(t).all()):
                    raise UserError(f"the model gives NaN or infinite {name} on the {split} set")
            out.append(FeatureSet(h=h, z=z, y=y, weight=weight, split=split))
        return out[0], out[1]

    def step(self, epoch: int, *, force: bool = False) -> dict:
        """Measure the model now (if ``epoch`` is due); returns the line, ``{}`` when skipped."""
        if not _is_rank_zero() or (not force and epoch % self.every != 0):
            return {}
        t0 = time.perf_counter()
        bank, queries = self.features()
        line = {"epoch": int(epoch), **head_metrics(bank, queries, preset=self.preset),
                "n_bank": len(bank), "n_queries": len(queries)}
        line["seconds"] = time.perf_counter() - t0
        self.history.append(line)
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(line) + "\n")
        return line


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The lines a :class:`HeadMonitor` wrote (a damaged line gives a one-line UserError)."""
    lines = []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise user_error(f"cannot read {path}", e) from None
    for i, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {i} is not JSON") from None
    return lines


def finite_or_none(v: float | None) -> float | None:
    """``v`` if it is a finite number, else None (for logging only defined values)."""
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None
