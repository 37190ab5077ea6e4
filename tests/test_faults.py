"""Faults: damaged files, full disks and kills leave one line and exit 2, or a correct result;
never a traceback, never a partial output.

Damage is checked against zipfile's own CRC test (``ZipFile.testzip``); full disks are
injected at each write of a report, of a figure set and of the feature cache.
"""

import contextlib
import errno
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from repdiag.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from repdiag.cli import main
from repdiag.errors import UserError
from repdiag.features import FeatureSet, feature_cache_dir, load_features, save_features
from repdiag.models import BackboneSpec, HeadSpec, build_backbone, build_head


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err, *pieces):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for piece in pieces:
        assert piece in err, (piece, err)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault-inputs")
    torch.manual_seed(0)
    bspec = BackboneSpec("resnet18", 0.125, True)
    bb = build_backbone(bspec)
    hspec = HeadSpec("linear", in_dim=bb.feature_dim, out_dim=8)
    ck = make_checkpoint(config={"data": "synthetic", "seed": 0}, backbone_spec=bspec,
                         head_spec=hspec, backbone=bb, head=build_head(hspec), epoch=1,
                         metrics=[{"epoch": 1, "loss": 1.0}])
    save_checkpoint(ck, d / "ck.pt")
    g = torch.Generator().manual_seed(1)
    h, y = torch.randn(60, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    z = h @ torch.randn(8, 4, generator=g)
    save_features(d / "feat.pt", FeatureSet(h=h, y=y, z=z, weight=torch.randn(4, 8, generator=g)),
                  FeatureSet(h=h, y=y, z=z))
    save_features(d / "feat2.pt", FeatureSet(h=2 * h, y=y), FeatureSet(h=2 * h, y=y))
    return d


def _records(path: Path) -> dict[str, tuple[int, int]]:
    """Each zip record's (data offset, data length), read from its local header."""
    raw = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                           info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            out[info.filename] = (start, info.compress_size)
    return out


def _largest_tensor(path: Path) -> str:
    recs = _records(path)
    return max((n for n in recs if "/data/" in n), key=lambda n: recs[n][1])


def _damage(src: Path, dst: Path, how: str) -> str | None:
    """Write a damaged copy of ``src``; returns the record the damage is in (None: the
    zip directory)."""
    raw = bytearray(src.read_bytes())
    recs = _records(src)
    tensor = _largest_tensor(src)
    start, size = recs[tensor]
    pkl = next(n for n in recs if n.endswith("data.pkl"))
    record = tensor
    if how == "64-floats":  # 64 float32 weights overwritten inside the largest tensor
        raw[start + size // 2: start + size // 2 + 256] = struct.pack("<64f", *([0.5] * 64))
    elif how == "flip-first":
        raw[start] ^= 0x01
    elif how == "flip-middle":
        raw[start + size // 2] ^= 0x80
    elif how == "flip-last":
        raw[start + size - 1] ^= 0x10
    elif how == "flip-pickle":
        s, n = recs[pkl]
        raw[s + n // 2] ^= 0x04
        record = pkl
    elif how == "header-signature":  # the local header of the tensor record
        with zipfile.ZipFile(src) as zf:
            off = zf.getinfo(tensor).header_offset
        raw[off:off + 4] = b"XXXX"
    elif how == "central-directory":
        end = raw.rfind(b"PK\x05\x06")
        raw[end:end + 4] = b"\x00\x00\x00\x00"
        record = None
    else:  # pragma: no cover - table typo
        raise ValueError(how)
    dst.write_bytes(bytes(raw))
    return record


DAMAGE = ["64-floats", "flip-first", "flip-middle", "flip-last", "flip-pickle",
          "header-signature", "central-directory"]


@pytest.mark.parametrize("name", ["ck.pt", "feat.pt"])
@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_file_is_refused_naming_the_record(inputs, tmp_path, capsys, monkeypatch,
                                                     name, how):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / f"bad_{name}"
    record = _damage(inputs / name, bad, how)
    if record is not None and how != "header-signature":  # zipfile's own CRC test agrees
        with zipfile.ZipFile(bad) as zf:
            assert zf.testzip() == record
    code, out, err = _run(capsys, ["rank", bad, "--json"])
    expected = f"record '{record}'" if record is not None else "truncated or not a torch file"
    _one_line_error(code, err, str(bad), expected)
    assert expected in json.loads(out)["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_the_intact_files_load(inputs):
    assert load_checkpoint(inputs / "ck.pt").epoch == 1
    assert len(load_features(inputs / "feat.pt").test) == 60


@pytest.mark.parametrize("change,pieces", [
    ({"version": 99}, ["version 99 is newer than this repdiag", "(version 1)"]),
    ({"version": "1"}, ["version '1' is not a positive integer"]),
    ({"format": "repdiag-checkpoint-v2"}, ["unknown checkpoint format 'repdiag-checkpoint-v2'",
                                           "'repdiag-checkpoint' up to version 1"]),
    ({"config": "a string"}, ["damaged repdiag checkpoint", "'config'"]),
    ({"epoch": "abc"}, ["damaged repdiag checkpoint", "'epoch' ('abc', expected a non-negative"]),
    ({"epoch": -3}, ["'epoch' (-3, expected a non-negative integer)"]),
    ({"step": 2.5}, ["'step' (2.5, expected a non-negative integer)"]),
    ({"metrics": "a string"}, ["damaged repdiag checkpoint", "'metrics'"]),
])
def test_a_checkpoint_this_code_cannot_read_is_refused(inputs, tmp_path, capsys, change, pieces):
    raw = torch.load(inputs / "ck.pt", weights_only=True)
    raw.update(change)
    path = tmp_path / "other.pt"
    torch.save(raw, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    for piece in pieces:
        assert piece in str(e.value), str(e.value)
    code, _, err = _run(capsys, ["report", path, "--out", tmp_path / "rep"])
    _one_line_error(code, err, *pieces)
    assert not (tmp_path / "rep").exists()


def test_only_regular_files_are_opened(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, _, err = _run(capsys, ["rank", fifo])  # would block forever if opened
    _one_line_error(code, err, "is a FIFO (named pipe)")
    code, _, err = _run(capsys, ["probe", "/dev/zero"])
    _one_line_error(code, err, "/dev/zero: is a character device")
    code, _, err = _run(capsys, ["spectrum", tmp_path])
    _one_line_error(code, err, "is a directory")


# ----------------------------------------------------------------- full disks at each write
def _snapshot(folder: Path) -> dict:
    """What a reader of ``folder`` sees: each visible file's bytes, links followed."""
    seen = {}
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        seen.update({str((Path(root) / f).relative_to(folder)): (Path(root) / f).read_bytes()
                     for f in files if not f.startswith(".")})
    return seen


@contextlib.contextmanager
def _path_writes(fail_at: int | None = None):
    """Count Path.write_bytes/write_text calls; the ``fail_at``-th (from 0) raises ENOSPC."""
    calls = []
    reals = {m: getattr(Path, m) for m in ("write_bytes", "write_text")}

    def wrap(real):
        def write(self, *a, **kw):
            calls.append(self.name)
            if fail_at is not None and len(calls) == fail_at + 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *a, **kw)
        return write

    with contextlib.ExitStack() as stack:
        for name, real in reals.items():
            stack.enter_context(mock.patch.object(Path, name, wrap(real)))
        yield calls


def test_a_full_disk_at_any_write_of_a_report_leaves_the_old_report_whole(inputs, tmp_path,
                                                                          capsys):
    from repdiag import report as report_mod
    from repdiag.features import FeatureSource
    from repdiag.report import build_report, write_report

    out = tmp_path / "rep"
    argv = ["report", inputs / "feat.pt", inputs / "feat2.pt", "--tsne-points", "0"]
    assert _run(capsys, [*argv, "--out", out])[0] == 0
    old = _snapshot(out)
    assert {"report.html", "report.md", "report.json"} <= set(old)
    reports = build_report([FeatureSource(inputs / p) for p in ("feat.pt", "feat2.pt")],
                           ["a", "b"], tsne_points=0)
    with _path_writes() as calls:
        write_report(reports, tmp_path / "count")
    assert len(calls) == 2 + 1 + 1 + 3  # PNGs of 2 spectra, rank, probes; md, json, html
    # the same writes without drawing the figures again (drawing is what takes time)
    figures = [(stem, caption, None) for stem, caption, fig in report_mod._figures(reports, None)]
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(report_mod, "_figures", lambda *a: figures))
    stack.enter_context(mock.patch.object(report_mod, "_png", lambda fig: b"\x89PNG..."))
    for k in range(len(calls)):
        fresh = tmp_path / f"fresh{k}"
        for target in (out, fresh):
            with _path_writes(fail_at=k), pytest.raises(UserError) as e:
                write_report(reports, target)
            assert f"--out {target}: No space left on device" in str(e.value)
        assert _snapshot(out) == old, k  # the earlier report, untouched
        assert not fresh.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["count", "rep"], k  # no temp left
    stack.close()
    with _path_writes(fail_at=0):  # the CLI: one line, exit 2, nothing written
        code, _, err = _run(capsys, [*argv, "--json", "--out", tmp_path / "new"])
    _one_line_error(code, err, "No space left on device")
    assert not (tmp_path / "new").exists()


# (argv, figures written) ; t-SNE maps are slow to compute, so one map only
FIGURE_SETS = [(["spectrum", "feat.pt", "feat2.pt"], 2),
               (["tsne", "feat2.pt", "--perplexity", "5", "--max-points", "30"], 1)]


@pytest.mark.parametrize("argv,n_figures", FIGURE_SETS, ids=[c[0][0] for c in FIGURE_SETS])
def test_a_full_disk_at_any_write_of_a_figure_set_leaves_nothing(inputs, tmp_path, capsys,
                                                                monkeypatch, argv, n_figures):
    from matplotlib.figure import Figure

    real = Figure.savefig
    argv = [inputs / a if a.endswith(".pt") else a for a in argv]
    if argv[0] == "tsne":  # the writes are under test, not the map: a stand-in map, at once
        import repdiag.diagnostics

        def fake_tsne(x, y, **kw):
            return SimpleNamespace(embedding=x[:, :2].numpy(), labels=y.numpy(), n=len(x),
                                   params={"backend": "stand-in", "kl_divergence": 0.0})
        monkeypatch.setattr(repdiag.diagnostics, "tsne", fake_tsne)
    calls = []

    def savefig(self, fname, *a, **kw):
        calls.append(fname)
        if len(calls) == state["fail_at"] + 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    state = {"fail_at": -1}
    assert _run(capsys, [*argv, "--out", tmp_path / "ok"])[0] == 0
    n = len(calls)
    assert n == 2 * n_figures  # PNG and PDF of each figure
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("the user's own file")
    for k in range(n):
        state["fail_at"] = k
        for out in (tmp_path / "new", tmp_path / "old"):
            calls.clear()
            code, _, err = _run(capsys, [*argv, "--out", out])
            _one_line_error(code, err, "No space left on device", str(out))
        assert not (tmp_path / "new").exists()
        assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "old"]


def test_a_report_killed_midway_leaves_no_trace_after_the_next_run(inputs, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["report", inputs / "feat.pt", "--tsne-points", "0", "--out", out]
    assert _run(capsys, argv)[0] == 0
    old = _snapshot(out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = out / f".rep.repdiag-{dead}-abc.tmp"  # what a SIGKILL during a rewrite leaves
    (stale / "report_files").mkdir(parents=True)
    (stale / "report.md").write_text("half")
    assert _run(capsys, argv)[0] == 0
    assert not stale.exists() and _snapshot(out) == old  # same inputs, same report


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                 "writing file data/3: file write failed"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_failing_feature_cache_costs_only_time(inputs, tmp_path, capsys, monkeypatch, error):
    import repdiag.checkpoint as ckmod

    argv = ["rank", inputs / "ck.pt", "--limit", "6", "--json"]
    code, out, _ = _run(capsys, [*argv, "--no-cache"])
    assert code == 0
    expected = json.loads(out)
    real = ckmod.torch.save

    def save(obj, f, *a, **kw):
        real(obj, f, *a, **kw)  # some bytes reach the temporary file, then the disk is full
        raise error

    monkeypatch.setattr(ckmod.torch, "save", save)
    code, out, err = _run(capsys, argv)
    assert code == 0 and err == "" and json.loads(out) == expected
    cache = feature_cache_dir()  # under $REPDIAG_CACHE (conftest)
    assert not cache.exists() or list(cache.iterdir()) == []  # no entry, no temp file



def test_a_new_report_replaces_the_old_set_and_keeps_other_files(inputs, tmp_path, capsys):
    out = tmp_path / "rep"
    (out / "report_files").mkdir(parents=True)
    (out / "report_files" / "tsne_9_h.png").write_bytes(b"an earlier, larger report's map")
    (out / "report.json").write_text("[]")
    (out / "notes.txt").write_text("the user's own file")
    code, _, _ = _run(capsys, ["report", inputs / "feat.pt", "--tsne-points", "0", "--json",
                               "--out", out])
    assert code == 0
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in (out / "report_files").iterdir()) == [
        "probes.png", "rank.png", "spectrum_0.png"]  # no map of the earlier report survives
    assert json.loads((out / "report.json").read_text())[0]["label"] == "feat.pt"
    assert sorted(p.name for p in out.iterdir()) == [
        ".repdiag-sets", "notes.txt", "report.html", "report.json", "report.md", "report_files"]


@pytest.mark.parametrize("point", ["publish:adopt:report.json"])  # before report.json
def test_a_report_killed_while_publishing_leaves_the_earlier_report_whole(inputs, tmp_path,
                                                                          capsys, point):
    out = tmp_path / "rep"
    argv = ["report", inputs / "feat.pt", "--tsne-points", "0", "--out", out]
    assert _run(capsys, [*argv, "--title", "earlier"])[0] == 0
    old = _snapshot(out)
    env = {**os.environ, "REPDIAG_FAULT_KILL": point,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "repdiag", *map(str, argv), "--title", "later"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr  # a real SIGKILL at that point
    assert _snapshot(out) == old  # every file of the earlier report, none of the later one
    assert _run(capsys, [*argv, "--title", "later"])[0] == 0
    new = _snapshot(out)
    assert set(new) == set(old) and all(b"later" in new[f] for f in
                                        ("report.html", "report.md"))


@pytest.mark.parametrize("name", ["ck.pt", "feat.pt"])
@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "flipped-byte"])
def test_a_legacy_torch_file_is_refused_with_how_to_convert_it(inputs, tmp_path, capsys, name,
                                                               damaged):
    """torch's own legacy writer (no CRC): refused whole or damaged, never diagnosed; the
    conversion the message gives makes a file that reads as the original does."""
    legacy = tmp_path / f"legacy-{name}"
    torch.save(torch.load(inputs / name, weights_only=True), legacy,
               _use_new_zipfile_serialization=False)
    raw = bytearray(legacy.read_bytes())
    assert not raw.startswith(b"PK\x03\x04")
    if damaged:  # a byte of the last tensor's data: the legacy format cannot notice
        raw[-5] ^= 0x40
        legacy.write_bytes(bytes(raw))
    argv = ["rank", "--json", "--limit", "12"]
    code, _, err = _run(capsys, [*argv, legacy])
    _one_line_error(code, err, str(legacy), "legacy torch", "no integrity check",
                    "torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2])")
    if damaged:
        return
    command = err.split("python -c ", 1)[1].rsplit(" OLD.pt NEW.pt", 1)[0]
    converted = tmp_path / f"converted-{name}"
    subprocess.run(["sh", "-c", f"{sys.executable} -c {command} {legacy} {converted}"],
                   check=True)
    assert converted.read_bytes().startswith(b"PK\x03\x04")
    results = [_run(capsys, [*argv, p]) for p in (inputs / name, converted)]
    assert results[0][0] == results[1][0] == 0
    assert json.loads(results[0][1]) == json.loads(results[1][1])
