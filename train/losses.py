"""Self-supervised losses: NT-Xent (SimCLR) and negative cosine (SimSiam).

Every loss casts its inputs to float32 and runs with autocast off, so a bf16
forward (``precision=bf16``) never lowers the precision of NT-Xent's
log-sum-exp or of the cosine similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repdiag.precision import full_precision


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two (N, d) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent / InfoNCE loss of SimCLR, mean over the 2N anchors.

    Paper S eq. 2 (paper G eq. 2): for anchor i with positive j(i),
    ``l_i = -log( exp(s_ij / T) / sum_{k != i} exp(s_ik / T) )`` where ``s`` is
    the cosine similarity; the denominator holds the positive and the 2N-2
    negatives. Computed as a cross-entropy over logits whose diagonal is masked
    out, so no raw ``exp`` can overflow at low temperature; in float32 whatever
    the inputs' dtype.
    """
    _check_pair(z1, z2)
    n = z1.shape[0]
    with full_precision(z1.device):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = (z @ z.T) / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        idx = torch.arange(n, device=z.device)
        targets = torch.cat([idx + n, idx])
        return F.cross_entropy(logits, targets)


def nt_xent_sharded(z1: torch.Tensor, z2: torch.Tensor, temperature: float, world) -> torch.Tensor:
    """NT-Xent of this rank's anchors against the candidates of all ranks (DDP).

    ``z1``, ``z2`` (n, d) are this rank's slice ``[r n, (r+1) n)`` of the
    global batch of N = world_size * n pairs. Both are gathered from all
    ranks with their gradient (:func:`train.distributed.gather_with_grad`:
    the backward sums every rank's gradient of the gathered tensor and keeps
    the local slice), so each rank's anchors see all 2N - 2 negatives, exactly
    the denominator of paper G eq. 2 on the global batch. The value is the
    mean over the 2n local anchors; the mean of it over ranks is
    :func:`nt_xent` of the global batch, and with DDP's gradient averaging
    the gradient is that of the single-process loss on the global batch.
    """
    from train.distributed import gather_with_grad

    _check_pair(z1, z2)
    n, rank = z1.shape[0], world.rank
    with full_precision(z1.device):
        a1, a2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        cand = torch.cat([gather_with_grad(a1, world), gather_with_grad(a2, world)])
        big_n = cand.shape[0] // 2
        anchors = torch.cat([a1, a2])
        logits = (anchors @ cand.T) / temperature
        local = torch.arange(n, device=cand.device) + rank * n  # global indices of the pairs
        self_idx = torch.cat([local, local + big_n])
        self_mask = torch.zeros(logits.shape, dtype=torch.bool, device=cand.device)
        self_mask[torch.arange(2 * n, device=cand.device), self_idx] = True
        logits = logits.masked_fill(self_mask, float("-inf"))
        targets = torch.cat([local + big_n, local])
        return F.cross_entropy(logits, targets)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), mean over the batch (Chen & He, eq. 1); float32."""
    with full_precision(p.device):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor,
                 z2: torch.Tensor) -> torch.Tensor:
    """Symmetrised SimSiam loss: D(p1, z2)/2 + D(p2, z1)/2 with stop-gradient on z."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
