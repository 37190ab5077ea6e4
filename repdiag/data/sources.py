"""Loaders for published datasets: Fashion-MNIST (IDX files) and the
torchvision-backed CIFAR-10, CIFAR-100, STL-10 and FGVC-Aircraft.

Each loader returns the dataset's official ``(train, test)`` splits as
uint8 (N, 3, H, W) tensors. Where torchvision exposes the data as one array
(CIFAR ``.data`` is NHWC, STL-10 ``.data`` is NCHW) the conversion is a single
tensor operation; FGVC-Aircraft images are decoded file by file and resized
once, at load time.

Native sizes: Fashion-MNIST 28 (grayscale, repeated to 3 channels), CIFAR 32,
STL-10 96. CIFAR/STL-10 take an optional ``image_size`` to resize the whole
set; FGVC-Aircraft photos vary in size and are fit to ``image_size``
(default 64: shorter side resized, then centre-cropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from repdiag.data.base import ImageSplit
from repdiag.data.idx import read_idx
from repdiag.data.imageio import check_image_size, load_images, resize_batch
from repdiag.data.paths import candidate_dirs, download_dir, downloads_allowed, via_torchvision
from repdiag.data.registry import register
from repdiag.errors import UserError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
STL10_CLASSES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _nchw(images: np.ndarray | torch.Tensor, layout: str) -> torch.Tensor:
    """uint8 array in layout NHWC / NCHW / NHW as a contiguous uint8 (N, 3, H, W) tensor."""
    t = torch.as_tensor(np.asarray(images, dtype=np.uint8))
    if layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
    elif layout == "NHW":
        t = t.unsqueeze(1).expand(-1, 3, -1, -1)
    return t.contiguous()


def _labels(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


# --------------------------------------------------------------------------- Fashion-MNIST


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _fashion_dir(dirs: list[Path]) -> Path | None:
    """The first directory (or its fashion-mnist/ or FashionMNIST/raw/ child) holding all
    four IDX files."""
    for base in dirs:
        for d in (base, base / "fashion-mnist", base / "FashionMNIST" / "raw"):
            stems = [s for pair in _FASHION_FILES.values() for s in pair]
            if all(_find_idx(d, s) for s in stems):
                return d
    return None


def _read_fashion_split(directory: Path, split: str) -> ImageSplit:
    img_stem, lab_stem = _FASHION_FILES[split]
    img_path, lab_path = _find_idx(directory, img_stem), _find_idx(directory, lab_stem)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"Fashion-MNIST files in {directory} have mismatched shapes: images "
            f"{images.shape}, labels {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise UserError(f"Fashion-MNIST labels in {lab_path} are outside 0..9")
    return ImageSplit(_nchw(images, "NHW"), _labels(labels), FASHION_MNIST_CLASSES)


@register("fashion-mnist")
def load_fashion_mnist(
    *, root: Path | None, seed: int, download: bool = True, image_size: int | None = None
) -> tuple[ImageSplit, ImageSplit]:
    """Fashion-MNIST (60000/10000, 28 px) from the four (optionally gzipped) IDX files.

    ``image_size`` resizes every image (antialiased) at load time, e.g. 16 for the
    CPU-scale analyses.

    Looked for in ``root`` if given, else ``$REPDIAG_DATA/fashion-mnist``,
    ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``) and ``fashion-mnist`` in repdiag's cache folder
    (:func:`repdiag.data.paths.cache_dir`). If
    absent, torchvision's downloader is tried.
    """
    dirs = candidate_dirs("fashion-mnist", root, system=(FASHION_MNIST_SYSTEM_DIR,))
    directory = _fashion_dir(dirs)
    if directory is None:
        hint = (
            "install the Debian package dataset-fashion-mnist (apt-get install "
            f"dataset-fashion-mnist) or put the IDX files in {download_dir('fashion-mnist', root)}"
        )
        where = ", ".join(str(d) for d in dirs)
        if not downloads_allowed(download):
            raise UserError(
                f"dataset 'fashion-mnist' not found (looked in: {where}) and downloads are "
                f"disabled; {hint}"
            )
        from torchvision import datasets

        try:
            via_torchvision(
                "fashion-mnist",
                lambda d, dl: datasets.FashionMNIST(str(d), train=True, download=dl),
                root,
                download,
                hint,
            )
        except UserError as e:
            raise UserError(f"{e} (looked in: {where})") from None
        directory = _fashion_dir(dirs)
        if directory is None:  # torchvision put the files somewhere unexpected
            raise UserError(f"dataset 'fashion-mnist' not found (looked in: {where}); {hint}")
    splits = [_read_fashion_split(directory, split) for split in ("train", "test")]
    if image_size is not None:
        size = check_image_size(image_size)
        splits = [ImageSplit(resize_batch(s.images, size), s.labels, s.classes) for s in splits]
    return splits[0], splits[1]


# --------------------------------------------------------------------------- CIFAR / STL-10


def _cifar(name: str, cls_name: str, root, download, image_size, url):
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    hint = f"download the python version from {url} and extract it into {download_dir(name, root)}"
    splits = []
    for train in (True, False):
        ds = via_torchvision(
            name,
            lambda d, dl, train=train: cls(str(d), train=train, download=dl),
            root,
            download,
            hint,
        )
        images = _nchw(ds.data, "NHWC")
        if image_size is not None:
            images = resize_batch(images, check_image_size(image_size))
        splits.append(ImageSplit(images, _labels(ds.targets), list(ds.classes)))
    return splits[0], splits[1]


@register("cifar10")
def load_cifar10(
    *, root: Path | None, seed: int, download: bool = True, image_size: int | None = None
) -> tuple[ImageSplit, ImageSplit]:
    """CIFAR-10 (50000/10000, 32 px) via torchvision; ``image_size`` resizes all images."""
    return _cifar(
        "cifar10",
        "CIFAR10",
        root,
        download,
        image_size,
        "https://www.cs.toronto.edu/~kriz/cifar.html",
    )


@register("cifar100")
def load_cifar100(
    *, root: Path | None, seed: int, download: bool = True, image_size: int | None = None
) -> tuple[ImageSplit, ImageSplit]:
    """CIFAR-100 (50000/10000, 32 px, 100 fine classes) via torchvision."""
    return _cifar(
        "cifar100",
        "CIFAR100",
        root,
        download,
        image_size,
        "https://www.cs.toronto.edu/~kriz/cifar.html",
    )


@register("stl10")
def load_stl10(
    *, root: Path | None, seed: int, download: bool = True, image_size: int | None = None
) -> tuple[ImageSplit, ImageSplit]:
    """STL-10 labelled splits (5000 train / 8000 test, 96 px) via torchvision; the
    100000 unlabelled images are not loaded."""
    from torchvision import datasets

    hint = (
        "download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and "
        f"extract it into {download_dir('stl10', root)}"
    )
    splits = []
    for split in ("train", "test"):
        ds = via_torchvision(
            "stl10",
            lambda d, dl, split=split: datasets.STL10(str(d), split=split, download=dl),
            root,
            download,
            hint,
        )
        images = _nchw(ds.data, "NCHW")
        if image_size is not None:
            images = resize_batch(images, check_image_size(image_size))
        classes = list(getattr(ds, "classes", None) or STL10_CLASSES)
        splits.append(ImageSplit(images, _labels(ds.labels), classes))
    return splits[0], splits[1]


# --------------------------------------------------------------------------- FGVC-Aircraft


@register("fgvc-aircraft")
def load_fgvc_aircraft(
    *,
    root: Path | None,
    seed: int,
    download: bool = True,
    image_size: int = 64,
    annotation_level: str = "variant",
) -> tuple[ImageSplit, ImageSplit]:
    """FGVC-Aircraft via torchvision: official ``trainval`` (6667) as train and ``test``
    (3333), ``annotation_level`` variant (100 classes), family (70) or manufacturer (30).
    Photos are fit to ``image_size`` (default 64) once, at load time."""
    from torchvision import datasets

    size = check_image_size(image_size)
    if annotation_level not in ("variant", "family", "manufacturer"):
        raise UserError(
            f"fgvc-aircraft annotation_level must be variant, family or manufacturer, "
            f"got {annotation_level!r}"
        )
    hint = (
        "download fgvc-aircraft-2013b.tar.gz from "
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ and extract it into "
        f"{download_dir('fgvc-aircraft', root)}"
    )
    splits = []
    for split in ("trainval", "test"):
        ds = via_torchvision(
            "fgvc-aircraft",
            lambda d, dl, split=split: datasets.FGVCAircraft(
                str(d), split=split, annotation_level=annotation_level, download=dl
            ),
            root,
            download,
            hint,
        )
        paths = [Path(p) for p in ds._image_files]
        images = load_images(paths, size)
        splits.append(ImageSplit(images, _labels(ds._labels), list(ds.classes)))
    return splits[0], splits[1]
