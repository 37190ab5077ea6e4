"""Run folders as the trainer writes them, and which checkpoint stands for a run.

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``last.pt`` and, when
the run had a validation split, ``best.pt`` (the epoch with the lowest
validation contrastive loss). The run's config names the one that stands for
it (``select``: ``last`` as paper G, ``best`` as paper S); diagnostics and
sweeps take that one unless told otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from repdiag.errors import UserError

SELECT = ("best", "last")


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
        return best
    return folder / "last.pt"
