"""An output set written into an existing folder is swapped whole: a real SIGKILL at each
step of the publishing leaves the whole old set or the whole new set, never a mix.

Each kill is a real ``SIGKILL`` the writing process sends itself at a named point
(``REPDIAG_FAULT_KILL``, :func:`repdiag.outputs.fault_point`).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["report.html", "report.json", "report.md", "report_files"]

# repdiag.outputs alone, without the package's torch imports: each writer starts at once
WRITE_SET = f"""
import sys, types
pkg = types.ModuleType("repdiag")
pkg.__path__ = [{str(ROOT / "repdiag")!r}]
sys.modules["repdiag"] = pkg
from repdiag.outputs import output_set
out, tag = sys.argv[1], sys.argv[2]
with output_set(out) as tmp:
    for name in ("report.html", "report.md", "report.json"):
        (tmp / name).write_text(name + " of " + tag)
    (tmp / "report_files").mkdir()
    (tmp / "report_files" / ("map_" + tag + ".png")).write_text(tag)
    (tmp / "report_files" / "rank.png").write_text("rank of " + tag)
"""


def _write(out: Path, tag: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REPDIAG_FAULT_KILL", None)
    if kill:
        env["REPDIAG_FAULT_KILL"] = kill
    return subprocess.run([sys.executable, "-c", WRITE_SET, str(out), tag], env=env,
                          capture_output=True, text=True, timeout=60)


def _view(out: Path) -> dict:
    """What a reader of ``out`` sees: every visible file's text, links followed."""
    seen = {}
    for root, dirs, files in os.walk(out, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith("."):
                p = Path(root) / f
                seen[str(p.relative_to(out))] = p.read_text() if p.exists() else "<dangling>"
    return seen


def _expected(tmp_path: Path, tag: str) -> dict:
    ref = tmp_path / f"ref-{tag}"
    assert _write(ref, tag).returncode == 0
    return {**_view(ref), "notes.txt": "the user's own file"}


POINTS = [f"publish:adopt:{n}" for n in NAMES] + [
    "publish:exchange:report_files", "publish:swap", "publish:swapped"]


@pytest.mark.parametrize("earlier", ["plain files", "linked set"])
def test_a_kill_at_any_step_leaves_the_whole_old_or_the_whole_new_set(tmp_path, earlier):
    old, new = _expected(tmp_path, "old"), _expected(tmp_path, "new")
    for point in POINTS:
        out = tmp_path / f"out-{point.replace(':', '-')}"
        assert _write(out, "old").returncode == 0  # a new folder: plain files, one rename
        if earlier == "linked set":
            assert _write(out, "old").returncode == 0  # written again: now a linked set
            assert (out / "report.html").is_symlink()
        (out / "notes.txt").write_text("the user's own file")
        assert _view(out) == old
        p = _write(out, "new", kill=point)
        adopting = point.startswith(("publish:adopt", "publish:exchange"))
        reached = not (adopting and earlier == "linked set")
        assert p.returncode == (-signal.SIGKILL if reached else 0), (point, p.stderr)
        assert _view(out) in (old, new), point
        if point == "publish:swapped":
            assert _view(out) == new
        if adopting or point == "publish:swap":
            assert _view(out) == (old if reached else new), point
        assert _write(out, "new").returncode == 0  # the next run completes and tidies up
        assert _view(out) == new, point
        assert sorted(p.name for p in out.iterdir()) == [".repdiag-sets", "notes.txt", *NAMES]
        sets = sorted(p.name for p in (out / ".repdiag-sets").iterdir())
        assert len(sets) == 2 and sets[1].endswith(".current"), sets  # one generation left
        assert all((out / n).is_symlink() for n in NAMES)


def test_a_linked_set_is_moved_and_copied_with_its_folder(tmp_path):
    out = tmp_path / "out"
    for tag in ("a", "b"):
        assert _write(out, tag).returncode == 0
    expected = _view(out)
    moved = tmp_path / "moved"
    out.rename(moved)
    assert _view(moved) == expected
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(moved), str(copy)], check=True)
    assert _view(copy) == expected  # relative links: the copy reads its own files
    assert (copy / "report.html").resolve().is_relative_to(copy.resolve())


def test_without_an_atomic_exchange_a_folder_is_still_adopted_whole(tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is missing, a plain folder of an earlier set is
    moved aside and its link renamed in (two renames): the result is the same."""
    import repdiag.outputs as outputs

    out = tmp_path / "out"
    assert _write(out, "old").returncode == 0
    (out / "notes.txt").write_text("the user's own file")
    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    with outputs.output_set(out) as tmp:
        for name in ("report.html", "report.md", "report.json"):
            (tmp / name).write_text(name + " of new")
        (tmp / "report_files").mkdir()
        (tmp / "report_files" / "map_new.png").write_text("new")
        (tmp / "report_files" / "rank.png").write_text("rank of new")
    assert _view(out) == _expected(tmp_path, "new")
    assert sorted(p.name for p in out.iterdir()) == [".repdiag-sets", "notes.txt", *NAMES]
