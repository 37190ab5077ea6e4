"""Where datasets live on disk, and whether downloads are allowed.

Search order for dataset ``<name>``:

1. ``root`` if the caller gave one (then *only* there: an explicit root is
   never silently replaced by another location);
2. ``$REPDIAG_DATA/<name>`` if the environment variable is set;
3. dataset-specific system locations (e.g. ``/usr/share/datasets/fashion-mnist``);
4. the cache, ``<cache>/<name>`` (:func:`cache_dir`).

Downloads (where a dataset has one) go to ``root`` if given, else
``$REPDIAG_DATA/<name>`` if set, else the cache. Set ``REPDIAG_NO_DOWNLOAD=1``
to forbid every download (or pass ``download=False`` to ``load_dataset``).

repdiag's cache folder ``<cache>`` (:func:`cache_dir`) is the first of
``$REPDIAG_CACHE``, ``$XDG_CACHE_HOME/repdiag``, ``~/.cache/repdiag``: datasets
download into ``<cache>/<name>`` and extracted features are cached in
``<cache>/features`` (:mod:`repdiag.features`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from repdiag.errors import UserError, reason

T = TypeVar("T")


def cache_dir() -> Path:
    """repdiag's cache folder: ``$REPDIAG_CACHE`` if set, else ``$XDG_CACHE_HOME/repdiag``,
    else ``~/.cache/repdiag`` (the one rule for datasets and extracted features)."""
    own = os.environ.get("REPDIAG_CACHE")
    if own:
        return Path(own).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "repdiag"


def candidate_dirs(name: str, root: Path | None, system: tuple[str, ...] = ()) -> list[Path]:
    """The directories to look in for dataset ``name``, in order (see module doc)."""
    if root is not None:
        return [root]
    dirs = []
    env = os.environ.get("REPDIAG_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.extend(Path(p) for p in system)
    dirs.append(cache_dir() / name)
    return dirs


def download_dir(name: str, root: Path | None) -> Path:
    """Where a download of dataset ``name`` goes."""
    if root is not None:
        return root
    env = os.environ.get("REPDIAG_DATA")
    if env:
        return Path(env).expanduser() / name
    return cache_dir() / name


def downloads_allowed(download: bool) -> bool:
    """``download`` unless ``REPDIAG_NO_DOWNLOAD`` is set to something other than 0/empty."""
    flag = os.environ.get("REPDIAG_NO_DOWNLOAD", "").strip().lower()
    return download and flag in ("", "0", "false", "no")


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove the given folders (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def via_torchvision(
    name: str, make: Callable[[Path, bool], T], root: Path | None, download: bool, hint: str
) -> T:
    """Build a torchvision dataset object, downloading it if needed and allowed.

    ``make(directory, download)`` constructs the object. The local copy is
    tried first (so an existing copy never prints download chatter); if that
    fails and downloads are allowed, the download is tried. Any failure ends in
    a one-line :class:`UserError` ending with ``hint`` (how to get the data).
    """
    target = download_dir(name, root)
    try:
        return make(target, False)
    except Exception as local_err:  # noqa: BLE001 - missing: RuntimeError; corrupt: anything
        if not downloads_allowed(download):
            detail = f" ({reason(local_err, typed=True, limit=160)})"
            raise UserError(
                f"dataset {name!r} not found in {target}{detail} and downloads are disabled; {hint}"
            ) from None
    created = missing_folders(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        return make(target, True)
    except Exception as err:  # noqa: BLE001 - network, checksum, disk errors all end here
        remove_empty_folders(created)  # a failed download leaves no empty folders behind
        raise UserError(
            f"dataset {name!r} not found in {target} and the download failed "
            f"({reason(err, typed=True, limit=160)}); {hint}"
        ) from None
