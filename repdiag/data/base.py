"""The two core types of the data layer: :class:`ImageSplit` and :class:`Dataset`.

Every dataset is held fully in memory as uint8 tensors in NCHW layout with
three channels (grayscale sets are repeated to RGB). That is cheap for the
sets this project uses on CPU (Fashion-MNIST about 190 MB, CIFAR 180 MB,
Tiny ImageNet at 64 px about 1.2 GB); folder datasets are decoded and resized
once, at load time, and then also live in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from repdiag.errors import UserError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(eq=False)
class ImageSplit:
    """One split of a dataset.

    Attributes:
        images: uint8 tensor of shape (N, 3, H, W).
        labels: int64 tensor of shape (N,), values in ``range(len(classes))``.
        classes: the class names, indexed by label (the same list in every
            split of a dataset).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"ImageSplit.images must be uint8 (N, 3, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise ValueError(
                f"ImageSplit.labels must be int64 (N,), got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"ImageSplit has {len(self.images)} images but {len(self.labels)} labels"
            )
        self.classes = list(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSplit(n={len(self)}, image_shape={tuple(self.images.shape[1:])}, "
            f"classes={len(self.classes)})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageSplit:
        """The samples at ``index`` (a copy), in that order."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageSplit(self.images[index], self.labels[index], self.classes)

    def class_counts(self) -> torch.Tensor:
        """Number of samples of each class, int64 of shape (num_classes,)."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    @staticmethod
    def concat(splits: Sequence[ImageSplit]) -> ImageSplit:
        """The splits one after another; they must share classes and image size."""
        if not splits:
            raise ValueError("ImageSplit.concat needs at least one split")
        first = splits[0]
        for s in splits[1:]:
            if s.classes != first.classes or s.images.shape[1:] != first.images.shape[1:]:
                raise ValueError("ImageSplit.concat: splits differ in classes or image shape")
        return ImageSplit(
            torch.cat([s.images for s in splits]),
            torch.cat([s.labels for s in splits]),
            first.classes,
        )


@dataclass(eq=False)
class Dataset:
    """A dataset with train, validation and test splits, all in memory.

    Attributes:
        name: the name it was loaded by (e.g. ``"fashion-mnist"``,
            ``"imagefolder:/data/pets"``).
        train, val, test: the splits; ``val`` may be empty (``val_fraction=0``).
        num_classes: number of classes (``len(train.classes)``).
        image_size: side length of the (square) images in pixels.
    """

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    image_size: int

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def split(self, name: str) -> ImageSplit:
        """The split called ``name`` (one of ``train``, ``val``, ``test``)."""
        if name not in SPLIT_NAMES:
            raise UserError(f"unknown split {name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, num_classes={self.num_classes}, "
            f"image_size={self.image_size})"
        )
