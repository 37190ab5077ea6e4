"""User mistakes: each gets exit code 2, one line on stderr naming what is wrong (and, with
``--json``, a JSON error object on stdout), and leaves no partial file behind."""

import json
import pickle

import pytest
import torch
from torch import nn

from repdiag.cli import main
from repdiag.features import FeatureSet, save_features
from train.config import load_config
from train.trainer import Trainer

TINY = ["data=synthetic", "data_limit=48", "width=0.125", "batch_size=16", "knn_every=0",
        "head.hidden_dim=16", "head.out_dim=8", "epochs=1"]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_MARKER",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The inputs the cases refer to by name."""
    d = tmp_path_factory.mktemp("inputs")
    g = torch.Generator().manual_seed(0)
    h, y = torch.randn(60, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    save_features(d / "feat.pt", FeatureSet(h=h, y=y), FeatureSet(h=h, y=y))

    def feature_file(name, train=None, test=None, head=None):
        base = {"h": h, "y": y}
        raw = {"train": {**base, **(train or {})}, "test": {**base, **(test or {})}}
        if head is not None:
            raw["head"] = head
        torch.save(raw, d / name)

    bad_h = h.clone()
    bad_h[3, 2] = float("nan")
    feature_file("nan.pt", test={"h": bad_h})
    feature_file("frac.pt", train={"y": y.double() + 0.5})
    feature_file("short_y.pt", test={"y": y[:10]})
    feature_file("bad_head.pt", head={"weight": torch.randn(4, 5)})
    torch.save({"train": {"h": h, "y": y}}, d / "no_test.pt")
    (d / "notes.txt").write_text("not a checkpoint\n")
    torch.save({"x": torch.ones(3)}, d / "full.pt")
    raw = (d / "full.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    torch.save({"payload": _Evil()}, d / "evil.pt")
    (d / "evil.pkl").write_bytes(pickle.dumps(_Evil()))
    torch.save(nn.Sequential(nn.Linear(4, 2)), d / "module.pt")
    torch.save({"enc.weight": torch.ones(2, 2)}, d / "custom.pt")
    (d / "folder").mkdir()
    run = d / "run"
    Trainer(load_config("fmnist-tiny", TINY), run, quiet=True).run()
    (d / "run_nobest").mkdir()
    (d / "run_nobest" / "last.pt").write_bytes((run / "last.pt").read_bytes())
    (run / "best.pt").unlink(missing_ok=True)
    (d / "blocker").write_text("a file where a folder is expected")
    save_features(d / "feat_two.pt", FeatureSet(h=h[:2], y=y[:2]), FeatureSet(h=h[:2], y=y[:2]))
    return d


# (case id, argv with {d} for the inputs folder, a piece of the expected message)
DIAGNOSTIC_CASES = [
    ("missing-file", ["rank", "{d}/nope.pt"], "no such checkpoint"),
    ("directory", ["rank", "{d}/folder"], "is a directory"),
    ("text-file", ["rank", "{d}/notes.txt"], "not a torch file"),
    ("truncated", ["rank", "{d}/truncated.pt"], "truncated"),
    ("evil-torch", ["rank", "{d}/evil.pt"], "refused"),
    ("evil-pickle", ["rank", "{d}/evil.pkl"], "refused"),
    ("pickled-module", ["rank", "{d}/module.pt"], "save the model's state_dict()"),
    ("plain-tensors", ["rank", "{d}/full.pt"], "no ResNet, WideResNet or ViT backbone found"),
    ("unknown-layout", ["rank", "{d}/custom.pt"], "--map"),
    ("bad-map", ["rank", "{d}/custom.pt", "--map", "enc.=encoder"], "PREFIX=ROLE"),
    ("map-leaves-keys", ["rank", "{d}/custom.pt", "--map", "x.=head"], "unassigned"),
    ("device-gpu", ["rank", "{d}/run/last.pt", "--device", "gpu"], "unknown --device 'gpu'"),
    ("stem-on-own", ["rank", "{d}/run/last.pt", "--stem", "cifar-pad2"],
     "--stem apply to foreign checkpoints"),
    ("bad-normalize", ["rank", "{d}/run/last.pt", "--normalize", "cifar"], "--normalize must be"),
    ("device-cuda-n", ["rank", "{d}/run/last.pt", "--device", "cuda:x"], "unknown --device"),
    ("limit-zero", ["rank", "{d}/run/last.pt", "--limit", "0"], "--limit must be positive"),
    ("limit-negative", ["probe", "{d}/run/last.pt", "--limit", "-3"], "--limit must be positive"),
    ("unknown-data", ["rank", "{d}/run/last.pt", "--data", "nosuchdata"], "unknown dataset"),
    ("unknown-split", ["rank", "{d}/run/last.pt", "--split", "nope"], "unknown split 'nope'"),
    ("feature-split", ["rank", "{d}/feat.pt", "--split", "val"], "holds only the splits"),
    ("negative-rtol", ["rank", "{d}/feat.pt", "--rtol", "-1"], "rtol must be"),
    ("unknown-probe", ["probe", "{d}/feat.pt", "--probe", "svm"],
     "argument --probe: invalid choice: 'svm' (choose from 'knn', 'linear')"),
    ("probe-with-preset", ["nullspace", "{d}/feat.pt", "--probe", "knn:g"],
     "argument --probe: invalid choice: 'knn:g' (choose from 'knn', 'linear')"),
    ("unknown-on", ["probe", "{d}/feat.pt", "--on", "q"], "--on takes"),
    ("z-absent", ["probe", "{d}/feat.pt", "--on", "z"], "hold no z"),
    ("knn-preset", ["probe", "{d}/feat.pt", "--preset", "nope"], "unknown kNN preset"),
    ("linear-preset", ["probe", "{d}/feat.pt", "--probe", "linear", "--preset", "x"],
     "unknown linear-probe preset"),
    ("split-without-head", ["probe", "{d}/feat.pt", "--on", "h_r"], "head's linear map"),
    ("nullspace-without-head", ["nullspace", "{d}/feat.pt"], "nullspace needs the head"),
    ("tsne-points", ["tsne", "{d}/feat.pt", "--max-points", "3"], "at least 10"),
    ("tsne-perplexity", ["tsne", "{d}/feat.pt", "--perplexity", "-1"], "perplexity must be"),
    ("nan-features", ["rank", "{d}/nan.pt"], "nan.pt: test.h contains NaN"),
    ("fractional-labels", ["probe", "{d}/frac.pt"], "non-integer class labels"),
    ("short-labels", ["rank", "{d}/short_y.pt"], "test.y must have shape"),
    ("bad-head", ["rank", "{d}/bad_head.pt"], "head.weight must be"),
    ("no-test-split", ["rank", "{d}/no_test.pt"], "no_test.pt"),
    ("out-is-a-file", ["spectrum", "{d}/feat.pt", "--out", "{d}/blocker"], "cannot write to --out"),
    ("out-under-a-file", ["tsne", "{d}/feat.pt", "--out", "{d}/blocker/figs"],
     "cannot write to --out"),
    ("no-best", ["rank", "{d}/run_nobest", "--checkpoint", "best"], "no best.pt"),
    # options checked before any extraction, cache write or progress line (checkpoint inputs)
    ("limit-one", ["rank", "{d}/run/last.pt", "--limit", "1"], "--limit 1 leaves one sample"),
    ("preset-before-work", ["probe", "{d}/run/last.pt", "--preset", "nope"],
     "unknown kNN preset 'nope' (--preset)"),
    ("report-preset", ["report", "{d}/run/last.pt", "--out", "{d}/rep", "--preset", "nope"],
     "(--preset)"),
    ("report-probe", ["report", "{d}/run/last.pt", "--out", "{d}/rep", "--probe", "svm"],
     "argument --probe: invalid choice: 'svm' (choose from 'knn', 'linear')"),
    ("knn-preset-for-linear", ["nullspace", "{d}/run/last.pt", "--probe", "linear", "--preset",
                               "lightly"],
     "unknown linear-probe preset 'lightly' (--preset); with --probe linear choose one of "
     "fast, g, s"),
    ("report-tsne-points", ["report", "{d}/run/last.pt", "--out", "{d}/rep", "--tsne-points",
                            "1"], "--tsne-points must be 0 (no maps) or at least 10"),
    ("report-two-samples", ["report", "{d}/feat_two.pt", "--out", "{d}/rep"],
     "pass --tsne-points 0"),
    ("tsne-small-perplexity", ["tsne", "{d}/run/last.pt", "--perplexity", "0.2"],
     "--perplexity must be a finite number of at least 1/3"),
    ("tsne-perplexity-points", ["tsne", "{d}/run/last.pt", "--max-points", "20"],
     "--perplexity 30 needs more than 90 points; --max-points is 20"),
    ("seed-too-large", ["probe", "{d}/run/last.pt", "--seed", "1180591620717411303424"],
     "--seed must be an integer in 0..2^63-1"),
    ("rtol-huge", ["rank", "{d}/run/last.pt", "--rtol", "1e308"], "--rtol must be"),
    ("out-under-a-file-report", ["report", "{d}/run/last.pt", "--out", "{d}/blocker/rep"],
     "cannot write to --out"),
    ("unknown-option", ["rank", "{d}/feat.pt", "--bogus"], "unrecognized arguments"),
    ("bad-choice", ["rank", "{d}/run", "--checkpoint", "peak"], "invalid choice"),
]


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case,argv,msg", DIAGNOSTIC_CASES, ids=[c[0] for c in DIAGNOSTIC_CASES])
def test_diagnostic_mistakes(files, tmp_path, monkeypatch, capsys, case, argv, msg):
    monkeypatch.chdir(tmp_path)  # a figure written by mistake would land here
    argv = [a.format(d=files) for a in argv]
    code, out, err = _run(capsys, argv)
    assert code == 2, (case, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert msg in err, err
    code, out, err = _run(capsys, [*argv, "--json"])
    assert code == 2 and msg in json.loads(out.strip().splitlines()[-1])["error"]
    # nothing written here, not even the feature cache ($REPDIAG_CACHE is under tmp_path)
    assert list(tmp_path.iterdir()) == [] and not (tmp_path / "PWNED_MARKER").exists()
    assert not any(p.name.endswith(".tmp") for p in files.rglob("*"))
    assert not (files / "rep").exists()  # no --out folder created by a failed command


def test_cuda_without_a_gpu_is_refused_before_any_work(files, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in ("cuda", "cuda:0"):
        code, _, err = _run(capsys, ["rank", f"{files}/feat.pt", "--device", device])
        assert code == 2 and "no CUDA device is available" in err


TRAIN_CASES = [
    ("unknown-preset", ["--config", "nope"], "unknown preset 'nope'"),
    ("no-out", ["--config", "fmnist-tiny"], "needs --out"),
    ("lr-negative", ["--set", "optim.lr=-1"], "optim.lr must be a positive number"),
    ("lr-nan", ["--set", "optim.lr=nan"], "optim.lr must be a positive number"),
    ("wd-negative", ["--set", "optim.weight_decay=-1"], "optim.weight_decay must be >= 0"),
    ("momentum", ["--set", "optim.momentum=1.5"], "optim.momentum must be in [0, 1)"),
    ("knn-k", ["--set", "knn_k=0"], "knn_k must be at least 1"),
    ("knn-subset", ["--set", "knn_subset=0"], "knn_subset must be at least 1"),
    ("temperature", ["--set", "temperature=0"], "temperature must be"),
    ("flip-p", ["--set", "augment.flip_p=2"], "augment.flip_p is a probability"),
    ("crop", ["--set", "augment.crop_scale_min=0"], "crop scales"),
    ("width", ["--set", "width=0"], "width must be positive"),
    ("data-limit", ["--set", "data_limit=0"], "data_limit must be at least 1"),
    ("image-size", ["--set", "data=fashion-mnist", "--set", "image_size=0"],
     "image_size must be positive"),
    ("label-level", ["--set", "label_level=model"], "unknown label_level"),
    ("select", ["--set", "select=best", "--set", "val_fraction=0"], "no validation split"),
    ("inner-optim", ["--set", "scheme.inner_optim=rmsprop"], "unknown scheme.inner_optim"),
    ("d0", ["--set", "head.kind=directclr", "--set", "head.d0=0"], "head.d0 must be positive"),
    ("unknown-key", ["--set", "wat=1"], "unknown --set key 'wat'"),
    ("bad-type", ["--set", "epochs=x"], "epochs: expected an integer"),
    ("unknown-data", ["--set", "data=nosuchdata"], "unknown dataset"),
]


@pytest.mark.parametrize("case,extra,msg", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_mistakes_are_refused_before_any_work(tmp_path, capsys, case, extra, msg):
    out = tmp_path / "run"
    argv = ["train", "--quiet"]
    if case != "unknown-preset":
        argv += ["--config", "fmnist-tiny"]
    for s in TINY:
        argv += ["--set", s]
    argv += extra
    if case != "no-out":
        argv += ["--out", str(out)]
    code, _, err = _run(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and msg in err, err
    assert not out.exists()  # validated before the run folder was made


def test_resume_refuses_to_change_the_model(files, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(load_config("fmnist-tiny", TINY), run, quiet=True).run()
    before = (run / "last.pt").read_bytes()
    code, _, err = _run(capsys, ["train", "--resume", str(run), "--set", "width=0.5"])
    assert code == 2 and "--set width=0.5 cannot change a run being resumed" in err
    assert len(err.strip().splitlines()) == 1 and (run / "last.pt").read_bytes() == before
    code, _, err = _run(capsys, ["train", "--resume", str(tmp_path / "none")])
    assert code == 2 and "nothing to resume" in err and not (tmp_path / "none").exists()


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(load_config("fmnist-tiny", TINY), run, quiet=True).run()
    good = (run / "last.pt").read_bytes()
    argv = ["train", "--resume", str(run), "--set", "epochs=3", "--quiet"]
    import train.trainer as trainer_mod

    original = trainer_mod.Trainer._train_epoch

    def explode(self, epoch):  # the loss of epoch 2 turns into NaN, as with optim.lr=1e8
        self.scheme.train_step = lambda v1, v2: float("nan")
        return original(self, epoch)

    trainer_mod.Trainer._train_epoch = explode
    try:
        code, _, err = _run(capsys, argv)
    finally:
        trainer_mod.Trainer._train_epoch = original
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "training diverged: the loss became nan at epoch 2" in err
    assert "last good checkpoint" in err and (run / "last.pt").read_bytes() == good


def test_sgd_at_lr_1e8_diverges_in_one_line(tmp_path, capsys):
    argv = ["train", "--config", "fmnist-tiny", "--quiet", "--out", str(tmp_path / "run")]
    for s in TINY + ["optim.name=sgd", "optim.lr=1e8", "epochs=2"]:
        argv += ["--set", s]
    code, _, err = _run(capsys, argv)
    assert code == 2 and "training diverged" in err and "at epoch 1" in err
    assert len(err.strip().splitlines()) == 1


def test_stale_temp_files_of_a_killed_write_are_cleaned_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(load_config("fmnist-tiny", TINY), run, quiet=True).run()
    stale = run / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    (run / "checkpoints" / ".epoch_001.pt.x.tmp").write_bytes(b"")
    Trainer(load_config("fmnist-tiny", [*TINY, "epochs=2"]), run, quiet=True, resume=True).run()
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))


def test_run_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        Trainer(load_config("fmnist-tiny", TINY), tmp_path / "run", quiet=True).run()
    finally:
        os.umask(old)
    for name in ("last.pt", "config.yaml", "metrics.jsonl"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import train.trainer as trainer_mod

    def no_data(*a, **k):
        from repdiag.errors import UserError

        raise UserError("dataset 'synthetic' not found (simulated)")

    monkeypatch.setattr(trainer_mod, "load_dataset", no_data)
    argv = ["train", "--config", "fmnist-tiny", "--quiet", "--out", str(tmp_path / "a" / "run")]
    for s in TINY:
        argv += ["--set", s]
    code, _, err = _run(capsys, argv)
    assert code == 2 and "simulated" in err and not (tmp_path / "a").exists()


def test_feature_file_with_data_options_says_they_do_not_apply(files, capsys):
    code, _, err = _run(capsys, ["rank", f"{files}/feat.pt", "--data", "synthetic"])
    assert code == 0 and "--data do(es) not apply to feature files" in err


def test_figure_names_are_unique_per_input(files, tmp_path, capsys):
    a, b = tmp_path / "run1", tmp_path / "run2"
    for d in (a, b):
        d.mkdir()
        (d / "last.pt").write_bytes((files / "feat.pt").read_bytes())
    out = tmp_path / "figs"
    assert main(["spectrum", str(a / "last.pt"), str(b / "last.pt"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"spectrum_run1_last.png", "spectrum_run1_last.pdf",
                                              "spectrum_run2_last.png", "spectrum_run2_last.pdf"}
    capsys.readouterr()
    assert main(["tsne", str(a / "last.pt"), str(b / "last.pt"), "--out", str(out), "--on", "h",
                 "--json", "--max-points", "40", "--perplexity", "5"]) == 0
    figs = [r["h"]["figure"][0] for r in json.loads(capsys.readouterr().out)]
    assert len(set(figs)) == 2


def test_rank_flags_sample_limited_ranks(files, capsys):
    code = main(["rank", f"{files}/run/last.pt", "--limit", "20", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["h"]["limited_by_samples"] and r["h"]["n"] == 20
    assert main(["rank", f"{files}/run/last.pt", "--limit", "20"]) == 0
    assert "raise --limit" in capsys.readouterr().out


def test_a_full_disk_while_writing_figures_leaves_no_partial_figure(files, tmp_path, monkeypatch,
                                                                     capsys):
    import errno

    from matplotlib.figure import Figure

    original = Figure.savefig

    def savefig(self, fname, *a, format=None, **k):
        if format == "pdf":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fname, *a, format=format, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "figs"
    code, _, err = _run(capsys, ["spectrum", f"{files}/feat.pt", "--out", str(out)])
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    # neither the PNG without its PDF nor a temp file, and no --out folder created
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_failed_download_leaves_no_data_root_tree(tmp_path, monkeypatch):
    from repdiag.data.paths import via_torchvision
    from repdiag.errors import UserError

    monkeypatch.delenv("REPDIAG_NO_DOWNLOAD", raising=False)

    def make(directory, download):
        raise RuntimeError("network unreachable" if download else "not found")

    root = tmp_path / "data" / "here"
    with pytest.raises(UserError, match="download failed"):
        via_torchvision("cifar10", make, root, True, "get it by hand")
    assert not (tmp_path / "data").exists()


def test_a_resume_refuses_a_checkpoint_from_a_newer_version(files, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files / "run", run)
    raw = torch.load(run / "last.pt", weights_only=True)
    raw["version"] = 99
    torch.save(raw, run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = _run(capsys, ["train", "--resume", str(run), "--quiet", "--set", "epochs=2"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "version 99 is newer than this repdiag (version 1)" in err
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
