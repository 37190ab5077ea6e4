"""Typed run configuration, YAML presets and ``--set key=value`` overrides.

A run is described by :class:`TrainConfig`, a tree of dataclasses. Presets are
YAML files in ``train/presets/`` (or any YAML path) holding a partial tree;
``--set head.kind=linear`` overrides one dotted field, with the value parsed to
the field's declared type. Unknown keys and badly typed values are user
errors (one line, exit code 2).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from repdiag.errors import UserError
from repdiag.runs import SELECT
from train.yaml_data import load_yaml, read_yaml_file

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class HeadConfig:
    """Projection head (see repdiag.models.HeadSpec); paper G: MLP m->512->128."""

    kind: str = "mlp"
    hidden_dim: int = 512
    out_dim: int = 128
    activation: str = "relu"
    bias: bool = True
    batchnorm: bool = True
    num_layers: int = 2
    # DirectCLR: z = h[:, :d0]. None = DirectCLR's 360 of a 2048-d ResNet-50 scaled to the
    # backbone's feature size m, round(360 * m / 2048) (22 for m = 128); the value used is
    # written back into the run's config.
    d0: int | None = None
    init: str = "default"
    last_bn: bool = False
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


METHODS = ("simclr", "simsiam")
SCHEMES = ("joint", "fixed", "pca-top", "pca-bottom", "slow-single", "slow-optimal", "bilevel")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine")
INNER_OPTIMIZERS = ("adam", "sgd")
LABEL_LEVELS = ("variant", "family", "manufacturer")  # FGVC-Aircraft: 100 / 70 / 30 classes


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Build a TrainConfig from a preset name or YAML path, then apply ``key=value`` overrides.

    A name that exists as a file, contains a path separator or ends in
    ``.yaml``/``.yml`` is a file: a folder, a special file, a binary or non-YAML
    file is refused in one line that says so (never "unknown preset").
    """
    path = config_path(name_or_path)
    tree = read_yaml_file(path, "YAML config file")
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: not a YAML config (expected a mapping of config keys, got "
                        f"{_kind(tree)})")
    cfg = from_dict(TrainConfig, tree, where=str(path))
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def config_path(name_or_path: str) -> Path:
    """The file a ``--config`` value names: a path as given, or a shipped preset."""
    path = Path(name_or_path)
    looks_like_path = (os.sep in name_or_path or path.suffix in (".yaml", ".yml")
                       or name_or_path in (".", ".."))
    if looks_like_path:
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():  # a bare preset name wins over a folder of that name here
        return preset
    if path.exists() or path.is_symlink():
        return path
    raise UserError(f"unknown preset '{name_or_path}'; known: {', '.join(list_presets())} "
                    "(or give a path to a YAML file)")


def _kind(value) -> str:
    """'a string', 'a list', ... for messages about what a YAML document held."""
    names = {str: "a string", list: "a list", int: "a number", float: "a number",
             bool: "true/false"}
    return names.get(type(value), type(value).__name__)


def apply_overrides(cfg, overrides) -> None:
    """Apply ``--set key=value`` items (dotted keys, typed values) to a config dataclass."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        set_field(cfg, key.strip(), value.strip())


def from_dict(cls, tree: dict, where: str = "config"):
    """Build dataclass ``cls`` from a nested dict, checking names and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in tree.items():
        if key not in names:
            raise UserError(f"{where}: unknown config key '{key}' in {cls.__name__}; "
                            f"known: {', '.join(sorted(names))}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise UserError(f"{where}: '{key}' must be a mapping")
            kwargs[key] = from_dict(typ, value, where)
        else:
            kwargs[key] = _coerce(value, typ, key)
    return cls(**kwargs)


def set_field(cfg, dotted: str, raw: str) -> None:
    """Set ``cfg.a.b = raw`` parsed to the field's type; unknown keys are user errors."""
    obj = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)}
        if part not in names:
            prefix = ".".join(parts[:i])
            known = ", ".join(sorted((prefix + "." if prefix else "") + n for n in names))
            raise UserError(f"unknown --set key '{dotted}'; known here: {known}")
        typ = typing.get_type_hints(type(obj))[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(typ):
                raise UserError(f"unknown --set key '{dotted}': '{part}' has no sub-fields")
            obj = getattr(obj, part)
        else:
            if dataclasses.is_dataclass(typ):
                raise UserError(f"--set {dotted} needs a sub-field, e.g. {dotted}.kind=...")
            parsed = load_yaml(raw, f"--set {dotted}") if raw != "" else None
            setattr(obj, part, _coerce(parsed, typ, dotted))


def _coerce(value, typ, key: str):
    """Check/convert a YAML-parsed value to the annotated type (int, float, bool, str, X|None)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true or false, got {_short_repr(value)}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected an integer, got {_short_repr(value)}")
    if typ is float:
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value)
        except OverflowError:  # an integer beyond float range
            raise UserError(f"{key}: {_short_repr(value)} is out of range for a number") from None
        except ValueError:
            pass
        raise UserError(f"{key}: expected a number, got {_short_repr(value)}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}: expected a string, got {_short_repr(value)}")
    return value


def _short_repr(value, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters, so a huge value never floods the one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + " ..."


def validate(cfg: TrainConfig) -> None:
    """Refuse impossible settings and invalid combinations at config time."""
    for name in ("seed", "split_seed"):
        value = getattr(cfg, name)
        if value is not None and not 0 <= value <= MAX_SEED:
            raise UserError(f"{name} must be an integer in 0..2^63-1 ({MAX_SEED}), got "
                            f"{_short_repr(value)}")
    if cfg.method not in METHODS:
        raise UserError(f"unknown method '{cfg.method}'; known: {', '.join(METHODS)}")
    if cfg.scheme.kind not in SCHEMES:
        raise UserError(f"unknown scheme '{cfg.scheme.kind}'; known: {', '.join(SCHEMES)}")
    if cfg.optim.name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{cfg.optim.name}'; known: {', '.join(OPTIMIZERS)}")
    if cfg.optim.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{cfg.optim.schedule}'; known: {', '.join(SCHEDULES)}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.batch_size < 2:
        raise UserError("batch_size must be at least 2 (NT-Xent needs negatives)")
    if cfg.save_every < 0 or cfg.knn_every < 0:
        raise UserError("save_every and knn_every must be >= 0 (0 turns them off)")
    _validate_numbers(cfg)
    check_number_fields(cfg)  # after the checks with a more specific message
    if not cfg.temperature > 0:
        raise UserError(f"temperature must be positive, got {cfg.temperature}")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.select not in SELECT:
        raise UserError(f"unknown select '{cfg.select}'; known: {', '.join(SELECT)}")
    if cfg.select == "best" and cfg.split_scheme == "standard" and cfg.val_fraction == 0:
        raise UserError("select=best keeps the checkpoint with the best validation loss, but "
                        "val_fraction=0 leaves no validation split")
    validate_dataset_options(cfg)
    validate_ae_and_pretrained(cfg)
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith(("cuda", "mps")):
        raise UserError(f"unknown device '{cfg.device}'; use auto, cpu, cuda or cuda:N")
    _validate_compute(cfg)
    _validate_scheme(cfg)


def _validate_numbers(cfg: TrainConfig) -> None:
    """Optimiser and monitor numbers: finite and in range (NaN fails every comparison)."""
    o = cfg.optim
    if not (o.lr > 0 and math.isfinite(o.lr)):
        raise UserError(f"optim.lr must be a positive number, got {o.lr}")
    if not (o.weight_decay >= 0 and math.isfinite(o.weight_decay)):
        raise UserError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    if not 0 <= o.momentum < 1:
        raise UserError(f"optim.momentum must be in [0, 1), got {o.momentum}")
    if not 0 <= o.min_lr_ratio <= 1:
        raise UserError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if not (cfg.temperature > 0 and math.isfinite(cfg.temperature)):
        raise UserError(f"temperature must be a positive number, got {cfg.temperature}")
    if cfg.temperature < MIN_TEMPERATURE:
        raise UserError(f"temperature must be at least {MIN_TEMPERATURE:g} (the loss divides "
                        f"cosine similarities by it), got {cfg.temperature:g}")
    for name in ("knn_k", "knn_subset"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.data_limit is not None and cfg.data_limit < 1:
        raise UserError(f"data_limit must be at least 1 (or null), got {cfg.data_limit}")
    if not math.isfinite(cfg.width):
        raise UserError(f"width must be a finite number, got {cfg.width}")
    if not cfg.width > 0:
        raise UserError(f"width must be positive, got {cfg.width}")
    if cfg.width > MAX_WIDTH:
        raise UserError(f"width must be at most {MAX_WIDTH:g} (a ResNet {MAX_WIDTH:g} times as "
                        f"wide as the standard one), got {cfg.width:g}")
    a = cfg.augment
    if not 0 < a.crop_scale_min <= a.crop_scale_max <= 1:
        raise UserError(f"augment crop scales must satisfy 0 < crop_scale_min <= crop_scale_max "
                        f"<= 1, got {a.crop_scale_min}, {a.crop_scale_max}")
    for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
        if not 0 <= getattr(a, name) <= 1:
            raise UserError(f"augment.{name} is a probability in [0, 1], got {getattr(a, name)}")


#: the keys ``--resume`` may change: how long and how the run is monitored or computed, not
#: what it trains
RESUMABLE_KEYS = ("epochs", "save_every", "knn_every", "knn_subset", "knn_k", "device",
                  "data_root", "precision", "channels_last", "compile", "data_on_device",
                  "data_workers", "world_size")

#: the values of keys added after runs were already written, as those runs were trained: a
#: checkpoint whose config lacks a key resumes with this value, not the new default
LEGACY_VALUES = {"precision": "fp32", "channels_last": False, "compile": False, "world_size": 1}


def check_resume_overrides(before: TrainConfig, after: TrainConfig, where: str) -> None:
    """Refuse ``--set`` on ``--resume`` that would change what the stored run trains."""
    old, new = flatten_config(before.to_dict()), flatten_config(after.to_dict())
    for key, value in new.items():
        if key not in RESUMABLE_KEYS and old.get(key) != value:
            raise UserError(f"--set {key}={value} cannot change a run being resumed (it was "
                            f"trained with {key}={old.get(key)}); on --resume only "
                            f"{', '.join(RESUMABLE_KEYS)} can change; start a new run with --out")


def flatten_config(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as one level with dotted keys (``{"head": {"kind": ...}}`` ->
    ``{"head.kind": ...}``), the form ``--set`` takes."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _validate_compute(cfg: TrainConfig) -> None:
    """Precision, layout, data placement and world size: the keys of how a run computes."""
    from repdiag.precision import check_precision

    check_precision(cfg.precision)
    if cfg.data_workers is not None and cfg.data_workers < 0:
        raise UserError(f"data_workers must be >= 0 (or null for the default), got {cfg.data_workers}")
    if cfg.world_size < 1:
        raise UserError(f"world_size must be at least 1, got {cfg.world_size}")


def _validate_scheme(cfg: TrainConfig) -> None:
    """Refuse scheme/method/head combinations that cannot mean anything."""
    s, kind, head = cfg.scheme, cfg.scheme.kind, cfg.head.kind
    if kind.startswith("pca-") and head == "mlp":
        # the PCA schemes define the head: a linear map onto k principal directions of H
        # (paper G §5.2); a preset's MLP head becomes that linear head, recorded as such.
        cfg.head.kind = head = "linear"
    if kind.startswith("pca-") and head != "linear":
        raise UserError(f"scheme.kind={kind} needs head.kind=linear (got '{head}'): the PCA "
                        "scheme replaces the head by the linear map onto principal directions")
    if kind == "slow-optimal" and cfg.method == "simsiam":
        raise UserError("scheme.kind=slow-optimal is not supported with method=simsiam: "
                        "optimising the head to convergence against SimSiam's stop-gradient "
                        "target with a frozen backbone admits the collapsed constant head")
    if kind in ("slow-single", "slow-optimal", "bilevel") and head in ("none", "directclr"):
        raise UserError(f"scheme.kind={kind} updates the head, but head.kind={head} has no "
                        "parameters; use scheme.kind=fixed or a linear/mlp head")
    if cfg.head.d0 is not None and cfg.head.d0 < 1:
        raise UserError(f"head.d0 must be positive, got {cfg.head.d0}")
    if s.inner_steps < 0:
        raise UserError(f"scheme.inner_steps must be >= 0, got {s.inner_steps}")
    if not s.lam >= 0:
        raise UserError(f"scheme.lam must be >= 0, got {s.lam}")
    if s.inner_lr is not None and not s.inner_lr > 0:
        raise UserError(f"scheme.inner_lr must be positive, got {s.inner_lr}")
    if s.inner_optim not in INNER_OPTIMIZERS:
        raise UserError(f"unknown scheme.inner_optim '{s.inner_optim}'; known: "
                        f"{', '.join(INNER_OPTIMIZERS)}")
    if not 0 <= s.inner_momentum < 1:
        raise UserError(f"scheme.inner_momentum must be in [0, 1), got {s.inner_momentum}")
    for name in ("pca_subset", "slow_subset", "slow_max_steps"):
        if getattr(s, name) is not None and getattr(s, name) < 1:
            raise UserError(f"scheme.{name} must be at least 1, got {getattr(s, name)}")
    if not s.slow_tol >= 0:
        raise UserError(f"scheme.slow_tol must be >= 0, got {s.slow_tol}")
    if cfg.pred_hidden is not None and cfg.pred_hidden < 1:
        raise UserError(f"pred_hidden must be positive, got {cfg.pred_hidden}")


def directclr_d0(cfg: TrainConfig, feature_dim: int) -> int:
    """DirectCLR's d0 for a backbone of ``feature_dim`` features: ``head.d0``, or by default
    its reference value 360 (for 2048-d ResNet-50 features) scaled to the feature size."""
    if cfg.head.d0 is not None:
        return cfg.head.d0
    return max(1, round(360 * feature_dim / 2048))


def dataset_options(cfg: TrainConfig) -> dict:
    """The keyword arguments of ``repdiag.data.load_dataset`` that this run's config sets."""
    from repdiag.data import dataset_kwargs

    return dataset_kwargs(cfg.to_dict())


def validate_dataset_options(cfg: TrainConfig) -> None:
    """Split scheme and dataset options that the named dataset accepts (before any work)."""
    from repdiag.data import check_dataset_options

    if cfg.image_size is not None and cfg.image_size < 1:
        raise UserError(f"image_size must be positive, got {cfg.image_size}")
    if cfg.label_level is not None and cfg.label_level not in LABEL_LEVELS:
        raise UserError(f"unknown label_level '{cfg.label_level}'; known: {', '.join(LABEL_LEVELS)}")
    check_dataset_options(cfg.data, dataset_options(cfg))
    check_memory(cfg)


#: seeds (``seed``, ``split_seed``, a grid's ``seeds``) are integers in 0..2^63-1
MAX_SEED = 2**63 - 1
#: the smallest temperature accepted; typical values are 0.05-1
MIN_TEMPERATURE = 1e-6
#: the widest backbone accepted (width multiplies every channel count)
MAX_WIDTH = 64.0
#: every float of a config is used in float32 arithmetic: beyond this it becomes inf
FLOAT32_MAX = 3.4028234663852886e38


def check_number_fields(cfg, prefix: str = "") -> None:
    """Every number of a config tree finite and representable before any work.

    Floats must be finite and within float32 range (training computes in
    float32: ``optim.lr=1e300`` would become inf there); integers must fit in a
    signed 64-bit integer (torch and numpy take nothing wider).
    """
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_number_fields(value, f"{name}.")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
            if abs(value) > FLOAT32_MAX:
                raise UserError(f"{name}={value:g} is beyond float32 range (about 3.4e38), "
                                "where training computes")
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -2**63 <= value <= 2**63 - 1:
                raise UserError(f"{name}: {_short_repr(value)} is out of range (a 64-bit "
                                "integer at most 2^63-1)")


@functools.lru_cache(maxsize=32)
def backbone_parameters(name: str, width: float) -> int:
    """Number of parameters of ``name`` at ``width``, counted on the meta device (no memory)."""
    import torch

    from repdiag.models import BackboneSpec, build_backbone

    with torch.device("meta"):
        net = build_backbone(BackboneSpec(name, width, True))
    return sum(p.numel() for p in net.parameters())


def memory_estimate(cfg: TrainConfig) -> int:
    """A lower bound, in bytes, of the host memory a run needs.

    Parameters of the backbone with their gradients and two Adam moments
    (4 x 4 bytes each), plus, when ``image_size`` is set, the uint8 images kept
    in memory (``data_limit`` of them, or at least one) and one batch of the two
    float32 views (2 x batch x 3 x S^2 x 4 bytes). Activations come on top.
    """
    total = 16 * backbone_parameters(cfg.backbone, cfg.width)
    if cfg.image_size is not None:
        pixels = 3 * cfg.image_size ** 2
        total += pixels * (cfg.data_limit or 1) + 2 * cfg.batch_size * pixels * 4
    return total


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: TrainConfig) -> None:
    """Refuse a width/image_size/batch_size whose memory estimate exceeds this machine's memory."""
    from repdiag.models import BACKBONES

    if cfg.backbone not in BACKBONES:
        return  # named by build_backbone's own error when the run starts
    need, have = memory_estimate(cfg), machine_memory()
    if have is not None and need > have:
        size = f"image_size={cfg.image_size}, " if cfg.image_size is not None else ""
        raise UserError(
            f"width={cfg.width:g}, {size}batch_size={cfg.batch_size} need "
            f"at least {need / 2**30:.1f} GiB (parameters with gradients and Adam state, the "
            f"images, one batch of views), more than this machine's {have / 2**30:.1f} GiB")


def validate_ae_and_pretrained(cfg: TrainConfig) -> None:
    """Paper S's autoencoder head and ImageNet-initialised backbone: what can be checked early."""
    if cfg.head.kind == "ae":
        if cfg.head.ae_epochs < 1:
            raise UserError(f"head.ae_epochs must be at least 1, got {cfg.head.ae_epochs}")
    if cfg.pretrained_backbone is not None:
        if cfg.pretrained_backbone != "imagenet":
            raise UserError(f"unknown pretrained_backbone '{cfg.pretrained_backbone}'; "
                            "known: imagenet (or null for a random init)")
        if cfg.width != 1:
            raise UserError(f"pretrained_backbone=imagenet needs width 1, got {cfg.width:g}")
        if cfg.cifar_stem:
            raise UserError("pretrained_backbone=imagenet needs torchvision's 7x7 stem: "
                            "--set cifar_stem=false")
