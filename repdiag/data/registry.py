"""The dataset registry and :func:`load_dataset`.

A loader is a function registered with ``@register("name")``. It is called
with keyword arguments ``root`` (a ``Path`` or ``None``), ``seed`` and, for
loaders registered with ``takes_arg=True`` (``imagefolder:PATH``), ``arg``
(the text after the colon, or ``None``), plus any dataset-specific options
the user passed to :func:`load_dataset`. It returns the dataset's own
``(train, test)`` splits as :class:`ImageSplit`; validation carving, split
schemes and ``limit`` are applied here, the same way for every dataset.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repdiag.data.base import Dataset, ImageSplit
from repdiag.data.splits import SPLIT_SCHEMES, apply_limit, carve_val, scheme_s
from repdiag.errors import UserError

Loader = Callable[..., tuple[ImageSplit, ImageSplit]]
_RESERVED = ("root", "seed", "arg")


@dataclass(frozen=True)
class _Entry:
    name: str
    loader: Loader
    takes_arg: bool
    options: tuple[str, ...]  # the dataset-specific keyword options


REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, takes_arg: bool = False) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader`` under ``name`` (see module doc for the protocol)."""

    def deco(loader: Loader) -> Loader:
        if name in REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        params = inspect.signature(loader).parameters
        options = tuple(p for p in params if p not in _RESERVED)
        REGISTRY[name] = _Entry(name, loader, takes_arg, options)
        return loader

    return deco


def _display_name(entry: _Entry) -> str:
    return f"{entry.name}:PATH" if entry.takes_arg else entry.name


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted (``imagefolder:PATH`` takes a path)."""
    return sorted(_display_name(e) for e in REGISTRY.values())


def _lookup(name: str) -> tuple[_Entry, str | None]:
    key, sep, arg = name.partition(":")
    key = key.strip().lower().replace("_", "-")
    entry = REGISTRY.get(key)
    if entry is None:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    if sep and not entry.takes_arg:
        raise UserError(f"dataset {key!r} takes no ':' argument (got {name!r})")
    return entry, (arg if sep and arg else None)


#: run-config keys that are dataset options, and the loader keyword each one maps to
CONFIG_OPTIONS = {"image_size": "image_size", "label_level": "annotation_level"}


def dataset_kwargs(config: Mapping[str, Any], *, for_dataset: str | None = None) -> dict[str, Any]:
    """The :func:`load_dataset` keyword arguments a run config records (seed, split, options).

    The trainer and the feature extractor both call this, so a checkpoint's
    features come from exactly the splits, image size and labels it was
    trained on. Splits are seeded by ``split_seed`` when the config sets one
    (paper S keeps one 70/10/20 split for all runs), else by ``seed``.
    ``for_dataset`` (a dataset other than the config's, e.g. ``--data``) keeps
    only the options that dataset accepts.
    """
    split_seed = config.get("split_seed")
    kw: dict[str, Any] = {
        "seed": int(split_seed if split_seed is not None else config.get("seed", 0) or 0),
        "val_fraction": float(config.get("val_fraction", 0.1)),
        "split_scheme": config.get("split_scheme") or "standard",
    }
    for key, option in CONFIG_OPTIONS.items():
        if config.get(key) is not None:
            kw[option] = config[key]
    if for_dataset is not None:
        entry, _ = _lookup(for_dataset)
        kw = {k: v for k, v in kw.items() if k in _GENERIC or k in entry.options}
    return kw


_GENERIC = ("seed", "val_fraction", "split_scheme")


def check_dataset_options(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise a UserError if dataset ``name`` does not exist or does not take one of ``kwargs``."""
    entry, _ = _lookup(name)
    scheme = kwargs.get("split_scheme", "standard")
    if scheme not in SPLIT_SCHEMES:
        raise UserError(f"unknown split_scheme {scheme!r}; valid: {', '.join(SPLIT_SCHEMES)}")
    config_name = {v: k for k, v in CONFIG_OPTIONS.items()}
    bad = sorted(config_name.get(k, k) for k in kwargs if k not in _GENERIC and k not in entry.options)
    if bad:
        takes = sorted(config_name.get(o, o) for o in entry.options if o != "download")
        raise UserError(f"dataset {entry.name!r} does not take {', '.join(bad)}; it takes: "
                        f"{', '.join(takes) or 'no options'}")


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    split_scheme: str = "standard",
    limit: int | None = None,
    **kw: Any,
) -> Dataset:
    """Load dataset ``name`` into memory with train/val/test splits.

    Args:
        name: a name from :func:`list_datasets`, e.g. ``"fashion-mnist"``,
            ``"synthetic"`` or ``"imagefolder:/path/to/folder"``.
        root: where the data is (see :mod:`repdiag.data.paths`); when given,
            no other location is searched.
        val_fraction: fraction of the official train split carved off
            (stratified, seeded) as validation; 0 gives an empty val split.
            Ignored by ``split_scheme="s"``.
        seed: seeds every random split (and the synthetic generator).
        split_scheme: ``"standard"`` keeps the official test split and carves
            val from train; ``"s"`` pools the official train and test splits
            and cuts the pool 70/10/20 into train/val/test (stratified, seeded).
        limit: if given, each split is capped at ``limit`` samples (a seeded,
            stratified random subset), for quick runs. Applied after splitting
            (the full dataset is still read).
        **kw: dataset-specific options, e.g. ``image_size`` or ``n_train`` (see each
            loader's docstring); unknown ones are a UserError. ``download=False``
            forbids downloads and is accepted (and ignored) by every dataset.
    """
    entry, arg = _lookup(name)
    if "download" in kw and "download" not in entry.options:
        del kw["download"]  # generic option; meaningless for local/generated datasets
    unknown = sorted(set(kw) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) or "none"
        raise UserError(
            f"dataset {entry.name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {allowed}"
        )
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        vf = math.nan
    if not 0 <= vf < 1:  # also rejects NaN
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if split_scheme not in SPLIT_SCHEMES:
        raise UserError(f"unknown split_scheme {split_scheme!r}; valid: {', '.join(SPLIT_SCHEMES)}")
    if limit is not None:
        try:
            cap = operator.index(limit)
        except TypeError:
            cap = 0
        if isinstance(limit, bool) or cap < 1:
            raise UserError(f"limit must be a positive integer, got {limit!r}")
        limit = cap

    try:
        seed = operator.index(seed)
    except TypeError:
        raise UserError(f"seed must be an integer, got {seed!r}") from None

    call: dict[str, Any] = dict(kw, root=Path(root).expanduser() if root is not None else None)
    call["seed"] = seed
    if entry.takes_arg:
        call["arg"] = arg
    train, test = entry.loader(**call)

    if split_scheme == "s":
        train, val, test = scheme_s(train, test, seed)
    else:
        train, val = carve_val(train, vf, seed)
    if limit is not None:
        train = apply_limit(train, limit, seed, salt=0)
        val = apply_limit(val, limit, seed, salt=1)
        test = apply_limit(test, limit, seed, salt=2)

    full_name = f"{entry.name}:{arg}" if entry.takes_arg and arg else entry.name
    return Dataset(
        name=full_name,
        train=train,
        val=val,
        test=test,
        num_classes=len(train.classes),
        image_size=int(train.images.shape[-1]),
    )
