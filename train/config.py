"""Typed run configuration, YAML presets and ``--set key=value`` overrides.

A run is described by :class:`TrainConfig`, a tree of dataclasses
(:mod:`train.settings`). Presets are YAML files in ``train/presets/`` (or any
YAML path) holding a partial tree; ``--set head.kind=linear`` overrides one
dotted field, with the value parsed to the field's declared type. Unknown keys
and badly typed values are user errors (one line, exit code 2), and so is
every impossible setting or combination (:func:`validate`, before any work):
the names of methods, schemes and optimisers come from their registries
(:data:`train.methods.METHODS`, :data:`train.schemes.SCHEMES`,
:mod:`train.optim`), each scheme checks its own part of the config, and the
head section is checked as the head the run will build.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from pathlib import Path

from repdiag.errors import UserError
from repdiag.models import HeadSpec
from repdiag.runs import SELECT
from train.methods import METHODS
from train.optim import OPTIMIZERS, SCHEDULES
from train.schemes import SCHEMES
from train.schemes.bilevel import INNER_OPTIMIZERS
from train.settings import (  # noqa: F401  (the config tree, importable from here as well)
    AugmentSettings,
    HeadConfig,
    OptimConfig,
    SchemeConfig,
    TrainConfig,
)
from train.yaml_data import load_yaml, read_yaml_file

PRESET_DIR = Path(__file__).parent / "presets"


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
    SCHEMES[cfg.scheme.kind].check_config(cfg)  # first: it may settle head.kind (PCA)
    cfg.head.check()
    check_head(cfg)
    _validate_scheme_fields(cfg)


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


def check_head(cfg: TrainConfig) -> None:
    """The head the run will build, checked before any work: with the backbone's feature size
    m known from the config (the ResNets), ``HeadSpec.from_options(cfg.head, m)`` must be valid
    (e.g. DirectCLR's d0 in 1..m); for other backbones that check waits for the backbone."""
    m = backbone_feature_dim(cfg.backbone, cfg.width)
    if m is not None:
        HeadSpec.from_options(cfg.head, m).validate()


def _validate_scheme_fields(cfg: TrainConfig) -> None:
    """The numbers of the scheme section (whatever the scheme: a preset may set them for a
    later ``--set scheme.kind``) and the SimSiam predictor width."""
    s = cfg.scheme
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
def _meta_backbone(name: str, width: float) -> tuple[int, int]:
    """(parameters, feature size m) of ResNet ``name`` at ``width``, built on the meta device."""
    import torch

    from repdiag.models import BackboneSpec, build_backbone

    with torch.device("meta"):
        net = build_backbone(BackboneSpec(name, width, True))
    return sum(p.numel() for p in net.parameters()), int(net.feature_dim)


def backbone_parameters(name: str, width: float) -> int:
    """Number of parameters of ``name`` at ``width``, counted on the meta device (no memory)."""
    return _meta_backbone(name, width)[0]


def backbone_feature_dim(name: str, width: float) -> int | None:
    """The feature size m of backbone ``name`` at ``width`` (None where the config alone does
    not decide it: backbones other than the ResNets)."""
    from repdiag.models import BACKBONES

    if name not in BACKBONES:
        return None
    return _meta_backbone(name, width)[1]


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
    """Paper S's ImageNet-initialised backbone: what can be checked early (its autoencoder
    head is checked with the head section, :meth:`train.settings.HeadConfig.check`)."""
    if cfg.pretrained_backbone is not None:
        if cfg.pretrained_backbone != "imagenet":
            raise UserError(f"unknown pretrained_backbone '{cfg.pretrained_backbone}'; "
                            "known: imagenet (or null for a random init)")
        if cfg.width != 1:
            raise UserError(f"pretrained_backbone=imagenet needs width 1, got {cfg.width:g}")
        if cfg.cifar_stem:
            raise UserError("pretrained_backbone=imagenet needs torchvision's 7x7 stem: "
                            "--set cifar_stem=false")
