"""Decoding image files and resizing images to a fixed square size.

Images are decoded with ``torchvision.io`` (JPEG, PNG, GIF, WebP) straight to
uint8 RGB tensors, resized so the shorter side is ``image_size`` (antialiased)
and centre-cropped to ``image_size x image_size``. For square inputs that is a
plain resize; for other aspect ratios it keeps the aspect ratio and drops the
borders of the longer side.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from repdiag.errors import UserError

# torchvision is imported inside the functions: it costs ~1.5 s and most datasets never
# decode image files.

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})


@contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    # torchvision 0.29 deprecates its image codecs (in favour of torchcodec) and
    # warns on every call; the codecs still work, so keep the log readable.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*image decoding and encoding capabilities of TorchVision"
        )
        yield


def check_image_size(image_size: int) -> int:
    """``image_size`` as an int, or a UserError if it is not a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    return image_size


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursively), sorted; hidden entries skipped."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_EXTENSIONS:
                files.append(Path(dirpath) / fn)
    return sorted(files)


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (C, H, W) or (N, C, H, W) uint8 image so the shorter side is ``size``,
    then centre-crop to ``size x size``."""
    from torchvision.transforms.v2 import functional as TF  # deferred: slow import

    h, w = image.shape[-2:]
    if h == size and w == size:
        return image
    if min(h, w) != size:
        image = TF.resize(image, [size], antialias=True)
    if image.shape[-2] != size or image.shape[-1] != size:
        image = TF.center_crop(image, [size, size])
    return image


def resize_batch(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """``fit_square`` applied to a whole uint8 (N, 3, H, W) batch, in chunks."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        out[start : start + chunk] = fit_square(images[start : start + chunk], size)
    return out


def decode_file(path: Path, size: int) -> torch.Tensor:
    """One image file as uint8 (3, size, size). Raises UserError naming a bad file."""
    from torchvision import io as tvio
    from torchvision.transforms.v2 import functional as TF

    try:
        data = tvio.read_file(str(path))
        image = tvio.decode_image(data, mode=tvio.ImageReadMode.RGB)
    except Exception as e:  # noqa: BLE001 - decoders raise RuntimeError, I/O OSError, ...
        msg = " ".join(str(e).split())[:120]
        raise UserError(f"cannot decode image {path}: {msg}") from None
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return fit_square(image, size)


def load_images(paths: Sequence[Path], size: int, workers: int | None = None) -> torch.Tensor:
    """Decode and resize ``paths`` into one uint8 (N, 3, size, size) tensor.

    Uses a small thread pool (the decoders release the GIL). This is a
    one-off cost at load time; everything ends up in memory.
    """
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    if not paths:
        return out
    workers = workers or min(8, os.cpu_count() or 1)

    def work(i: int) -> None:
        out[i] = decode_file(paths[i], size)

    with _quiet_torchvision_io():
        if workers <= 1 or len(paths) < 64:
            for i in range(len(paths)):
                work(i)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                # list() re-raises the first worker exception here
                list(pool.map(work, range(len(paths)), chunksize=64))
    return out
