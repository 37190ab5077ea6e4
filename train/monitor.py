"""Cheap training-time diagnostics on fixed subsets: kNN accuracy and RankMe of H and Z.

Logged each epoch so a user sees collapse as it happens; nothing is selected
on these numbers.
"""

from __future__ import annotations

import torch

from repdiag.augment import eval_transform
from repdiag.diagnostics import knn_probe, rank


@torch.no_grad()
def embed(backbone: torch.nn.Module, images: torch.Tensor, device: torch.device,
          batch_size: int = 512, mean=None, std=None) -> torch.Tensor:
    """Backbone features h of uint8 images, eval mode, batched, no augmentation."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = eval_transform(images[i:i + batch_size].to(device), mean=mean, std=std)
        out.append(backbone(x).float().cpu())
    backbone.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def fixed_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """A seeded random subset of ``range(n)`` of at most ``size`` indices."""
    gen = torch.Generator().manual_seed(seed % 2**64)  # derived seeds may pass 2^64
    return torch.randperm(n, generator=gen)[: min(n, size)]


def epoch_monitor(backbone, head, data, cfg, device, mean=None, std=None) -> dict:
    """kNN accuracy of h and RankMe of H and Z on fixed subsets.

    kNN: k=cfg.knn_k, T=cfg.temperature; the memory bank is a fixed training
    subset, the queries a fixed validation subset. RankMe (Garrido et al. 2023,
    entropy of the normalised singular values) of H and of Z = g(H) on the
    query subset: a drop signals dimensional collapse.

    A run without a validation split (paper G trains on the whole training
    split) is monitored on a test subset instead; that number is logged as
    ``knn_test`` and nothing (checkpoint, schedule, sweep) is selected on it.
    Features that are NaN or inf (a diverged model) raise FloatingPointError.
    """
    queries, key = (data.val, "knn_val") if len(data.val) > 0 else (data.test, "knn_test")
    if len(queries) == 0:
        return {}
    tr = fixed_subset(len(data.train), cfg.knn_subset, cfg.seed + 1)
    va = fixed_subset(len(queries), cfg.knn_subset, cfg.seed + 2)
    h_train = embed(backbone, data.train.images[tr], device, mean=mean, std=std)
    h_val = embed(backbone, queries.images[va], device, mean=mean, std=std)
    if not (torch.isfinite(h_train).all() and torch.isfinite(h_val).all()):
        raise FloatingPointError("the backbone's features became NaN or inf")
    res = knn_probe(h_train, data.train.labels[tr], h_val, queries.labels[va],
                    k=cfg.knn_k, temperature=cfg.temperature, num_classes=data.num_classes)
    was_training = head.training
    head.eval()
    with torch.no_grad():
        z_val = head(h_val.to(device)).float().cpu()
    head.train(was_training)
    return {key: float(res.accuracy),
            "rankme_h": float(rank(h_val, centred=False).effective_rank),
            "rankme_z": float(rank(z_val, centred=False).effective_rank)}
