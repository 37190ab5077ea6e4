"""Files written whole or not at all, and the digest that names a file's contents.

Every file repdiag, the trainer and the analyses write (checkpoints, configs,
metrics, caches, tables, sidecars, figures) goes through :func:`atomic_write`:
a temporary file beside the target (same folder, so the rename stays on one
file system), flushed and fsynced, then renamed over the target, and the folder
fsynced. A reader never sees a half-written file; a failed write leaves the old
file whole and no temporary file behind. A process killed mid-write (no clean-up
runs) leaves a hidden ``.NAME.XXXX.tmp`` that :func:`remove_stale_temp_files`
deletes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from repdiag.faults import fault_point


def staged_write(path: str | os.PathLike, write: Callable[[IO], object], *,
                 binary: bool = True) -> Path:
    """Call ``write(file)`` on a new temporary file beside ``path``, fsync it and return it
    (not yet renamed: :func:`atomic_write` does that; :func:`repdiag.plots.save_figure`
    renames a PNG and its PDF only once both are written). On failure the temporary file
    is removed and the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            fault_point(f"write:{path.name}:partial", lambda: os.truncate(tmp, f.tell() // 2))
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; files follow the umask
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], *,
                 binary: bool = True) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename over ``path``.

    A reader never sees a half-written file; a failure leaves the old file intact.
    """
    path = Path(path)
    tmp = staged_write(path, write, binary=binary)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fault_point(f"write:{path.name}:written")
    sync_folder(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename)."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically (temp file beside ``dst``, fsync, rename), with
    ``src``'s permission bits."""
    def copy(out):
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)

    atomic_write(dst, copy)
    shutil.copymode(src, dst)


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder so a rename into it survives a power cut (best effort)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden temp files an interrupted atomic write left in ``folder``
    (``.NAME.XXXX.tmp``, e.g. after a SIGKILL during a checkpoint write)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def file_digest(path: str | os.PathLike, length: int | None = None) -> str:
    """The SHA-256 of a file's bytes in hex (its first ``length`` characters when given),
    read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:length]
