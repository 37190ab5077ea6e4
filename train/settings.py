"""The run configuration as a tree of dataclasses: every key, its type and its default.

:class:`TrainConfig` is what a preset (``train/presets/*.yaml``), a YAML file or
``--set key=value`` can name; :mod:`train.config` reads and validates it. This
module holds only the tree, so the code that trains with a config (schemes,
methods, the optimiser) can name its type without importing the validation,
which asks their registries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from repdiag.errors import UserError
from repdiag.models import HeadOptions


@dataclass
class HeadConfig(HeadOptions):
    """Projection head: :class:`repdiag.models.HeadOptions` (kind, widths, activation, ...;
    paper G: MLP m->512->128) and the trainer's own keys below. The trainer turns it into
    the checkpoint's HeadSpec with ``HeadSpec.from_options(cfg.head, m)``."""

    # Path to another repdiag checkpoint whose head weights initialise this head
    # (shapes must match). With scheme.kind=fixed the loaded head is then frozen
    # (paper G Table 2, "SimCLR based pre-training"); with any other scheme it is
    # only an initialisation.
    pretrained: str | None = None
    ae_checkpoint: str | None = None  # kind "ae": file written by `repdiag train-ae`
    ae_frozen: bool = True  # kind "ae": keep the embedding layer fixed (paper S)
    # kind "ae" without ae_checkpoint: the trainer first trains paper S's autoencoder on the
    # run's data (latent = hidden_dim) for this many epochs into OUT/autoencoder/
    ae_epochs: int = 100

    def check(self, in_dim: int | None = None) -> None:
        """:meth:`HeadOptions.check`, then the trainer's keys for kind ``ae``: the head needs a
        bias (the autoencoder's embedding layer has one) and ``ae_epochs`` >= 1."""
        super().check(in_dim)
        if self.kind == "ae":
            if self.ae_epochs < 1:
                raise UserError(f"head.ae_epochs must be at least 1, got {self.ae_epochs}")
            if not self.bias:
                raise UserError("head.kind=ae needs head.bias=true (the embedding layer has a bias)")


@dataclass
class SchemeConfig:
    """How the head is updated: joint backpropagation by default (see train/schemes/).

    joint, fixed, pca-top, pca-bottom, slow-single, slow-optimal, bilevel.
    """

    kind: str = "joint"
    # bilevel (paper G eq. 8): l inner head steps per mini-batch, proximal
    # strength lambda. Inner optimiser: Adam at the outer learning rate (G §5: "the Adam
    # optimizer ... the same learning rate with five inner optimization steps"; its state
    # persists across mini-batches), or momentum SGD (inner_momentum). inner_lr None = optim.lr.
    inner_steps: int = 5
    lam: float = 1.0
    inner_optim: str = "adam"
    inner_lr: float | None = None
    inner_momentum: float = 0.9
    # pca-top / pca-bottom: size of the fixed training subset the PCA runs on; None = the
    # whole training split. It must exceed the feature size m by far, or the bottom
    # directions come from the (arbitrary) zero eigenspace of a rank-deficient sample.
    pca_subset: int | None = None
    # slow-optimal: subset size, relative-loss-change tolerance and step cap.
    slow_subset: int = 2048
    slow_tol: float = 1e-4
    slow_max_steps: int = 200


@dataclass
class OptimConfig:
    """Optimizer: paper G uses Adam, lr 1e-3, weight decay 1e-6, no schedule."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    schedule: str = "none"
    min_lr_ratio: float = 0.02


@dataclass
class AugmentSettings:
    """Two-view augmentation of paper G §5 (SimCLR's, with crop scale 0.2-1)."""

    crop_scale_min: float = 0.2
    crop_scale_max: float = 1.0
    flip_p: float = 0.5
    jitter_strength: float = 0.4
    jitter_hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    normalize: bool = False
    # per-channel Z-score with statistics of the training split only (paper S's statistic:
    # mean over images of per-image channel means / stds); overrides ``normalize``. S
    # normalised each split with its own statistics, a leak we do not copy. Applied after
    # augmentation (S says before): colour jitter and grayscale work on [0, 1] images and
    # clamp to that range; crop, resize and flip commute with the per-channel affine map.
    zscore: bool = False


@dataclass
class TrainConfig:
    """One training run. Defaults are paper G's (SimCLR, CIFAR-10, ResNet-50)."""

    name: str = "run"
    method: str = "simclr"
    # SimSiam predictor hidden width; None = max(1, head output dim // 4) (Chen & He: 2048/4).
    pred_hidden: int | None = None
    data: str = "cifar10"
    data_root: str | None = None
    data_limit: int | None = None
    # validation carved from the official training split (split_scheme standard); paper G
    # trains on the whole training split (val_fraction 0), paper S uses split_scheme "s":
    # official train + test pooled and cut 70/10/20 into train/val/test with the run's seed.
    val_fraction: float = 0.1
    split_scheme: str = "standard"
    # seeds the splits (and generated data); None = seed. Paper S keeps one split for all runs.
    split_seed: int | None = None
    # dataset options: images resized to image_size at load time (None = the loader's
    # default), label_level for FGVC-Aircraft (variant 100 / family 70 / manufacturer 30 classes)
    image_size: int | None = None
    label_level: str | None = None
    backbone: str = "resnet50"
    width: float = 1.0
    cifar_stem: bool | None = None
    epochs: int = 500
    batch_size: int = 256
    temperature: float = 0.5
    seed: int = 0
    device: str = "auto"
    # how the run computes, not what it trains (none of these changes a paper's setting):
    # precision fp32 | bf16 | auto (bf16 autocast around the backbone/head forwards on a GPU
    # that supports it, fp32 on the CPU; losses, bilevel inner steps and PCA/slow refits
    # stay fp32); channels_last None = on for a CUDA device; compile = torch.compile the
    # backbone (opt-in); data_on_device None = hold the uint8 training images on the device
    # when they take at most a quarter of its free memory (always on the CPU), else batches
    # come from a DataLoader with data_workers workers (None = 4 on a GPU, 0 on the CPU).
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    data_on_device: bool | None = None
    data_workers: int | None = None
    # processes the run was trained with (torchrun); written by the trainer, batch_size is
    # the global batch split evenly over them.
    world_size: int = 1
    pretrained_backbone: str | None = None  # "imagenet": torchvision weights (paper S)
    save_every: int = 0
    knn_every: int = 1
    knn_subset: int = 2000
    knn_k: int = 200
    # which checkpoint stands for the run in sweeps and analyses: "last" (paper G) or "best",
    # the lowest validation contrastive loss (paper S), kept as best.pt beside last.pt.
    select: str = "last"
    head: HeadConfig = field(default_factory=HeadConfig)
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
