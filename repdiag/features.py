"""Feature extraction and feature files: what every diagnostic reads.

``extract(checkpoint, data, split)`` runs the backbone (eval mode, no
augmentation, batched, no grad) and the head over one split and returns a
:class:`FeatureSet` (h, z, labels and the head's linear map A, b). Results are
cached on disk under a key hashing the checkpoint's bytes, the dataset, the
split and the transform, so a second call reads the cache.

A **feature file** lets users diagnose features from anywhere. It is a torch
file loadable with ``weights_only=True``::

    {"train": {"h": (N, m), "z": (N, d), "y": (N,)},
     "test":  {"h": ..., "z": ..., "y": ...},
     "head":  {"weight": (d', m), "bias": (d',)}}

``z`` and ``head`` are optional (and ``bias`` within ``head``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repdiag.augment import eval_transform
from repdiag.checkpoint import Checkpoint, atomic_torch_save, load_checkpoint, safe_torch_load
from repdiag.data.paths import cache_dir
from repdiag.errors import UserError
from repdiag.files import file_digest

CACHE_VERSION = 2  # 2: no z for checkpoints without a head
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FeatureSet:
    """Features of one split: backbone output h, head output z, labels y, head map A, b."""

    h: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    split: str = "test"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.h.shape[0])


@dataclass
class FeatureBundle:
    """Train and test FeatureSets of one model (what probes need), plus the head map."""

    train: FeatureSet
    test: FeatureSet
    source: str = ""

    @property
    def weight(self) -> torch.Tensor | None:
        return self.test.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.test.bias

    @property
    def has_z(self) -> bool:
        return self.train.z is not None and self.test.z is not None


def feature_cache_dir() -> Path:
    """Where extracted features are cached: ``features/`` in repdiag's cache folder
    (:func:`repdiag.data.paths.cache_dir`: ``$REPDIAG_CACHE``, else ``$XDG_CACHE_HOME/repdiag``,
    else ``~/.cache/repdiag``)."""
    return cache_dir() / "features"


#: named input statistics for ``--normalize`` (CIFAR's as solo-learn trains with them)
NAMED_NORMS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def parse_normalize(normalize: str) -> str:
    """Check a ``--normalize`` value: auto, none, a name of :data:`NAMED_NORMS`, or
    ``M,M,M/S,S,S`` (three means and three positive standard deviations)."""
    if normalize in ("auto", "none") or normalize in NAMED_NORMS:
        return normalize
    mean, sep, std = str(normalize).partition("/")
    try:
        m, s = [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
    except ValueError:
        m, s = [], []
    if not sep or len(m) != 3 or len(s) != 3 or min(s) <= 0:
        raise UserError(f"--normalize must be auto, none, {', '.join(NAMED_NORMS)} or "
                        f"M,M,M/S,S,S (three means, three positive stds), got '{normalize}'")
    return normalize


def _normalization(ck: Checkpoint, normalize: str) -> tuple[tuple | None, tuple | None]:
    """The (mean, std) images are normalised with before the backbone (None: none).

    ``auto``: what the checkpoint records (a repdiag run's statistics; a foreign
    file's, e.g. solo-learn's for its dataset from ``args.json``), else ImageNet's
    for foreign files (the importer says so), else none.
    """
    normalize = parse_normalize(normalize)
    if normalize == "none":
        return None, None
    if normalize in NAMED_NORMS:
        return NAMED_NORMS[normalize]
    if normalize != "auto":
        mean, _, std = normalize.partition("/")
        return tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))
    norm = ck.extra.get("input_norm") if isinstance(ck.extra, dict) else None
    if norm:  # what the run trained with (e.g. Z-score with its training statistics)
        return tuple(norm["mean"]), tuple(norm["std"])
    if ck.source != "repdiag-checkpoint":
        return IMAGENET_MEAN, IMAGENET_STD
    if ck.config.get("augment", {}).get("normalize"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return None, None


def dataset_for(ck: Checkpoint, data: str | None = None, data_root: str | None = None,
                limit: int | None = None):
    """The dataset a checkpoint was trained on (or ``data``), split with the run's seed."""
    from repdiag.data import load_dataset

    name = data or ck.dataset
    if not name:
        raise UserError(f"{ck.path}: no dataset recorded in the checkpoint; pass --data NAME")
    return load_dataset(name, root=data_root or ck.config.get("data_root"), limit=limit,
                        **_dataset_kwargs(ck, name))


def _dataset_kwargs(ck: Checkpoint, name: str) -> dict:
    """The run's seed, split scheme and dataset options (image size, label level) for ``name``."""
    from repdiag.data import dataset_kwargs

    same = name == ck.dataset
    return dataset_kwargs(ck.config, for_dataset=None if same else name)


@torch.no_grad()
def extract(checkpoint: str | os.PathLike | Checkpoint, data: str | None = None,
            split: str = "test", *, device: str | torch.device = "cpu", batch_size: int = 512,
            normalize: str = "auto", data_root: str | None = None, cache: bool = True,
            limit: int | None = None, dataset=None) -> FeatureSet:
    """Backbone features h and head outputs z of one dataset split (checkpoint -> model -> features).

    ``data`` defaults to the dataset recorded in the checkpoint's config.
    ``dataset`` may pass an already loaded :class:`repdiag.data.Dataset` (or a
    callable returning one, called only when the cache misses).
    Eval mode, no augmentation, batched, no grad, float32; cached on disk.
    """
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    name = data or ck.dataset
    if not name:
        raise UserError(f"{ck.path}: no dataset recorded in the checkpoint; pass --data NAME")
    mean, std = _normalization(ck, normalize)
    dev = torch.device(device)
    key = None
    if cache and os.path.isfile(ck.path):
        parts = [CACHE_VERSION, file_digest(ck.path), name, data_root, split,
                 sorted(_dataset_kwargs(ck, name).items()), limit, mean, std, ck.key_map]
        if ck.source != "repdiag-checkpoint":  # how it was read (--stem, --head-activation)
            parts.append((repr(ck.backbone_spec), repr(ck.head_spec)))
        key = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
        hit = feature_cache_dir() / f"{key}.pt"
        if hit.exists():
            try:
                return _featureset_from_dict(safe_torch_load(hit, "feature cache"), split)
            except UserError:
                pass  # a damaged cache entry is recomputed below
    if callable(dataset):
        dataset = dataset()
    ds = dataset or dataset_for(ck, name, data_root, limit)
    part = ds.split(split)
    if len(part) == 0:
        raise UserError(f"dataset '{name}' split '{split}' is empty")
    backbone = ck.build_backbone().to(dev)
    head = ck.build_head().to(dev)
    hs, zs = [], []
    for i in range(0, len(part), batch_size):
        x = eval_transform(part.images[i:i + batch_size].to(dev), mean=mean, std=std)
        h = backbone(x)
        z = head(h)
        hs.append(h.float().cpu())
        zs.append(z.float().cpu())
    for what, parts in (("backbone features h", hs), ("head outputs z", zs)):
        bad = [i for i, t in enumerate(parts) if not torch.isfinite(t).all()]
        if bad:
            raise UserError(f"{ck.path}: the model gives NaN or infinite {what} on {name} "
                            f"{split} (batch {bad[0]}); its weights hold NaN/inf or overflow")
    weight, bias = head.linear_map()
    no_head = ck.head_spec.kind == "none"  # z would be a copy of h: absent, not duplicated
    fs = FeatureSet(h=torch.cat(hs), z=None if no_head else torch.cat(zs), y=part.labels.clone(),
                    weight=weight.float().cpu(), bias=None if bias is None else bias.float().cpu(),
                    split=split, meta={"checkpoint": str(ck.path), "data": name})
    if key is not None:
        try:
            atomic_torch_save(_featureset_to_dict(fs), feature_cache_dir() / f"{key}.pt")
        except Exception:  # noqa: BLE001 - any write failure (torch.save raises RuntimeError
            pass  # on a full disk, not OSError): the cache only costs time, so go on without it
    return fs


def extract_bundle(checkpoint, data: str | None = None, *, train_split: str = "train",
                   test_split: str = "test", **kw) -> FeatureBundle:
    """Train and test features of one checkpoint (the dataset is loaded once)."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    train = extract(ck, data, train_split, **kw)
    test = extract(ck, data, test_split, **kw)
    return FeatureBundle(train=train, test=test, source=str(ck.path))


def _featureset_to_dict(fs: FeatureSet) -> dict:
    d = {"h": fs.h, "y": fs.y}
    if fs.z is not None:
        d["z"] = fs.z
    if fs.weight is not None:
        d["head"] = {"weight": fs.weight, **({"bias": fs.bias} if fs.bias is not None else {})}
    return d


#: most distinct class labels a feature file may hold (labels are remapped to 0..C-1 first,
#: so this bounds the (N, C) score and one-hot matrices the probes build)
MAX_CLASSES = 100_000


def _check_tensor(t: object, name: str, where: str, split: str) -> torch.Tensor:
    """A dense, real tensor, or a one-line UserError naming the entry."""
    if not isinstance(t, torch.Tensor):
        raise UserError(f"{where}: {split}.{name} is not a tensor ({type(t).__name__})")
    if t.layout != torch.strided:
        raise UserError(f"{where}: {split}.{name} is a sparse tensor ({t.layout}); save it "
                        "dense (.to_dense())")
    if t.is_complex():
        raise UserError(f"{where}: {split}.{name} is complex ({t.dtype}); features must be real")
    return t


def _feature_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 features stay float64 (their range and precision are kept through rank and
    spectrum), integers become float64 (exact up to 2^53); other floats compute in float32."""
    return torch.float64 if t.dtype == torch.float64 or not t.is_floating_point() else torch.float32


def _featureset_from_dict(d: dict, split: str, head: dict | None = None,
                          where: str = "features") -> FeatureSet:
    if not isinstance(d, dict) or "h" not in d or "y" not in d:
        raise UserError(f"{where}: split '{split}' needs tensors 'h' and 'y'")
    head = head if head is not None else d.get("head")
    if head is not None and not isinstance(head, dict):
        raise UserError(f"{where}: head must be a dict {{'weight': (d, m), 'bias': (d,)}}, got "
                        f"{type(head).__name__}")
    h = _check_tensor(d["h"], "h", where, split)
    y = _check_tensor(d["y"], "y", where, split)
    z = None if d.get("z") is None else _check_tensor(d["z"], "z", where, split)
    if h.ndim != 2:
        raise UserError(f"{where}: {split}.h must be 2-D (N, m), got shape {tuple(h.shape)}")
    if h.shape[0] < 2 or h.shape[1] < 1:
        raise UserError(f"{where}: {split}.h has shape {tuple(h.shape)}; every split needs at "
                        "least 2 samples and 1 feature")
    if y.ndim != 1 or len(y) != len(h):
        raise UserError(f"{where}: {split}.y must have shape ({len(h)},), got {tuple(y.shape)}")
    if z is not None and (z.ndim != 2 or len(z) != len(h) or z.shape[1] < 1):
        raise UserError(f"{where}: {split}.z must be 2-D with {len(h)} rows, got {tuple(z.shape)}")
    for name, t in (("h", h), ("z", z)):
        if t is not None and t.dtype == torch.bool:
            raise UserError(f"{where}: {split}.{name} is boolean; features must be numbers")
        if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{where}: {split}.{name} contains NaN or infinite values")
    if y.dtype == torch.bool:
        raise UserError(f"{where}: {split}.y must hold class indices 0, 1, 2, ... (got bool)")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not torch.equal(y, y.round()):
            raise UserError(f"{where}: {split}.y holds non-integer class labels (e.g. "
                            f"{y[y != y.round()][:1].tolist() or 'NaN'}); labels must be integers")
        if y.abs().max() >= 2**53:
            raise UserError(f"{where}: {split}.y holds labels beyond 2^53 in {y.dtype}, which "
                            "cannot tell neighbouring integers apart; store them as int64")
    weight = bias = None
    if head:
        weight = head.get("weight")
        if isinstance(weight, torch.Tensor):
            _check_tensor(weight, "weight", where, "head")
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != h.shape[1]:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
            raise UserError(f"{where}: head.weight must be (d, {h.shape[1]}) to match h, "
                            f"got {shape}")
        if weight.dtype == torch.bool or (weight.is_floating_point()
                                          and not torch.isfinite(weight).all()):
            raise UserError(f"{where}: head.weight must hold finite numbers")
        bias = head.get("bias")
        if bias is not None:
            _check_tensor(bias, "bias", where, "head")
            if tuple(bias.shape) != (weight.shape[0],):
                raise UserError(f"{where}: head.bias must have shape ({weight.shape[0]},) to "
                                f"match head.weight, got {tuple(bias.shape)}")
    dtype = _feature_dtype(h)
    fs = FeatureSet(h=h.to(dtype), y=y.long(), z=None if z is None else z.to(_feature_dtype(z)),
                    weight=None if weight is None else weight.to(dtype),
                    bias=None if bias is None else bias.to(dtype), split=split)
    for name, t in (("h", fs.h), ("z", fs.z)):  # e.g. int64 beyond float32's range
        if t is not None and not torch.isfinite(t).all():
            raise UserError(f"{where}: {split}.{name} holds values beyond the range of "
                            f"{t.dtype}; store them as float64")
    return fs


def _remap_labels(train: FeatureSet, test: FeatureSet, where: str) -> list[int] | None:
    """Map the labels of both splits together onto 0..C-1 (sorted original values), in place.

    Probes allocate (N, C) scores and one-hot rows, so labels {0, 1e6, 2e6} must
    become {0, 1, 2} before they reach them. Returns the original label values
    when the mapping is not the identity, else None. More than
    :data:`MAX_CLASSES` distinct labels are refused.
    """
    values, inverse = torch.unique(torch.cat([train.y, test.y]), return_inverse=True)
    if len(values) > MAX_CLASSES:
        raise UserError(f"{where}: the labels hold {len(values)} distinct classes; at most "
                        f"{MAX_CLASSES} are supported")
    if int(values[0]) == 0 and int(values[-1]) == len(values) - 1:
        return None
    train.y, test.y = inverse[:len(train.y)].clone(), inverse[len(train.y):].clone()
    return values.tolist()


def save_features(path: str | os.PathLike, train: FeatureSet, test: FeatureSet) -> None:
    """Write a feature file (format in the module docstring), atomically."""
    out = {"train": {k: v for k, v in _featureset_to_dict(train).items() if k != "head"},
           "test": {k: v for k, v in _featureset_to_dict(test).items() if k != "head"}}
    src = test if test.weight is not None else train
    if src.weight is not None:
        out["head"] = {"weight": src.weight}
        if src.bias is not None:
            out["head"]["bias"] = src.bias
    atomic_torch_save(out, path)


def load_features(path: str | os.PathLike) -> FeatureBundle:
    """Read a feature file; wrong shapes or NaN features give a one-line UserError."""
    return features_from_dict(safe_torch_load(path, "feature file"), str(path))


def features_from_dict(raw: object, path: str) -> FeatureBundle:
    """Validate a loaded feature-file dict and build the FeatureBundle."""
    if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
        raise UserError(f"{path}: not a feature file (needs 'train' and 'test' entries)")
    head = raw.get("head")
    if head is not None and not isinstance(head, dict):
        raise UserError(f"{path}: head must be a dict {{'weight': (d, m), 'bias': (d,)}}, got "
                        f"{type(head).__name__}")
    train = _featureset_from_dict(raw["train"], "train", head or {}, str(path))
    test = _featureset_from_dict(raw["test"], "test", head or {}, str(path))
    if train.h.dtype != test.h.dtype:  # one precision for both splits (probes mix them)
        train, test = (_promote(fs) for fs in (train, test))
    original = _remap_labels(train, test, str(path))
    if original is not None:
        for fs in (train, test):
            fs.meta["label_values"] = original
    if train.h.shape[1] != test.h.shape[1]:
        raise UserError(f"{path}: train.h has {train.h.shape[1]} columns, test.h "
                        f"{test.h.shape[1]}")
    if (train.z is None) != (test.z is None) or (
            train.z is not None and train.z.shape[1] != test.z.shape[1]):
        raise UserError(f"{path}: train.z and test.z must both be present with equal widths")
    return FeatureBundle(train=train, test=test, source=str(path))


def _promote(fs: FeatureSet) -> FeatureSet:
    """The same features in float64."""
    def f64(t):
        return None if t is None else t.double()

    return FeatureSet(h=f64(fs.h), y=fs.y, z=f64(fs.z), weight=f64(fs.weight), bias=f64(fs.bias),
                      split=fs.split, meta=fs.meta)


def is_feature_file(raw: object) -> bool:
    """True for a loaded dict in feature-file layout."""
    return isinstance(raw, dict) and "train" in raw and "test" in raw and "format" not in raw


class FeatureSource:
    """Features of one model by split, from a feature file or a checkpoint (extracted lazily).

    ``get(split)`` returns a :class:`FeatureSet`; a checkpoint's splits are
    extracted on first use (and cached on disk by :func:`extract`).
    """

    def __init__(self, path: str | os.PathLike, data: str | None = None, *, key_map=(),
                 options: dict | None = None, **extract_kw):
        self.path = str(path)
        self.name = Path(path).name
        raw = safe_torch_load(path, "checkpoint or feature file")
        self._sets: dict[str, FeatureSet] = {}
        self.checkpoint: Checkpoint | None = None
        if is_feature_file(raw):
            bundle = features_from_dict(raw, self.path)
            self._sets = {"train": bundle.train, "test": bundle.test}
        else:
            from repdiag.checkpoint import checkpoint_from_dict

            self.checkpoint = checkpoint_from_dict(raw, self.path, tuple(key_map), options)
        self.data = data
        self.extract_kw = extract_kw
        self._dataset = None

    def _load_dataset(self):
        """The dataset, loaded once for all splits (only when a split is not cached)."""
        if self._dataset is None:
            self._dataset = dataset_for(self.checkpoint, self.data,
                                        self.extract_kw.get("data_root"),
                                        self.extract_kw.get("limit"))
        return self._dataset

    def class_names(self) -> list[str] | None:
        """The dataset's class names (checkpoints only; None for feature files or on failure)."""
        if self.checkpoint is None:  # a feature file: its own label values, if remapped
            values = next(iter(self._sets.values())).meta.get("label_values")
            return None if values is None else [str(v) for v in values]
        try:
            return list(self._load_dataset().train.classes)
        except UserError:
            return None

    def get(self, split: str) -> FeatureSet:
        """The features of ``split`` (train, val or test)."""
        if split not in self._sets:
            if self.checkpoint is None:
                raise UserError(f"{self.path}: a feature file holds only the splits "
                                f"{', '.join(self._sets)}; no '{split}'")
            fs = extract(self.checkpoint, self.data, split, dataset=self._load_dataset,
                         **self.extract_kw)
            if len(fs) < 2:
                raise UserError(f"{self.path}: the {split} split has {len(fs)} sample; the "
                                "diagnostics need at least 2 (raise --limit or use a larger "
                                "split)")
            self._sets[split] = fs
        return self._sets[split]
