"""Loaders for datasets stored as folders of image files: Tiny ImageNet,
Imagenette and ``imagefolder:PATH``.

All images are decoded and fit to ``image_size`` x ``image_size`` (shorter
side resized, then centre-cropped; see :mod:`repdiag.data.imageio`) once, at
load time, and the whole dataset is then held in memory as uint8 tensors:
Tiny ImageNet at 64 px is about 1.2 GB, Imagenette at 64 px about 160 MB. Very
large folders need correspondingly large memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from repdiag.data.base import ImageSplit
from repdiag.data.imageio import check_image_size, list_images, load_images
from repdiag.data.paths import candidate_dirs, download_dir, downloads_allowed, via_torchvision
from repdiag.data.registry import register
from repdiag.data.splits import carve_test
from repdiag.errors import UserError

IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def _first_layout(dirs: list[Path], children: tuple[str, ...], ok) -> Path | None:
    """The first ``d / child`` (d in dirs, child in children) for which ``ok`` holds."""
    for d in dirs:
        for child in children:
            cand = d / child if child else d
            if ok(cand):
                return cand
    return None


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(folder: Path, class_names: list[str]) -> tuple[list[Path], torch.Tensor]:
    """Image paths under ``folder/<class>/`` for each class, with their labels."""
    paths, labels = [], []
    for label, name in enumerate(class_names):
        sub = folder / name
        if sub.is_dir():
            files = list_images(sub)
            paths.extend(files)
            labels.extend([label] * len(files))
    return paths, torch.tensor(labels, dtype=torch.int64)


def _split_from_folder(folder: Path, class_names: list[str], display: list[str], size: int):
    paths, labels = _scan(folder, class_names)
    return ImageSplit(load_images(paths, size), labels, display)


# --------------------------------------------------------------------------- Tiny ImageNet


def _is_tinyimagenet(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "val" / "val_annotations.txt").is_file()


def _tiny_names(d: Path, wnids: list[str]) -> list[str]:
    words = d / "words.txt"
    if not words.is_file():
        return wnids
    table = {}
    for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, names = line.partition("\t")
        table[wnid.strip()] = names.split(",")[0].strip()
    return [table.get(w) or w for w in wnids]


@register("tinyimagenet")
def load_tinyimagenet(
    *, root: Path | None, seed: int, image_size: int = 64
) -> tuple[ImageSplit, ImageSplit]:
    """Tiny ImageNet (200 classes, 64 px) from a folder in the official layout:
    ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG``, ``val/val_annotations.txt``
    (optionally inside ``tiny-imagenet-200/``). The official test set is unlabelled, so
    the labelled official *val* set (10000) is used as the test split; validation is
    carved from train (100000). No download: get the zip by hand."""
    size = check_image_size(image_size)
    dirs = candidate_dirs("tinyimagenet", root)
    d = _first_layout(dirs, ("", "tiny-imagenet-200"), _is_tinyimagenet)
    if d is None:
        raise UserError(
            f"dataset 'tinyimagenet' not found (looked in: {', '.join(map(str, dirs))}): "
            "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into "
            f"{download_dir('tinyimagenet', root)}"
        )
    wnids_file = d / "wnids.txt"
    if wnids_file.is_file():
        wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    else:
        wnids = [p.name for p in _class_dirs(d / "train")]
    names = _tiny_names(d, wnids)
    train = _split_from_folder(d / "train", wnids, names, size)

    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    ann = d / "val" / "val_annotations.txt"
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"{ann}:{lineno}: expected '<file>\\t<wnid>...' with a known wnid")
        paths.append(d / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    test = ImageSplit(load_images(paths, size), torch.tensor(labels, dtype=torch.int64), names)
    return train, test


# --------------------------------------------------------------------------- Imagenette


def _is_train_val(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "val").is_dir()


@register("imagenette")
def load_imagenette(
    *,
    root: Path | None,
    seed: int,
    image_size: int = 64,
    download: bool = True,
    download_size: str = "160px",
) -> tuple[ImageSplit, ImageSplit]:
    """Imagenette (10 ImageNet classes; 9469 train / 3925 val) from a folder with
    ``train/<wnid>/*`` and ``val/<wnid>/*`` (optionally inside ``imagenette2-160/``,
    ``imagenette2-320/`` or ``imagenette2/``). The official val set is the test split.
    If absent, torchvision's downloader fetches the ``download_size`` variant
    ("160px", "320px" or "full"). Images are fit to ``image_size`` (default 64)."""
    size = check_image_size(image_size)
    children = ("", "imagenette2-160", "imagenette2-320", "imagenette2")
    dirs = candidate_dirs("imagenette", root)
    d = _first_layout(dirs, children, _is_train_val)
    if d is None:
        hint = (
            "download https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz and "
            f"extract it into {download_dir('imagenette', root)}"
        )
        where = ", ".join(map(str, dirs))
        if not downloads_allowed(download):
            raise UserError(f"dataset 'imagenette' not found (looked in: {where}); {hint}")
        if download_size not in ("160px", "320px", "full"):
            raise UserError(
                f"imagenette download_size must be 160px, 320px or full, got {download_size!r}"
            )
        from torchvision import datasets

        ds = via_torchvision(
            "imagenette",
            lambda t, dl: datasets.Imagenette(
                str(t), split="train", size=download_size, download=dl
            ),
            root,
            download,
            hint,
        )
        d = Path(ds._image_root).parent
        if not _is_train_val(d):
            raise UserError(f"dataset 'imagenette' not found (looked in: {where}); {hint}")
    wnids = [p.name for p in _class_dirs(d / "train")]
    names = [IMAGENETTE_CLASSES.get(w, w) for w in wnids]
    train = _split_from_folder(d / "train", wnids, names, size)
    test = _split_from_folder(d / "val", wnids, names, size)
    return train, test


# --------------------------------------------------------------------------- imagefolder:PATH


@register("imagefolder", takes_arg=True)
def load_imagefolder(
    *,
    root: Path | None,
    seed: int,
    arg: str | None = None,
    image_size: int = 64,
    test_fraction: float = 0.2,
) -> tuple[ImageSplit, ImageSplit]:
    """Any folder of class subfolders: ``PATH/<class>/**/*.{jpg,png,...}``, or
    ``PATH/train/<class>/...`` with ``PATH/test/<class>/...`` (or ``PATH/val/``) as the
    test split. Without a test folder, a stratified ``test_fraction`` (default 0.2) of the
    images is carved off as test with the seed. Class names are the subfolder names
    (sorted); only subfolders holding images count. ``PATH`` comes from
    ``imagefolder:PATH``, else from ``root``. Images are fit to ``image_size`` (64)."""
    size = check_image_size(image_size)
    if not (0 < test_fraction < 1):
        raise UserError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if arg is None and root is None:
        raise UserError("dataset 'imagefolder' needs a folder: use 'imagefolder:PATH'")
    base = Path(arg).expanduser() if arg is not None else root
    if not base.is_dir():
        raise UserError(f"image folder not found: {base}")

    train_dir, test_dir = base, None
    if (base / "train").is_dir():
        train_dir = base / "train"
        test_dir = next((base / s for s in ("test", "val") if (base / s).is_dir()), None)

    classes = [p.name for p in _class_dirs(train_dir) if list_images(p)]
    if not classes:
        raise UserError(f"no class subfolders with images in {train_dir}")
    train = _split_from_folder(train_dir, classes, classes, size)
    if test_dir is None:
        return carve_test(train, test_fraction, seed)
    extra = sorted({p.name for p in _class_dirs(test_dir) if list_images(p)} - set(classes))
    if extra:
        raise UserError(f"{test_dir} has class folders not in {train_dir}: {', '.join(extra[:5])}")
    return train, _split_from_folder(test_dir, classes, classes, size)
