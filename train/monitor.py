"""Cheap training-time diagnostics on fixed subsets (kNN accuracy on validation)."""

from __future__ import annotations

import torch

from repdiag.augment import eval_transform
from repdiag.diagnostics import knn_probe


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
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(n, size)]


def knn_monitor(backbone, data, cfg, device) -> dict:
    """kNN (k=cfg.knn_k, T=cfg.temperature) accuracy of h on a validation subset.

    The memory bank is a fixed training subset; queries are a fixed validation
    subset. Nothing is selected on this number: it is logged only.
    """
    if len(data.val) == 0:
        return {}
    mean = std = (0.5, 0.5, 0.5) if cfg.augment.normalize else None
    tr = fixed_subset(len(data.train), cfg.knn_subset, cfg.seed + 1)
    va = fixed_subset(len(data.val), cfg.knn_subset, cfg.seed + 2)
    h_train = embed(backbone, data.train.images[tr], device, mean=mean, std=std)
    h_val = embed(backbone, data.val.images[va], device, mean=mean, std=std)
    res = knn_probe(h_train, data.train.labels[tr], h_val, data.val.labels[va],
                    k=cfg.knn_k, temperature=cfg.temperature, num_classes=data.num_classes)
    return {"knn_val": float(res.accuracy)}
