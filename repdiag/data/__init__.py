"""The data layer: datasets as in-memory uint8 tensors with train/val/test splits.

    from repdiag.data import load_dataset, list_datasets
    ds = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    ds.train.images   # uint8 (N, 3, 28, 28)
    ds.train.labels   # int64 (N,)

Modules: ``base`` (ImageSplit, Dataset), ``registry`` (register, load_dataset,
list_datasets), ``splits`` (seeded stratified splitting), ``idx`` (IDX files),
``imageio`` (decode/resize), ``paths`` (data locations, downloads),
``sources`` (Fashion-MNIST, CIFAR, STL-10, FGVC-Aircraft), ``folders``
(Tiny ImageNet, Imagenette, imagefolder:PATH), ``synthetic``.
"""

from repdiag.data.base import SPLIT_NAMES, Dataset, ImageSplit
from repdiag.data.idx import read_idx, write_idx
from repdiag.data.registry import (
    check_dataset_options,
    dataset_kwargs,
    list_datasets,
    load_dataset,
    register,
)
from repdiag.data.splits import SPLIT_SCHEMES
from repdiag.data.synthetic import make_synthetic

# importing the loader modules fills the registry (they import it; it imports none of them)
from repdiag.data import folders, sources, synthetic  # noqa: F401  isort: skip

__all__ = [
    "SPLIT_NAMES",
    "SPLIT_SCHEMES",
    "Dataset",
    "ImageSplit",
    "check_dataset_options",
    "dataset_kwargs",
    "list_datasets",
    "load_dataset",
    "make_synthetic",
    "read_idx",
    "register",
    "write_idx",
]
