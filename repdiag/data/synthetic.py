"""A generated dataset with learnable class structure, for tests and smoke runs.

Each class has its own smooth random colour pattern (a ``grid x grid`` random
field per channel, upsampled bilinearly). An image of class ``c`` is that
template, randomly shifted by up to ``max_shift`` pixels, with random
contrast and brightness, plus a smooth per-image nuisance pattern (same
frequency as the templates, so the classes are not trivially separable) and
per-pixel Gaussian noise. Nearest-centroid and 1-NN on raw pixels are well
above chance; a small CNN learns it quickly.

Fully vectorised; deterministic in ``seed`` (a CPU ``torch.Generator``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from repdiag.data.base import ImageSplit
from repdiag.data.registry import register
from repdiag.errors import UserError


def _smooth_field(n: int, grid: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) float fields, each a bilinear upsampling of a random grid,
    scaled to unit standard deviation."""
    coarse = torch.randn(n, 3, grid, grid, generator=gen)
    field = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    std = field.flatten(1).std(dim=1).clamp_min(1e-6)
    return field / std[:, None, None, None]


def _balanced_labels(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    return labels[torch.randperm(n, generator=gen)]


def make_synthetic(
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 4,
    image_size: int = 32,
    seed: int = 0,
    *,
    grid: int = 4,
    max_shift: int | None = None,
    nuisance: float = 1.25,
    noise: float = 0.5,
) -> tuple[ImageSplit, ImageSplit]:
    """Generate (train, test) splits; see the module docstring."""
    for key, value, low in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 0),
        ("num_classes", num_classes, 2),
        ("image_size", image_size, 4),
        ("grid", grid, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"synthetic {key} must be an integer >= {low}, got {value!r}")
    shift = image_size // 8 if max_shift is None else int(max_shift)
    if not 0 <= shift <= image_size:
        raise UserError(f"synthetic max_shift must be in [0, image_size], got {max_shift!r}")
    if nuisance < 0 or noise < 0:
        raise UserError("synthetic nuisance and noise must be >= 0")

    gen = torch.Generator().manual_seed(int(seed))
    big = image_size + 2 * shift
    templates = _smooth_field(num_classes, grid, big, gen)  # (C, 3, big, big)

    n = n_train + n_test
    labels = torch.cat(
        [_balanced_labels(n_train, num_classes, gen), _balanced_labels(n_test, num_classes, gen)]
    )
    # random crop of the (enlarged) class template = random shift, via gather indexing
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    ar = torch.arange(image_size)
    rows = (dy[:, None] + ar)[:, None, :, None]  # (n, 1, S, 1)
    cols = (dx[:, None] + ar)[:, None, None, :]  # (n, 1, 1, S)
    chan = torch.arange(3)[None, :, None, None]
    x = templates[labels[:, None, None, None], chan, rows, cols]  # (n, 3, S, S)

    contrast = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=gen)
    brightness = 0.3 * torch.randn(n, 1, 1, 1, generator=gen)
    x = contrast * x + brightness
    if nuisance > 0:
        x = x + nuisance * _smooth_field(n, grid, image_size, gen)
    if noise > 0:
        x = x + noise * torch.randn(n, 3, image_size, image_size, generator=gen)
    images = (128.0 + 40.0 * x).round().clamp_(0, 255).to(torch.uint8)

    classes = [f"class_{i}" for i in range(num_classes)]
    train = ImageSplit(images[:n_train].contiguous(), labels[:n_train].clone(), classes)
    test = ImageSplit(images[n_train:].contiguous(), labels[n_train:].clone(), classes)
    return train, test


@register("synthetic")
def load_synthetic(
    *,
    root: Path | None,
    seed: int,
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 4,
    image_size: int = 32,
    grid: int = 4,
    max_shift: int | None = None,
    nuisance: float = 1.25,
    noise: float = 0.5,
) -> tuple[ImageSplit, ImageSplit]:
    """Generated data (``root`` is ignored); ``seed`` seeds the generator."""
    return make_synthetic(
        n_train,
        n_test,
        num_classes,
        image_size,
        seed,
        grid=grid,
        max_shift=max_shift,
        nuisance=nuisance,
        noise=noise,
    )
