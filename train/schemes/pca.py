"""PCA heads (paper G Table 2, "PCA top-k / bottom-k")."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from repdiag.errors import UserError
from train.monitor import embed, fixed_subset
from train.schemes.base import Scheme, freeze


class PrincipalDirections(NamedTuple):
    """k principal directions of H: orthonormal rows (k x m), the mean of H, the k chosen
    covariance eigenvalues (in the rows' order) and the largest eigenvalue of all."""

    rows: torch.Tensor
    mean: torch.Tensor
    eigenvalues: torch.Tensor
    largest: float


def principal_directions(h: torch.Tensor, k: int, top: bool) -> PrincipalDirections:
    """The top (or bottom) k principal directions of ``h`` (n x m).

    Eigen-decomposition of the covariance of ``h`` in float64. Top rows are in
    decreasing variance, bottom rows in increasing variance. With fewer
    samples than dimensions the bottom directions lie in the (non-unique) null
    space of the centred data: see :func:`zero_eigenvalue_cutoff`. Always
    float64, whatever the run's ``precision``.
    """
    h = h.double()
    mean = h.mean(0)
    hc = h - mean
    cov = hc.T @ hc / max(1, len(h) - 1)
    vals, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    if top:
        rows, chosen = vecs[:, -k:].flip(1).T, vals[-k:].flip(0)
    else:
        rows, chosen = vecs[:, :k].T, vals[:k]
    return PrincipalDirections(rows.contiguous(), mean, chosen.clone(), float(vals[-1]))


def zero_eigenvalue_cutoff(largest: float, n: int, m: int,
                           eps: float = torch.finfo(torch.float32).eps) -> float:
    """The covariance eigenvalue below which a direction carries no variance the data can resolve.

    The rank rule of ``torch.linalg.matrix_rank`` on the centred float32 data
    (singular value σ_i counts if σ_i > σ_1·max(n, m)·eps) expressed for the
    covariance eigenvalues λ_i = σ_i²/(n−1): λ_i ≤ λ_1·(max(n, m)·eps)².
    """
    return max(largest, 0.0) * (max(n, m) * eps) ** 2


class PCAWarning(UserWarning):
    """The PCA head was fitted on numerically zero eigenvalues."""


class PCAScheme(Scheme):
    """A fixed linear head whose rows are the top/bottom k principal directions of H.

    k = head.out_dim. H is the backbone's features, in eval mode and without
    augmentation but with the run's input normalisation (exactly the inputs
    the backbone trains on), of a fixed training subset of
    ``scheme.pca_subset`` images (seeded by the run's seed; None, the default,
    takes the whole training split). The head is fitted once from the initial
    backbone before the first epoch and refitted at every epoch end; within an
    epoch it is fixed (not in the optimizer). If the head has a bias it is set
    to -W mean(H), so z = W (h - mean(H)) is the PCA projection of centred h.

    The chosen eigenvalues are kept (``self.eigenvalues``, the checkpoint's
    ``extra["pca_eigenvalues"]``, summarised in metrics.jsonl). When some of
    them are numerically zero (:func:`zero_eigenvalue_cutoff`: with fewer
    samples than features, or a rank-deficient H as in paper G Fig. 2c) the
    corresponding directions are an arbitrary basis of a zero-variance
    eigenspace, and a warning says so.

    H is computed in float32 without autocast whatever the run's
    ``precision``. With several processes every rank refits on the same
    subset and the trainer then broadcasts rank 0's head, so the heads are
    identical even if two GPUs' eigensolvers disagree in the last bit.
    """

    head_in_main_optimizer = False
    freeze_head_stats = True
    top = True

    @classmethod
    def check_config(cls, cfg) -> None:
        """The PCA schemes define the head: a linear map onto k = ``head.out_dim`` principal
        directions of H (paper G §5.2). The stated rule (docs/training.md): an ``mlp`` head,
        the presets' default, becomes that linear head and is recorded as such in the run's
        config; any other kind but ``linear`` is refused."""
        super().check_config(cfg)
        if cfg.head.kind == "mlp":
            cfg.head.kind = "linear"
        cls.check_head_kind(cfg.head.kind, cfg.scheme.kind)

    @staticmethod
    def check_head_kind(head_kind: str, scheme_kind: str) -> None:
        """Refuse a head other than the linear one the PCA scheme fits."""
        if head_kind != "linear":
            raise UserError(f"scheme.kind={scheme_kind} needs head.kind=linear (got '{head_kind}'): "
                            "the PCA scheme replaces the head by the linear map onto principal "
                            "directions")

    def __init__(self, cfg, backbone, head):
        spec = head.spec
        self.check_head_kind(spec.kind, cfg.scheme.kind)
        if spec.out_dim > spec.in_dim:
            raise UserError(f"scheme.kind={cfg.scheme.kind}: head.out_dim={spec.out_dim} principal "
                            f"directions do not exist in {spec.in_dim}-dim features; lower it")
        freeze(head)
        super().__init__(cfg, backbone, head)
        self.linear = head.first_linear()

    def subset_indices(self, n: int) -> torch.Tensor:
        size = self.cfg.scheme.pca_subset
        return fixed_subset(n, n if size is None else size, self.cfg.seed + 3)

    def subset_features(self, trainer) -> torch.Tensor:
        """H on the PCA subset: eval mode, no augmentation, the run's input normalisation."""
        images = trainer.data.train.images
        mean, std = trainer.input_norm
        return embed(self.backbone, images[self.subset_indices(len(images))], trainer.device,
                     mean=mean, std=std)

    @torch.no_grad()
    def refit(self, trainer) -> None:
        h = self.subset_features(trainer)
        fit = principal_directions(h, self.linear.out_features, self.top)
        w = self.linear.weight
        w.copy_(fit.rows.to(w))
        if self.linear.bias is not None:
            self.linear.bias.copy_((-(fit.rows @ fit.mean)).to(w))
        cutoff = zero_eigenvalue_cutoff(fit.largest, *h.shape)
        zero = int((fit.eigenvalues <= cutoff).sum())
        self.eigenvalues = fit.eigenvalues.float()
        self.fit_summary = {"pca_n": int(h.shape[0]), "pca_eig_min": float(fit.eigenvalues.min()),
                            "pca_eig_max": float(fit.eigenvalues.max()), "pca_eig_zero": zero}
        if zero:
            warnings.warn(
                f"scheme.kind={self.cfg.scheme.kind}: {zero} of the {len(fit.eigenvalues)} chosen "
                f"eigenvalues of cov(H) are numerically zero (<= {cutoff:.2e}; PCA on "
                f"{h.shape[0]} samples of {h.shape[1]}-d features): those head rows are an "
                "arbitrary basis of a zero-variance eigenspace; raise scheme.pca_subset "
                "(null = the whole training split)", PCAWarning, stacklevel=2)

    def on_train_start(self, trainer) -> None:
        self.refit(trainer)

    def on_epoch_end(self, trainer) -> None:
        self.refit(trainer)

    def epoch_metrics(self) -> dict:
        return dict(getattr(self, "fit_summary", {}))

    def extra_state(self) -> dict:
        state = super().extra_state()
        if getattr(self, "eigenvalues", None) is not None:
            state["pca_eigenvalues"] = self.eigenvalues
        return state


class PCATopScheme(PCAScheme):
    top = True


class PCABottomScheme(PCAScheme):
    top = False
