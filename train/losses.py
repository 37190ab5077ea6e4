"""Self-supervised losses: NT-Xent (SimCLR) and negative cosine (SimSiam)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent / InfoNCE loss of SimCLR, mean over the 2N anchors.

    Paper S eq. 2 (paper G eq. 2): for anchor i with positive j(i),
    ``l_i = -log( exp(s_ij / T) / sum_{k != i} exp(s_ik / T) )`` where ``s`` is
    the cosine similarity; the denominator holds the positive and the 2N-2
    negatives. Computed as a cross-entropy over logits whose diagonal is masked
    out, so no raw ``exp`` can overflow at low temperature.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two (N, d) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])
    return F.cross_entropy(logits, targets)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), mean over the batch (Chen & He, eq. 1)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor,
                 z2: torch.Tensor) -> torch.Tensor:
    """Symmetrised SimSiam loss: D(p1, z2)/2 + D(p2, z1)/2 with stop-gradient on z."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
