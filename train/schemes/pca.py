"""PCA heads (paper G Table 2, "PCA top-k / bottom-k")."""

from __future__ import annotations

import torch

from repdiag.errors import UserError
from train.monitor import embed, fixed_subset
from train.schemes.base import Scheme, freeze


def principal_directions(h: torch.Tensor, k: int, top: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(k x m) orthonormal rows spanning the top (or bottom) k principal directions, and the mean.

    Eigen-decomposition of the covariance of ``h`` (n x m) in float64. Top rows
    are in decreasing variance, bottom rows in increasing variance. With fewer
    samples than dimensions the bottom directions lie in the (non-unique) null
    space of the centred data.
    """
    h = h.double()
    mean = h.mean(0)
    hc = h - mean
    cov = hc.T @ hc / max(1, len(h) - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    rows = vecs[:, -k:].flip(1).T if top else vecs[:, :k].T
    return rows.contiguous(), mean


class PCAScheme(Scheme):
    """A fixed linear head whose rows are the top/bottom k principal directions of H.

    k = head.out_dim. H is the backbone's features, in eval mode and without
    augmentation, of a fixed training subset of ``scheme.pca_subset`` images
    (seeded by the run's seed). The head is fitted once from the initial
    backbone before the first epoch and refitted at every epoch end; within an
    epoch it is fixed (not in the optimizer). If the head has a bias it is set
    to -W mean(H), so z = W (h - mean(H)) is the PCA projection of centred h.
    """

    head_in_main_optimizer = False
    freeze_head_stats = True
    top = True

    def __init__(self, cfg, backbone, head):
        spec = head.spec
        if spec.kind != "linear":
            raise UserError(f"scheme.kind={cfg.scheme.kind} needs head.kind=linear")
        if spec.out_dim > spec.in_dim:
            raise UserError(f"scheme.kind={cfg.scheme.kind}: head.out_dim={spec.out_dim} principal "
                            f"directions do not exist in {spec.in_dim}-dim features; lower it")
        freeze(head)
        super().__init__(cfg, backbone, head)
        self.linear = head.first_linear()

    def subset_indices(self, n: int) -> torch.Tensor:
        return fixed_subset(n, self.cfg.scheme.pca_subset, self.cfg.seed + 3)

    def subset_features(self, trainer) -> torch.Tensor:
        """H on the PCA subset: eval mode, no augmentation (float32, CPU)."""
        images = trainer.data.train.images
        mean = std = (0.5, 0.5, 0.5) if self.cfg.augment.normalize else None
        return embed(self.backbone, images[self.subset_indices(len(images))], trainer.device,
                     mean=mean, std=std)

    @torch.no_grad()
    def refit(self, trainer) -> None:
        rows, mean = principal_directions(self.subset_features(trainer), self.linear.out_features,
                                          self.top)
        w = self.linear.weight
        w.copy_(rows.to(w))
        if self.linear.bias is not None:
            self.linear.bias.copy_((-(rows @ mean)).to(w))

    def on_train_start(self, trainer) -> None:
        self.refit(trainer)

    def on_epoch_end(self, trainer) -> None:
        self.refit(trainer)


class PCATopScheme(PCAScheme):
    top = True


class PCABottomScheme(PCAScheme):
    top = False
