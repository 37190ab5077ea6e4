"""Writes of run and sweep files that fail in one line: a full disk is a user-facing error.

Every file the trainer and the sweep write goes through
:func:`repdiag.files.atomic_write_text` / :func:`repdiag.checkpoint.atomic_torch_save` (temp file,
fsync, rename: the old file stays whole when a write fails). :func:`checked`
turns the failure into one :class:`UserError` line naming the file and the
reason. ``torch.save`` reports a failed write as a ``RuntimeError`` from its zip
writer ("unexpected pos ..."), with the ``OSError`` (ENOSPC, EIO, ...) only in
its ``__context__``: that one is named when present.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from repdiag.errors import UserError, reason

T = TypeVar("T")


def os_error_of(e: BaseException) -> OSError | None:
    """The OSError behind ``e`` (itself, or in its ``__cause__``/``__context__`` chain)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def checked(path: str | os.PathLike, write: Callable[[], T]) -> T:
    """Run ``write()`` (which writes ``path``); a failed write becomes one UserError line."""
    try:
        return write()
    except UserError:
        raise
    except (OSError, RuntimeError) as e:
        err = os_error_of(e)
        if err is None and not _is_torch_write_failure(e):
            raise
        why = reason(err) if err is not None else "the write failed"
        raise UserError(f"cannot write {Path(path)}: {why}") from None


def _is_torch_write_failure(e: BaseException) -> bool:
    text = str(e)
    return "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text
