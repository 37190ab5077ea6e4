"""Output folders written as a set, and strict JSON.

A command's outputs (a report's HTML, Markdown, JSON and PNGs; a set of
figures) are first written into a hidden temporary folder and moved into
``--out`` only when all of them are complete: a full disk or an error on the
way leaves ``--out`` as it was (and creates no folder). Into a folder that does
not exist yet the whole set appears with one ``rename``; into an existing one
each entry is renamed into place (a sub-folder such as ``report_files`` is
swapped whole, so no old figure survives beside new ones).

:func:`dumps` is ``json.dumps`` that never writes ``NaN`` or ``Infinity``
(invalid JSON for strict parsers): such a number becomes ``null`` and its
place is listed with the reason under ``"null_reasons"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from repdiag.errors import UserError

_TMP = re.compile(r"^\.(?P<name>.+)\.repdiag-(?P<pid>\d+)-[^.]+\.tmp$")


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out(out: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``out`` can become (or is) a writable folder, without creating anything.

    ``out`` must be a folder or not exist yet; its nearest existing ancestor
    must be a folder where a file can be created. Raises a one-line UserError
    naming ``option`` otherwise.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot write to {option} {out}: it exists and is not a folder")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise UserError(f"cannot write to {option} {out}: {base} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {option} {out}: {e.strerror or e}") from None
    return out


def _remove_stale(base: Path) -> None:
    """Delete temporary output folders in ``base`` whose writing process no longer runs
    (left by a kill), so they do not pile up."""
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or not entry.is_dir():
            continue
        try:
            os.kill(int(m.group("pid")), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (PermissionError, OverflowError, ValueError):
            continue


@contextlib.contextmanager
def output_set(out: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder; when the block ends without error, move its contents into
    ``out`` (created then, with its parents); on any error remove it.

    A write failure (``OSError``, or the ``RuntimeError`` torch raises on a full
    disk) becomes a one-line UserError naming ``option``; nothing of the set is
    left in or beside ``out``.
    """
    out = Path(os.path.abspath(out))
    exists = out.is_dir()
    base = out if exists else _nearest_existing(out)
    _remove_stale(base)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}.repdiag-{os.getpid()}-",
                                    suffix=".tmp", dir=base))
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the published folder follows the umask
    except OSError as e:
        raise UserError(f"cannot write to {option} {out}: {e.strerror or e}") from None
    try:
        yield tmp
        _publish(tmp, out)
    except UserError as e:  # name the place the user chose, not the temporary folder
        if str(tmp) not in str(e):
            raise
        raise UserError(str(e).replace(str(tmp), str(out))) from None
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _is_write_error(e):
            raise
        raise UserError(f"cannot write to {option} {out}: {_reason(e)}; nothing was "
                        "written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_write_error(e: RuntimeError) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("write", "space", "disk", "file", "errno"))


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished set from ``tmp`` into ``out``."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)  # the whole set appears at once
        return
    trash = tmp / ".replaced"
    entries = [p for p in tmp.iterdir() if p != trash]
    for entry in entries:
        dest = out / entry.name
        if entry.is_dir() and dest.is_dir():  # swap a sub-folder whole: no old file survives
            trash.mkdir(exist_ok=True)
            os.replace(dest, trash / entry.name)
        os.replace(entry, dest)


def _finite(obj, path: str, reasons: dict) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        reasons[path or "value"] = ("not a number (NaN)" if math.isnan(obj) else
                                    f"{'+' if obj > 0 else '-'}infinity (overflow)")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), reasons) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", reasons) for i, v in enumerate(obj)]
    return obj


def strict(obj: object) -> object:
    """``obj`` with every NaN/±inf float replaced by None; a dict (or each dict of a list)
    gains ``"null_reasons": {path: reason}`` naming each replaced value."""
    if isinstance(obj, list):
        return [strict(v) for v in obj]
    reasons: dict[str, str] = {}
    clean = _finite(obj, "", reasons)
    if reasons and isinstance(clean, dict):
        clean["null_reasons"] = reasons
    return clean


def dumps(obj: object, **kw) -> str:
    """Strict JSON text of ``obj``: NaN and Infinity become null (with a reason, see
    :func:`strict`); never prints a token a strict parser rejects."""
    return json.dumps(strict(obj), allow_nan=False, **kw)
