"""Run folders as the trainer writes them, and which checkpoint stands for a run.

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``last.pt`` and, when
the run had a validation split, ``best.pt`` (the epoch with the lowest
validation contrastive loss). The run's config names the one that stands for
it (``select``: ``last`` as paper G, ``best`` as paper S); diagnostics and
sweeps take that one unless told otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from repdiag.errors import UserError, user_error
from repdiag.files import atomic_copy

#: which checkpoint stands for a run: ``best.pt`` (paper S) or ``last.pt`` (paper G)
SELECT = ("best", "last")

T = TypeVar("T")


def is_run_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding a run's ``last.pt``."""
    p = Path(path)
    return p.is_dir() and (p / "last.pt").is_file()


def run_checkpoint(folder: str | os.PathLike, select: str | None = None) -> Path:
    """The checkpoint of a run folder: ``best.pt`` or ``last.pt``.

    ``select`` None takes the run's own choice (its config's ``select``,
    ``last`` for runs that predate it).
    """
    folder = Path(folder)
    if not is_run_folder(folder):
        raise UserError(f"{folder}: not a run folder (no last.pt)")
    if select is None:
        from repdiag.checkpoint import load_checkpoint

        select = load_checkpoint(folder / "last.pt").config.get("select") or "last"
    if select not in SELECT:
        raise UserError(f"unknown checkpoint choice {select!r}; use best or last")
    if select == "best":
        best = folder / "best.pt"
        if not best.is_file():
            raise UserError(f"{folder}: no best.pt (the run logged no validation loss); "
                            "use --checkpoint last")
        if best_is_last(folder):  # stopped between last.pt and best.pt: last.pt is the best
            return folder / "last.pt"
        return best
    return folder / "last.pt"


def best_is_last(folder: str | os.PathLike) -> bool:
    """Whether ``last.pt`` holds the best epoch while ``best.pt`` holds another one.

    The trainer writes ``best.pt`` right after ``last.pt``; a run stopped between
    the two has a ``best.pt`` one improvement behind until ``--resume`` repairs it
    (:func:`repair_best`). Reading a run folder (which never writes into it) then
    takes ``last.pt``, the same state ``best.pt`` would hold. Only ``epoch`` and
    ``metrics`` are read (tensors memory-mapped, never loaded); anything unreadable
    answers False and is left to the checkpoint loader to report.
    """
    import torch

    folder = Path(folder)
    try:
        last = torch.load(folder / "last.pt", map_location="cpu", weights_only=True, mmap=True)
        best = torch.load(folder / "best.pt", map_location="cpu", weights_only=True, mmap=True)
        epoch, metrics, best_epoch_held = last["epoch"], list(last["metrics"]), best["epoch"]
    except Exception:  # noqa: BLE001 - damaged files are the loader's to name
        return False
    return best_epoch(metrics) == epoch and best_epoch_held != epoch


LOCK_NAME = ".repdiag-lock"

#: the run-folder locks this process holds: resolved folder -> [open lock file, count]
_HELD: dict[str, list] = {}


class RunLock:
    """One writer per run folder: an exclusive ``fcntl.flock`` on ``FOLDER/.repdiag-lock``.

    Taken by ``train``, ``train --resume`` and ``sweep`` for the whole run. A second
    process asking for the same folder gets a :class:`UserError` naming the
    holder's pid, before it writes anything. The kernel drops the lock when the
    holder exits, however it exits (a SIGKILL included), so a stale lock file
    never blocks anyone. Within one process the lock is re-entrant (the sweep and
    the trainer it runs take the same run folder). Released, the lock file is
    removed while still locked, so a waiting process retries on a fresh file.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.key = os.path.realpath(self.folder)
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock (the folder must exist); UserError if another process holds it."""
        import fcntl

        if self.held:
            return self
        entry = _HELD.get(self.key)
        if entry is not None:
            entry[1] += 1
            self.held = True
            return self
        path = self.folder / LOCK_NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise user_error(f"cannot write to {self.folder}", e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "another process"
                raise UserError(f"{self.folder} is being written by another repdiag process "
                                f"({who}); wait for it to finish or use another folder") from None
            try:  # the holder before us may have removed the file we opened: retry on the new one
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for the message; a full disk must not stop the lock
        _HELD[self.key] = [fd, 1]
        self.held = True
        return self

    def release(self) -> None:
        """Drop this holder's claim; the last one removes the lock file and unlocks."""
        if not self.held:
            return
        self.held = False
        entry = _HELD.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[self.key]
        try:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(entry[0])

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def in_claimed_folder(out: str | os.PathLike, work: Callable[[list[Path]], T], *,
                      keep: Callable[[], bool], option: str = "--out") -> T:
    """Create folder ``out`` (with its missing parents), lock it (:class:`RunLock`) and return
    ``work(written)``, ``work`` appending each file it creates to ``written``.

    When ``work`` fails and ``keep()`` is False (nothing worth keeping was made), the
    files in ``written`` and the folders this call created are removed, so a failed
    command leaves nothing behind; the lock is always released. A folder that cannot be
    made is a one-line error naming ``option``.
    """
    from repdiag.data.paths import missing_folders, remove_empty_folders

    out = Path(out)
    created = missing_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise user_error(f"cannot write to {option} {out}", e) from None
    lock = RunLock(out)
    written: list[Path] = []
    try:
        lock.acquire()
        return work(written)
    except BaseException:
        if not keep():
            for path in written:
                path.unlink(missing_ok=True)
            lock.release()
            remove_empty_folders([p for p in created if p.exists()])
        raise
    finally:
        lock.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def best_epoch(metrics: list) -> int | None:
    """The epoch ``best.pt`` must hold: the first with the lowest finite ``val_loss``.

    The trainer's rule: an epoch replaces the best one only when its validation
    loss is strictly lower. None when no epoch logged a finite validation loss.
    """
    best, low = None, math.inf
    for m in metrics:
        v = m.get("val_loss") if isinstance(m, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v < low:
            best, low = m.get("epoch"), v
    return best


def repair_best(folder: str | os.PathLike, epoch: int, metrics: list) -> bool:
    """Bring ``best.pt`` up to date with a run's history; True if it was rewritten.

    ``epoch`` and ``metrics`` are those of ``last.pt``. The trainer writes
    ``last.pt`` before ``best.pt``, so a run stopped between the two writes has a
    ``best.pt`` one improvement behind, while the best epoch is ``last.pt``
    itself: then ``last.pt`` is copied to ``best.pt``. A best epoch kept in
    ``checkpoints/`` is copied from there. The caller holds the run-folder lock.
    """
    from repdiag.checkpoint import safe_torch_load

    folder = Path(folder)
    want = best_epoch(metrics)
    if want is None:
        return False
    best = folder / "best.pt"
    if best.is_file():
        try:
            raw = safe_torch_load(best, "checkpoint")
            have = raw.get("epoch") if isinstance(raw, dict) else None
        except UserError:
            have = None  # unreadable: rewrite it when the right state is at hand
        if have == want:
            return False
    if want == epoch:
        source = folder / "last.pt"
    else:
        source = folder / "checkpoints" / f"epoch_{want:03d}.pt"
        if not source.is_file():
            return False
    atomic_copy(source, best)
    return True
