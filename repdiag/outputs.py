"""Output folders written as a set, and strict JSON.

A command's outputs (a report's HTML, Markdown, JSON and PNGs; a set of
figures) are first written into a hidden temporary folder and moved into
``--out`` only when all of them are complete: a full disk or an error on the
way leaves ``--out`` as it was (and creates no folder).

Into a folder that does not exist yet the whole set appears with one
``rename``, as plain files. Into an existing folder (which may hold the user's
other files) the set is kept in ``--out/.repdiag-sets/KEY.GEN/`` and each of its
top-level entries (``report.html``, ``report_files``, ...) is a relative
symbolic link through ``--out/.repdiag-sets/KEY.current``, a link to the
current generation. Writing the set again renames a new ``current`` link over
the old one: at every moment (a kill included) a reader sees the whole old set
or the whole new one, never a mix, and no old figure survives beside new ones.
Plain files of an earlier set are first turned into links to an identical copy
(hard links; a folder trades places with its link through one
``renameat2(RENAME_EXCHANGE)``), so what a reader sees does not change then
either. The links are relative and stay inside ``--out``: the folder can be
moved, copied with ``cp -r``/``rsync -a`` or archived with ``tar`` as a whole.

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

from repdiag.errors import UserError, reason, user_error
from repdiag.faults import fault_point

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
        raise user_error(f"cannot write to {option} {out}", e) from None
    return out


def _remove_stale(base: Path) -> None:
    """Delete temporary output folders and links in ``base`` whose writing process no longer
    runs (left by a kill), so they do not pile up."""
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or not (entry.is_symlink() or entry.is_dir()):
            continue
        try:
            os.kill(int(m.group("pid")), 0)
        except ProcessLookupError:
            if entry.is_symlink():
                entry.unlink(missing_ok=True)
            else:
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
        raise user_error(f"cannot write to {option} {out}", e) from None
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
        raise UserError(f"cannot write to {option} {out}: {reason(e)}; nothing was "
                        "written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_write_error(e: RuntimeError) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("write", "space", "disk", "file", "errno"))


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished set from ``tmp`` into ``out``: a new folder appears whole with one
    rename; into an existing folder see :func:`_publish_linked`."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)  # the whole set appears at once
        return
    _publish_linked(tmp, out)


SETS = ".repdiag-sets"


def _set_key(names: list[str]) -> str:
    """The name of a set in ``.repdiag-sets``: the stem of its first entry and a hash of all
    its entry names (the same command on the same inputs writes the same set again)."""
    import hashlib

    names = sorted(names)
    digest = hashlib.sha1("\0".join(names).encode()).hexdigest()[:8]
    stem = names[0].split(".")[0][:40] if names else "set"
    return f"{stem}-{digest}"


def _swap_link(link: Path, target: str) -> None:
    """Point the symbolic link ``link`` at ``target`` with one rename (atomic)."""
    tmp = link.with_name(f".{link.name}.repdiag-{os.getpid()}-link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two paths with one ``renameat2(RENAME_EXCHANGE)`` (Linux); False where the
    system or the file system does not offer it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def _copy_entry(src: Path, dst: Path) -> None:
    """Copy ``src`` (file or folder) to ``dst``, sharing the data by hard links where allowed."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False, copy_function=link_or_copy)
    else:
        link_or_copy(src, dst)


def _adopt(out: Path, names: list[str], key: str, sets: Path) -> None:
    """Turn each existing top-level entry among ``names`` into a link to the set's current
    generation, holding the same content: what a reader sees does not change."""
    current = sets / f"{key}.current"
    target = f"{SETS}/{key}.current/"
    pending = [n for n in names if os.path.lexists(out / n)
               and not (os.path.islink(out / n) and os.readlink(out / n) == target + n)]
    if not pending:
        return
    if not os.path.lexists(current):
        gen = Path(tempfile.mkdtemp(prefix=f"{key}.{os.getpid()}-", dir=sets))
        _swap_link(current, gen.name)
    gen = sets / os.readlink(current)
    for name in pending:
        src, dst = out / name, gen / name
        if os.path.lexists(dst):
            shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
        _copy_entry(src, dst)
        fault_point(f"publish:adopt:{name}")
        if src.is_dir() and not src.is_symlink():
            link = out / f".{name}.repdiag-{os.getpid()}-link.tmp"
            link.unlink(missing_ok=True)
            os.symlink(target + name, link)
            fault_point(f"publish:exchange:{name}")
            if _exchange(src, link):  # the folder and its link trade places at once
                shutil.rmtree(link)
            else:  # no atomic exchange here: the folder is absent for one rename
                os.replace(src, out / f".{name}.repdiag-{os.getpid()}-old.tmp")
                os.replace(link, src)
                shutil.rmtree(out / f".{name}.repdiag-{os.getpid()}-old.tmp")
        else:
            _swap_link(src, target + name)


def _publish_linked(tmp: Path, out: Path) -> None:
    """Publish the set in ``tmp`` into the existing folder ``out`` with one atomic rename.

    The set's entries live in ``out/.repdiag-sets/KEY.GEN/``; ``out/.repdiag-sets/KEY.current``
    links to the current generation and each top-level entry (``report.html``, ...)
    links through it. Publishing renames a new ``current`` link over the old one: a
    reader (or a kill at any moment) sees the whole old set or the whole new one.
    """
    names = sorted(p.name for p in tmp.iterdir())
    key = _set_key(names)
    sets = out / SETS
    sets.mkdir(exist_ok=True)
    _adopt(out, names, key, sets)
    current = sets / f"{key}.current"
    gen = sets / f"{key}.{os.getpid()}-{tmp.name.rsplit('-', 1)[-1].split('.')[0]}"
    os.replace(tmp, gen)
    fault_point("publish:swap")
    old = os.readlink(current) if os.path.islink(current) else None
    _swap_link(current, gen.name)  # the commit: one rename
    fault_point("publish:swapped")
    target = f"{SETS}/{key}.current/"
    for name in names:  # entries the old set did not have
        if not os.path.lexists(out / name):
            os.symlink(target + name, out / name)
    for entry in out.iterdir():  # links to entries the new set no longer has
        if entry.is_symlink() and os.readlink(entry).startswith(target) \
                and entry.name not in names:
            entry.unlink()
    if old is not None and old != gen.name:
        shutil.rmtree(sets / old, ignore_errors=True)
    _remove_stale_generations(sets, key, keep=gen.name)
    _remove_stale(sets)  # links of a killed publisher


def _remove_stale_generations(sets: Path, key: str, keep: str) -> None:
    """Delete generations of ``key`` that are not current and whose writer no longer runs."""
    for entry in sets.iterdir():
        m = re.match(rf"^{re.escape(key)}\.(\d+)-", entry.name)
        if m is None or entry.name == keep or entry.is_symlink():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (PermissionError, OverflowError, ValueError):
            continue


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
