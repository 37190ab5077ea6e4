"""The run store: a run folder is trained, resumed, reused or refused, and evaluations of its
checkpoints are cached beside them.

``repdiag sweep`` and the analysis scripts both ask for "the finished run of this config in
this folder" (:func:`ensure_run`):

- no ``last.pt``: the run is trained;
- a ``last.pt`` of the same config that reached the run's epochs: reused as it is
  (``best.pt`` brought up to date if a stop left it behind, :func:`repdiag.runs.repair_best`);
- an earlier ``last.pt`` of the same config: resumed from it;
- a ``last.pt`` of another config: refused in one line naming the keys that differ
  (``epochs`` may differ: a longer run resumes a shorter one).

The folder is locked (:class:`repdiag.runs.RunLock`) while this happens. An evaluation
(probe accuracies, ranks) of a checkpoint is cached as ``<prefix>-<stem>-<key>.json``
beside it, ``key`` hashing the checkpoint's bytes and the evaluation's settings
(:func:`cached_evaluation`): a retrained or resumed checkpoint, or other settings, are
measured again; a damaged cache file is too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from repdiag.errors import UserError
from repdiag.files import atomic_write_text, file_digest
from repdiag.runs import RunLock, repair_best
from train.config import TrainConfig
from train.output import checked

# fields the trainer fills in when they are left unset (DirectCLR's d0, the autoencoder it
# trained for head.kind=ae) and writes back into the run's config
FILLED_BY_TRAINER = ("head.d0", "head.ae_checkpoint")


@dataclass
class StoredRun:
    """What a run folder's ``last.pt`` says: the epoch reached, the config, the metrics."""

    epoch: int
    config: dict
    metrics: list = field(default_factory=list)


@dataclass
class Outcome:
    """What :func:`ensure_run` did: ``action`` is ``reused``, ``resumed`` or ``trained``;
    ``status`` ``finished`` or ``diverged: ...``; ``run`` the folder's state afterwards
    (None when a run diverged before its first checkpoint)."""

    action: str
    status: str
    run: StoredRun | None


def stored_run(run_dir: str | os.PathLike) -> StoredRun | None:
    """The state of a run folder's ``last.pt``, or None when there is none; a file that is
    not a repdiag run checkpoint, or a damaged one, is a one-line UserError."""
    from repdiag.checkpoint import safe_torch_load

    last = Path(run_dir) / "last.pt"
    if not last.exists():
        return None
    raw = safe_torch_load(last, "checkpoint")
    if not isinstance(raw, dict) or "epoch" not in raw:
        raise UserError(f"{last}: not a repdiag run checkpoint; remove the folder to rerun it")
    epoch, config, metrics = raw["epoch"], raw.get("config") or {}, raw.get("metrics") or []
    if (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0
            or not isinstance(config, dict) or not isinstance(metrics, list)
            or not all(isinstance(m, dict) for m in metrics)):
        raise UserError(f"{last}: damaged repdiag run checkpoint (epoch, config or metrics of "
                        "the wrong type); remove the folder to rerun it")
    return StoredRun(epoch, dict(config), list(metrics))


def config_difference(stored: dict, wanted: dict, prefix: str = "") -> str | None:
    """The keys in which a stored run config differs from the wanted one, as
    ``"key (folder: a, grid: b)"`` joined by ``", "`` (dotted keys, sorted), or None.

    ``epochs`` never counts (a longer run resumes a shorter one), nor two paths to one
    existing file, nor keys the stored config lacks (fields newer than the run), nor
    :data:`FILLED_BY_TRAINER` fields the wanted config leaves unset.
    """
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        if (not prefix and key == "epochs") or key not in stored:  # newer fields: lenient
            continue
        if f"{prefix}{key}" in FILLED_BY_TRAINER and wanted.get(key) is None:
            continue
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            d = config_difference(a, b, f"{prefix}{key}.")
            if d:
                diffs.append(d)
        elif a != b and not _same_file(a, b):
            diffs.append(f"{prefix}{key} (folder: {a!r}, grid: {b!r})")
    return ", ".join(diffs) or None


def _same_file(a, b) -> bool:
    """Two path values naming one existing file (e.g. ``head.pretrained`` reached through a
    symbolic link or as a relative path): the same setting, not a different run."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_folder(run_dir: Path, cfg: TrainConfig, other: str) -> StoredRun | None:
    """The stored state of ``run_dir`` if it holds a run of ``cfg`` (or None if none); a
    folder holding another config is refused in one line (``other``: the option that picks
    another folder, e.g. ``--out``)."""
    state = stored_run(run_dir)
    if state is not None:
        diff = config_difference(state.config, cfg.to_dict())
        if diff:
            raise UserError(f"{run_dir} holds a run with another config: {diff}; "
                            f"remove the folder or use another {other}")
    return state


def ensure_run(cfg: TrainConfig, run_dir: str | os.PathLike, *, quiet: bool = False,
               other: str = "--out", epoch_hooks: Sequence = (),
               before_training: Callable[[StoredRun | None], None] | None = None,
               keep_diverged: bool = False, lock: RunLock | None = None) -> Outcome:
    """Make ``run_dir`` hold the finished run of ``cfg``: reuse, resume or train it (see the
    module docstring); a folder holding another config is refused before anything is written.

    ``before_training(state)`` is called just before a run is trained (``state`` None) or
    resumed. ``epoch_hooks`` go to the :class:`train.trainer.Trainer`. A run whose loss
    diverges raises ``FloatingPointError`` unless ``keep_diverged`` (then the outcome's
    status says ``diverged: ...``). The folder is locked throughout; a ``lock`` passed in
    is left held for the caller to release (to keep the folder through its evaluation).
    """
    from train.trainer import Trainer

    run_dir = Path(run_dir)
    own = lock is None
    lock = RunLock(run_dir) if own else lock
    try:
        if run_dir.is_dir():
            lock.acquire()
        state = check_folder(run_dir, cfg, other)
        if state is not None and state.epoch >= cfg.epochs:
            checked(run_dir / "best.pt", lambda: repair_best(run_dir, state.epoch, state.metrics))
            return Outcome("reused", "finished", state)
        if before_training is not None:
            before_training(state)
        try:
            trainer = Trainer(cfg, run_dir, quiet=quiet, resume=state is not None,
                              epoch_hooks=list(epoch_hooks))
            lock.acquire()  # held on from the trainer's own claim
            trainer.run()
            status = "finished"
        except FloatingPointError as e:  # a diverged run is a result, not a failure, if asked
            if not keep_diverged:
                raise
            status = f"diverged: {e}"
        return Outcome("resumed" if state is not None else "trained", status, stored_run(run_dir))
    finally:
        if own:
            lock.release()


def evaluation_key(checkpoint: str | os.PathLike, settings: Sequence) -> str:
    """The cache key of an evaluation: 16 hex digits of the SHA-256 of the JSON list of the
    checkpoint's digest (16 hex digits of its bytes' SHA-256) followed by ``settings``."""
    blob = json.dumps([file_digest(checkpoint, 16), *settings])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_evaluation(checkpoint: str | os.PathLike, settings: Sequence,
                      compute: Callable[[], dict], *, prefix: str = "eval",
                      check: Callable[[dict], bool] | None = None) -> dict:
    """``compute()`` for ``checkpoint`` under ``settings`` (a JSON list), cached beside the
    checkpoint as ``<prefix>-<stem>-<key>.json`` (:func:`evaluation_key`); a cache file that
    is not a JSON object (or fails ``check``) is measured again and replaced."""
    checkpoint = Path(checkpoint)
    cache = checkpoint.parent / f"{prefix}-{checkpoint.stem}-{evaluation_key(checkpoint, settings)}.json"
    try:
        cached = json.loads(cache.read_text())
        if isinstance(cached, dict) and (check is None or check(cached)):
            return cached
    except (OSError, UnicodeDecodeError, ValueError):
        pass  # missing or damaged: a cache only saves time
    out = compute()
    checked(cache, lambda: atomic_write_text(cache, json.dumps(out, indent=1)))
    return out
