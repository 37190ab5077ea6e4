"""Run folders under faults: kills at named points, a full disk at each write, two writers.

Every case checks the contract: a failure is one line and exit code 2 (or, for a kill,
whatever was on disk), nothing is half-written, and ``--resume`` then finishes the run
with exactly the tensors of an uninterrupted run and a ``best.pt`` that holds the epoch
with the lowest validation loss.
"""

import errno
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import repdiag.checkpoint as ckmod
import repdiag.files as files_mod
import train.trainer as trainer_mod
from repdiag.cli import main
from repdiag.runs import LOCK_NAME, RunLock, best_epoch, run_checkpoint
from train.config import load_config
from train.trainer import Trainer

# three epochs on 32 generated training images; val_fraction gives a validation split, so
# best.pt is written (the validation loss of this seed falls every epoch)
TINY = ["data=synthetic", "data_limit=48", "width=0.125", "batch_size=16", "knn_every=0",
        "head.hidden_dim=16", "head.out_dim=8", "epochs=3", "save_every=1", "select=best",
        "val_fraction=0.34"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(out, *extra):
    argv = ["train", "--config", "fmnist-tiny", "--quiet", "--out", str(out)]
    for s in [*TINY, *extra]:
        argv += ["--set", s]
    return argv


def run_cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def state(path):
    raw = torch.load(path, weights_only=True)
    return raw["epoch"], {f"{s}.{k}": v for s in ("backbone", "head") for k, v in raw[s].items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: what every interrupted-then-resumed run must end as."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference") / "run"
    Trainer(load_config("fmnist-tiny", TINY), out, quiet=True).run()
    torch.set_num_threads(n)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"last": state(out / "last.pt"), "metrics": metrics, "best": best_epoch(metrics)}


def assert_finished_like_reference(run, reference):
    """The resumed run: bit-exact last.pt, best.pt at the lowest val_loss, clean folder."""
    epoch, tensors = state(run / "last.pt")
    ref_epoch, ref_tensors = reference["last"]
    assert epoch == ref_epoch
    for k, v in ref_tensors.items():
        assert torch.equal(tensors[k], v), k
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["val_loss"] for m in metrics] == [m["val_loss"] for m in reference["metrics"]]
    assert state(run / "best.pt")[0] == best_epoch(metrics) == reference["best"]
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))
    assert not (run / LOCK_NAME).exists()


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


def inject(monkeypatch, name, occurrence, fault):
    """Make the ``occurrence``-th write of file ``name`` fail with ``fault``:

    ``kill-before`` / ``kill-after`` (the process dies before the write starts or right
    after its rename), ``kill-during`` (it dies with the temp file half written) or
    ``enospc`` (the disk fills during the write, inside torch.save / file.write, and the
    atomic writer's own clean-up runs).
    """
    seen = {"n": 0}
    real_torch, real_text = ckmod.atomic_torch_save, files_mod.atomic_write_text

    def faulty(real, body):
        def write(obj, path):
            if os.path.basename(path) != name:
                return real(obj, path)
            seen["n"] += 1
            if seen["n"] != occurrence:
                return real(obj, path)
            if fault == "kill-before":
                raise Killed
            if fault == "kill-after":
                real(obj, path)
                raise Killed
            if fault == "kill-during":
                tmp = os.path.join(os.path.dirname(path), f".{name}.dead.tmp")
                with open(tmp, "wb") as f:
                    f.write(b"PK\x03\x04 half a file")
                raise Killed
            files_mod.atomic_write(path, lambda f: body(obj, f))  # enospc
        return write

    def torch_body(obj, f):
        torch.save(obj, _FullDisk(f))

    def text_body(text, f):
        f.write(text[: len(text) // 2].encode())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_mod, "atomic_torch_save", faulty(real_torch, torch_body))
    text_write = faulty(lambda text, path: real_text(path, text), text_body)
    monkeypatch.setattr(trainer_mod, "atomic_write_text", lambda path, text: text_write(text, path))
    return seen


class _FullDisk(io.RawIOBase):
    """A file that takes 64 bytes, then fails as a full disk does."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def writable(self):
        return True

    def write(self, b):
        if self.n + len(b) > 64:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.n += len(b)
        return self.f.write(b)


# (file, which write of it, fault): the points of one epoch's writes, in the trainer's order
# epoch_00k.pt, last.pt, best.pt, metrics.jsonl (metrics.jsonl is also written at the start)
KILLS = [
    ("last.pt", 2, "kill-after"),       # between last.pt and best.pt of epoch 2
    ("last.pt", 2, "kill-during"),      # a temp file of last.pt left behind
    ("metrics.jsonl", 3, "kill-before"),  # epoch 2 whole but for its metrics line
    ("best.pt", 1, "kill-before"),      # epoch 1 has last.pt but no best.pt yet
]


@pytest.mark.parametrize("name,occurrence,fault", KILLS,
                         ids=[f"{f}-{n}#{o}" for n, o, f in KILLS])
def test_a_run_killed_at_a_named_point_resumes_to_the_uninterrupted_result(
        tmp_path, monkeypatch, capsys, one_thread, reference, name, occurrence, fault):
    run = tmp_path / "run"
    seen = inject(monkeypatch, name, occurrence, fault)
    with pytest.raises(Killed):
        Trainer(load_config("fmnist-tiny", TINY), run, quiet=True).run()
    assert seen["n"] == occurrence
    monkeypatch.undo()
    torch.set_num_threads(1)  # monkeypatch.undo() does not touch it; the fixture restores it
    assert (run / "last.pt").exists()
    code, err = run_cli(capsys, ["train", "--resume", str(run), "--quiet"])
    assert code == 0, err
    assert_finished_like_reference(run, reference)


# a real SIGKILL of a training process (repdiag.faults): (point, epochs in last.pt and
# best.pt left by the kill); each epoch writes last.pt, best.pt, then metrics.jsonl
SIGKILLS = [
    ("write:last.pt:written#2", 2, 1),        # epoch 2's last.pt in place, best.pt behind
    ("write:metrics.jsonl:partial#3", 2, 2),  # epoch 2's metrics line half written
]


@pytest.mark.parametrize("point,last_epoch,best_epoch_left", SIGKILLS,
                         ids=[p for p, *_ in SIGKILLS])
def test_a_training_process_killed_for_real_resumes_bit_exact(
        tmp_path, capsys, one_thread, reference, point, last_epoch, best_epoch_left):
    run = tmp_path / "run"
    env = {**os.environ, "REPDIAG_FAULT_KILL": point, "PYTHONPATH": ROOT,
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "repdiag", *train_argv(run)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr  # killed by the signal, at that point
    assert state(run / "last.pt")[0] == last_epoch
    assert state(run / "best.pt")[0] == best_epoch_left
    assert (run / LOCK_NAME).exists()  # left by the dead holder; the kernel dropped its lock
    left = [x for x in run.iterdir() if x.name.endswith(".tmp")]
    if "partial" in point:  # the half-written temporary file, and the old metrics whole
        assert [x.name[:15] for x in left] == [".metrics.jsonl."]
        assert [json.loads(x)["epoch"] for x in
                (run / "metrics.jsonl").read_text().splitlines()] == [1]
    else:
        assert left == []
    code, err = run_cli(capsys, ["train", "--resume", str(run), "--quiet"])
    assert code == 0, err
    assert_finished_like_reference(run, reference)


def test_best_pt_behind_last_pt_is_repaired_even_with_nothing_left_to_train(
        tmp_path, monkeypatch, capsys, one_thread, reference):
    """Killed between last.pt and best.pt of the final epoch: a resume trains nothing, but
    best.pt (epoch 2 until then) must become epoch 3, the lowest validation loss."""
    run = tmp_path / "run"
    inject(monkeypatch, "last.pt", 3, "kill-after")
    with pytest.raises(Killed):
        Trainer(load_config("fmnist-tiny", TINY), run, quiet=True).run()
    monkeypatch.undo()
    assert state(run / "best.pt")[0] == 2 and state(run / "last.pt")[0] == 3
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # read before any resume: the diagnostics take last.pt, the best epoch, and write nothing
    assert run_checkpoint(run, "best") == run / "last.pt"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_finished_like_reference(run, reference)
    assert run_checkpoint(run, "best") == run / "best.pt"


# a full disk at each write of a fresh run; files: which of them must exist afterwards
ENOSPC = [
    ("config.yaml", 1, None),
    ("metrics.jsonl", 1, None),
    ("epoch_000.pt", 1, None),
    ("epoch_001.pt", 1, None),
    ("last.pt", 1, None),
    ("best.pt", 1, 1),
    ("metrics.jsonl", 2, 1),
    ("last.pt", 2, 1),
]


@pytest.mark.parametrize("name,occurrence,last_epoch", ENOSPC,
                         ids=[f"{n}#{o}" for n, o, _ in ENOSPC])
def test_a_full_disk_at_any_write_is_one_line_and_leaves_a_resumable_run_or_nothing(
        tmp_path, monkeypatch, capsys, one_thread, reference, name, occurrence, last_epoch):
    run = tmp_path / "new" / "run"
    inject(monkeypatch, name, occurrence, "enospc")
    code, err = run_cli(capsys, train_argv(run))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"cannot write {run}" in err and name in err and "No space left on device" in err
    monkeypatch.undo()
    torch.set_num_threads(1)
    if last_epoch is None:  # no last.pt: the folders this command created are gone
        assert not (tmp_path / "new").exists()
        return
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))
    assert not (run / LOCK_NAME).exists()
    assert state(run / "last.pt")[0] == last_epoch
    listed = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert listed == list(range(1, len(listed) + 1)) and len(listed) <= last_epoch
    code, err = run_cli(capsys, ["train", "--resume", str(run), "--quiet"])
    assert code == 0, err
    assert_finished_like_reference(run, reference)


def test_a_full_disk_on_resume_changes_nothing(tmp_path, monkeypatch, capsys, one_thread):
    run = tmp_path / "run"
    Trainer(load_config("fmnist-tiny", [*TINY, "epochs=1"]), run, quiet=True).run()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    inject(monkeypatch, "config.yaml", 1, "enospc")
    code, err = run_cli(capsys, ["train", "--resume", str(run), "--set", "epochs=2", "--quiet"])
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------------- two writers
@pytest.fixture
def holder(tmp_path):
    """Another process holding the run-folder lock of a folder (as a running trainer does)."""
    procs = []

    def hold(folder):
        folder.mkdir(parents=True, exist_ok=True)
        # repdiag.runs alone, without the package's torch imports: the holder starts at once
        code = textwrap.dedent(f"""
            import sys, types
            pkg = types.ModuleType("repdiag")
            pkg.__path__ = [{os.path.join(ROOT, "repdiag")!r}]
            sys.modules["repdiag"] = pkg
            from repdiag.runs import RunLock
            RunLock({str(folder)!r}).acquire()
            print("locked", flush=True)
            sys.stdin.read()
        """)
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "locked"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_writer_is_refused_naming_the_holder_and_writes_nothing(
        tmp_path, capsys, holder, one_thread):
    run = tmp_path / "run"
    Trainer(load_config("fmnist-tiny", [*TINY, "epochs=1"]), run, quiet=True).run()
    other = holder(run)
    stale = run / ".last.pt.other.tmp"  # the holder's checkpoint being written
    stale.write_bytes(b"in progress")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for argv in (["train", "--resume", str(run), "--set", "epochs=2", "--quiet"],
                 train_argv(run, "seed=1", "head.kind=linear")):
        code, err = run_cli(capsys, argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{run} is being written by another repdiag process (pid {other.pid})" in err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # not even the holder's temp file was touched

    other.kill()  # the kernel drops a dead holder's lock: the next writer goes ahead
    other.wait()
    stale.unlink()
    assert main(["train", "--resume", str(run), "--set", "epochs=2", "--quiet"]) == 0
    assert state(run / "last.pt")[0] == 2 and not (run / LOCK_NAME).exists()


def test_two_fresh_runs_into_one_folder_the_second_is_refused(tmp_path, capsys, holder):
    """The first writer holds the lock from the moment the folder exists, before last.pt."""
    run = tmp_path / "dup"
    other = holder(run)
    code, err = run_cli(capsys, train_argv(run, "seed=1"))
    assert code == 2 and f"pid {other.pid}" in err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]


def test_the_lock_is_reentrant_in_one_process_and_released_last(tmp_path):
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    a.acquire()
    b.acquire()
    b.release()
    assert (tmp_path / LOCK_NAME).exists()
    a.release()
    assert not (tmp_path / LOCK_NAME).exists()


# ---------------------------------------------------------------------------- --resume
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    Trainer(load_config("fmnist-tiny", [*TINY, "epochs=2"]), run, quiet=True).run()
    torch.set_num_threads(n)
    return run


@pytest.mark.parametrize("extra,msg", [
    (["--config", "fmnist-tiny"], "drop --config fmnist-tiny"),
    (["--out", "{tmp}/elsewhere"], "drop --out"),
    (["--set", "epochs=1"], "epochs=1 is fewer than the 2 epochs"),
])
def test_resume_refuses_what_it_would_ignore_or_rewrite(finished, tmp_path, capsys, extra, msg):
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    argv = ["train", "--resume", str(finished), "--quiet",
            *[a.format(tmp=tmp_path) for a in extra]]
    code, err = run_cli(capsys, argv)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("field,value,msg", [
    ("config", "a string", "bad 'config' (str, expected a dict)"),
    ("epoch", "abc", "last.pt"),
])
def test_resume_of_a_checkpoint_with_wrong_types_is_one_line(finished, tmp_path, capsys, field,
                                                            value, msg):
    run = tmp_path / "run"
    run.mkdir()
    raw = torch.load(finished / "last.pt", weights_only=True)
    raw[field] = value
    torch.save(raw, run / "last.pt")
    code, err = run_cli(capsys, ["train", "--resume", str(run), "--quiet"])
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and sorted(p.name for p in run.iterdir()) == ["last.pt"]


# ---------------------------------------------------------------------------- sweeps
SWEEP_SET = ["data=synthetic", "data_limit=32", "width=0.125", "batch_size=16", "knn_subset=32",
             "knn_k=5", "head.hidden_dim=16", "head.out_dim=8", "epochs=1", "save_every=0",
             "cifar_stem=false"]


def test_a_sweep_survives_a_damaged_cache_and_refuses_second_writers_and_full_disks(
        tmp_path, capsys, monkeypatch, holder, one_thread):
    import train.sweep as sweep_mod

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml_dump({"base": "fmnist-tiny", "set": SWEEP_SET,
                               "grid": {"head.kind": ["linear"]}}))
    out = tmp_path / "sweep"
    argv = ["sweep", str(grid), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    run = out / "head.kind-linear__seed-0"
    results = (out / "results.csv").read_text()
    assert "knn_g_h" in results

    cache, = run.glob("eval-last-*.json")
    cache.write_text("")  # emptied cache: measured again, not a traceback
    code, err = run_cli(capsys, argv)
    assert code == 0, err
    assert set(json.loads(cache.read_text())["accuracy"]) == {"h", "z"}
    assert (out / "results.csv").read_text() == results

    for folder in (out, run):  # a second writer on the sweep folder or on one of its runs
        other = holder(folder)
        code, err = run_cli(capsys, argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{folder} is being written by another repdiag process (pid {other.pid})" in err
        other.kill()
        other.wait()

    real = sweep_mod.atomic_write_text

    def full(path, text):
        if os.path.basename(path) == "results.csv":
            files_mod.atomic_write(path, lambda f: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, "No space left on device")))
        return real(path, text)

    monkeypatch.setattr(sweep_mod, "atomic_write_text", full)
    code, err = run_cli(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"cannot write {out / 'results.csv'}: No space left on device" in err
    assert (out / "results.csv").read_text() == results
    assert not any(p.name.endswith(".tmp") or p.name == LOCK_NAME for p in out.rglob("*"))


def test_a_sweep_that_fails_before_any_result_leaves_no_folder(tmp_path, capsys, monkeypatch):
    def no_data(*a, **k):
        from repdiag.errors import UserError

        raise UserError("dataset 'synthetic' not found (simulated)")

    monkeypatch.setattr(trainer_mod, "load_dataset", no_data)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml_dump({"base": "fmnist-tiny", "set": SWEEP_SET}))
    code, err = run_cli(capsys, ["sweep", str(grid), "--out", str(tmp_path / "a" / "s"),
                                 "--quiet"])
    assert code == 2 and "simulated" in err and not (tmp_path / "a").exists()


def yaml_dump(tree):
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)


def test_a_diverged_sweep_run_is_a_result_and_leaves_no_folder(tmp_path, capsys, one_thread):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml_dump({"base": "fmnist-tiny",
                               "set": [*SWEEP_SET, "optim.name=sgd", "optim.lr=1e8"]}))
    out = tmp_path / "sweep"
    code, err = run_cli(capsys, ["sweep", str(grid), "--out", str(out), "--quiet"])
    assert code == 0, err
    assert "diverged" in (out / "results.csv").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["grid.yaml", "results.csv", "summary.csv"]


def test_a_trainer_built_but_never_run_gives_the_folder_back(tmp_path, one_thread):
    import gc

    t = Trainer(load_config("fmnist-tiny", TINY), tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / LOCK_NAME).exists()
    del t
    gc.collect()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    RunLock(tmp_path / "run").acquire().release()


# ------------------------------------------------------------------ train-ae standalone
AE_ARGV = ["train-ae", "--data", "synthetic", "--quiet", "--set", "epochs=2",
           "--set", "data_limit=16", "--set", "latent=8"]


def _ae_writes(monkeypatch, fail_at=None):
    """Route train-ae's writes through the real atomic writer; the ``fail_at``-th (from 0)
    writes half its bytes and then finds the disk full."""
    import train.autoencoder as ae_mod

    calls = []

    def body(write):
        def failing(f):
            buf = io.BytesIO()
            write(buf)
            f.write(buf.getvalue()[: max(1, len(buf.getvalue()) // 2)])
            raise OSError(errno.ENOSPC, "No space left on device")
        return failing

    def torch_save(obj, path):
        calls.append(os.path.basename(path))
        if len(calls) - 1 == fail_at:
            return files_mod.atomic_write(path, body(lambda f: torch.save(obj, f)))
        return ckmod.atomic_torch_save(obj, path)

    def write_text(path, text):
        calls.append(os.path.basename(path))
        if len(calls) - 1 == fail_at:
            return files_mod.atomic_write(path, body(lambda f: f.write(text.encode())))
        return files_mod.atomic_write_text(path, text)

    monkeypatch.setattr(ae_mod, "atomic_torch_save", torch_save)
    monkeypatch.setattr(ae_mod, "atomic_write_text", write_text)
    return calls


def test_train_ae_a_full_disk_at_any_write_is_one_line_and_nothing_half_written(
        tmp_path, monkeypatch, capsys, one_thread):
    calls = _ae_writes(monkeypatch)
    assert main([*AE_ARGV, "--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    writes = list(calls)
    assert writes[:2] == ["config.yaml", "metrics.jsonl"] and writes.count("metrics.jsonl") == 3
    for k, name in enumerate(writes):
        out = tmp_path / f"new{k}" / "ae"
        _ae_writes(monkeypatch, fail_at=k)
        code, err = run_cli(capsys, [*AE_ARGV, "--out", str(out)])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"cannot write {out / name}: No space left on device" in err
        if "autoencoder.pt" not in writes[:k]:  # no autoencoder yet: nothing left at all
            assert not (tmp_path / f"new{k}").exists(), k
            continue
        left = sorted(p.name for p in out.iterdir())
        assert left == ["autoencoder.pt", "config.yaml", "metrics.jsonl"], (k, left)
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in lines] == list(range(1, len(lines) + 1))
        raw = torch.load(out / "autoencoder.pt", weights_only=True)
        assert raw["history"][:len(lines)] == lines  # whole lines, the checkpoint's own
        if lines:  # the checkpoint is never behind the metrics' best epoch
            assert min(lines, key=lambda m: m["val_loss"])["epoch"] <= raw["best_epoch"]


def test_train_ae_refuses_a_second_writer_naming_the_holder(tmp_path, capsys, holder):
    out = tmp_path / "ae"
    other = holder(out)
    code, err = run_cli(capsys, [*AE_ARGV, "--out", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out} is being written by another repdiag process (pid {other.pid})" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
