import json

import pytest
import torch

from repdiag.checkpoint import load_checkpoint
from repdiag.cli import main
from train.config import load_config
from train.trainer import Trainer

TINY = ["data=synthetic", "data_limit=96", "width=0.125", "batch_size=32", "knn_subset=64",
        "knn_k=20", "head.hidden_dim=32", "head.out_dim=16"]


def tiny_config(*extra):
    return load_config("fmnist-tiny", TINY + list(extra))


@pytest.mark.parametrize("head", ["none", "linear", "mlp:relu", "mlp:silu", "mlp:sigmoid",
                                  "mlp:tanh"])
def test_one_epoch_per_head_gives_loadable_checkpoint(tmp_path, head):
    kind, _, act = head.partition(":")
    cfg = tiny_config("epochs=1", f"head.kind={kind}", f"head.activation={act or 'relu'}")
    final = Trainer(cfg, tmp_path, quiet=True).run()
    assert torch.isfinite(torch.tensor(final["loss"]))
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.epoch == 1 and ck.head_spec.kind == kind and ck.config["head"]["kind"] == kind
    z = ck.build_head()(ck.build_backbone()(torch.rand(2, 3, 32, 32)))
    assert z.shape[1] == (ck.head_spec.in_dim if kind == "none" else 16)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1]
    assert {"epoch", "loss", "seconds", "images_per_s", "lr", "knn_val", "rankme_h",
            "rankme_z"} <= set(lines[0])
    assert 1 <= lines[0]["rankme_z"] <= z.shape[1] and 1 <= lines[0]["rankme_h"] <= ck.head_spec.in_dim


def test_loss_falls_on_tiny_overfittable_set(tmp_path):
    cfg = tiny_config("epochs=8", "data_limit=32", "batch_size=32", "knn_every=0",
                      "augment.jitter_p=0.0", "augment.gray_p=0.0", "augment.crop_scale_min=0.8",
                      "optim.lr=0.003")
    Trainer(cfg, tmp_path, quiet=True).run()
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.3, losses


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(tiny_config("epochs=2", "save_every=1", "knn_every=0"), full, quiet=True).run()
    Trainer(tiny_config("epochs=1", "save_every=1", "knn_every=0"), part, quiet=True).run()
    resumed = tiny_config("epochs=2", "save_every=1", "knn_every=0")
    Trainer(resumed, part, quiet=True, resume=True).run()
    a = torch.load(full / "checkpoints" / "epoch_002.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "epoch_002.pt", weights_only=True)
    for section in ("backbone", "head"):
        for k in a[section]:
            assert torch.equal(a[section][k], b[section][k]), (section, k)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_writes_checkpoints_every_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "fmnist-tiny", "--quiet", "--out", str(out)]
    for s in TINY + ["epochs=2", "save_every=1", "head.kind=linear", "knn_every=0"]:
        args += ["--set", s]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 2
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]
    assert (out / "last.pt").exists() and (out / "config.yaml").exists()


@pytest.mark.parametrize("args,msg", [
    (["--config", "nope"], "unknown preset 'nope'"),
    (["--config", "fmnist-tiny", "--set", "wat=1"], "unknown --set key 'wat'"),
    (["--config", "fmnist-tiny", "--set", "epochs=x"], "epochs: expected an integer"),
    (["--config", "fmnist-tiny", "--set", "data=nosuchdata"], "nosuchdata"),
    (["--config", "fmnist-tiny", "--set", "data=tinyimagenet", "--set", "data_root=/nonexistent"],
     "tinyimagenet"),
    (["--config", "fmnist-tiny", "--set", "data=synthetic", "--set", "device=gpu"], "unknown device 'gpu'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, msg):
    code = main(["train", *args, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_unwritable_out_is_user_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["train", "--config", "fmnist-tiny", "--set", "data=synthetic",
                 "--out", str(blocker / "sub"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to --out" in err and len(err.strip().splitlines()) == 1


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    Trainer(tiny_config("epochs=1", "knn_every=0"), tmp_path, quiet=True).run()
    code = main(["train", "--config", "fmnist-tiny", "--set", "data=synthetic",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 2 and "already holds a run" in capsys.readouterr().err


def test_epoch_monitor_rankme_sees_a_collapsed_head():
    import numpy as np

    from repdiag.data import load_dataset
    from repdiag.models import BackboneSpec, build_backbone
    from train.monitor import embed, epoch_monitor, fixed_subset

    cfg = tiny_config()
    data = load_dataset("synthetic", limit=96)
    torch.manual_seed(0)
    backbone = build_backbone(BackboneSpec("resnet18", 0.125, True))
    head = torch.nn.Linear(backbone.feature_dim, 16, bias=False)
    with torch.no_grad():  # rank-1 head: z collapses onto one direction
        head.weight.copy_(torch.randn(16, 1) @ torch.randn(1, backbone.feature_dim))
    out = epoch_monitor(backbone, head, data, cfg, torch.device("cpu"))
    h = embed(backbone, data.val.images[fixed_subset(len(data.val), cfg.knn_subset,
                                                     cfg.seed + 2)], torch.device("cpu"))
    s = np.linalg.svd(h.double().numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert out["rankme_h"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-3)
    assert out["rankme_z"] < 1.05 < out["rankme_h"]
    assert 0 <= out["knn_val"] <= 1


def test_zscore_uses_train_statistics_and_extraction_reuses_them(tmp_path, monkeypatch):
    from repdiag.data import load_dataset
    from repdiag.features import _normalization

    cfg = tiny_config("epochs=1", "knn_every=0", "augment.zscore=true")
    trainer = Trainer(cfg, tmp_path, quiet=True)
    x = load_dataset("synthetic", limit=96).train.images.double() / 255
    expected_mean = x.mean(dim=(2, 3)).mean(dim=0)
    expected_std = x.flatten(2).std(dim=2, correction=0).mean(dim=0)
    mean, std = trainer.input_norm
    torch.testing.assert_close(torch.tensor(mean).double(), expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(std).double(), expected_std, rtol=1e-5, atol=1e-6)
    assert trainer.aug.mean is not None
    trainer.run()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.extra["input_norm"] == {"mean": list(mean), "std": list(std)}
    assert _normalization(ck, "auto") == (tuple(mean), tuple(std))


def test_directclr_default_d0_scales_with_the_feature_size(tmp_path, capsys):
    """`repdiag train --config fmnist-tiny --set head.kind=directclr` trains on any width."""
    out = tmp_path / "dclr"
    args = ["train", "--config", "fmnist-tiny", "--quiet", "--out", str(out),
            "--set", "head.kind=directclr"]
    for s in TINY + ["epochs=1", "knn_every=0"]:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    ck = load_checkpoint(out / "last.pt")
    m = ck.head_spec.in_dim
    assert ck.head_spec.d0 == round(360 * m / 2048) == ck.config["head"]["d0"]  # recorded
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["head"]["d0"] == ck.head_spec.d0
    # the resnet50 value stays DirectCLR's own
    from repdiag.models import directclr_d0

    assert directclr_d0(tiny_config("head.kind=directclr").head.d0, 2048) == 360


def test_validation_loss_is_logged_and_best_checkpoint_kept(tmp_path):
    cfg = tiny_config("epochs=3", "knn_every=0", "save_every=1", "select=best")
    tr = Trainer(cfg, tmp_path, quiet=True)
    tr.run()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [m["val_loss"] for m in lines]
    best_epoch = 1 + min(range(3), key=losses.__getitem__)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.epoch == best_epoch
    same = load_checkpoint(tmp_path / "checkpoints" / f"epoch_{best_epoch:03d}.pt")
    for k in best.backbone_state:
        assert torch.equal(best.backbone_state[k], same.backbone_state[k]), k
    # the logged value is the loss of the saved model on fixed views: recomputed from the
    # checkpoint it agrees, and a second evaluation gives the same number
    again = tr.validation_loss()
    assert again == pytest.approx(lines[-1]["val_loss"], abs=1e-6)
    assert tr.validation_loss() == again


def test_validation_views_are_fixed_and_independent_of_the_training_stream(tmp_path):
    a = Trainer(tiny_config("epochs=1", "knn_every=0"), tmp_path / "a", quiet=True)
    b = Trainer(tiny_config("epochs=1", "knn_every=0"), tmp_path / "b", quiet=True)
    torch.manual_seed(123)  # the global RNG plays no part
    va = a.validation_loss()
    torch.manual_seed(456)
    assert b.validation_loss() == va


def test_select_best_needs_a_validation_split():
    from repdiag.errors import UserError

    with pytest.raises(UserError, match="no validation split"):
        tiny_config("select=best", "val_fraction=0")


def test_split_scheme_s_is_used_for_training_and_extraction(tmp_path):
    from repdiag.data import load_dataset
    from repdiag.features import extract

    cfg = tiny_config("epochs=1", "knn_every=0", "split_scheme=s", "data_limit=null")
    tr = Trainer(cfg, tmp_path, quiet=True)
    n = 512 + 256  # synthetic: official train + test, pooled and cut 70/10/20
    assert (len(tr.data.train), len(tr.data.val), len(tr.data.test)) == (538, 77, 153)
    assert len(tr.data.train) + len(tr.data.val) + len(tr.data.test) == n
    tr.run()
    fs = extract(tmp_path / "last.pt", split="test")
    ref = load_dataset("synthetic", split_scheme="s", seed=0).test
    assert torch.equal(fs.y, ref.labels)


def test_dataset_options_reach_the_loader_and_the_extractor(tmp_path):
    from repdiag.features import extract

    cfg = tiny_config("epochs=1", "knn_every=0", "image_size=16")
    tr = Trainer(cfg, tmp_path, quiet=True)
    assert tr.image_size == 16 and tr.data.train.images.shape[-1] == 16
    tr.run()
    from train.monitor import embed

    fs = extract(tmp_path / "last.pt", split="test", limit=96)  # the trainer's test subset
    torch.testing.assert_close(fs.h, embed(tr.backbone, tr.data.test.images, torch.device("cpu")),
                               atol=1e-5, rtol=1e-4)  # 16 px images, as trained


@pytest.mark.parametrize("extra,msg", [
    (["data=fashion-mnist", "label_level=family"], "dataset 'fashion-mnist' does not take label_level"),
    (["data=fashion-mnist", "image_size=0"], "image_size must be positive"),
    (["label_level=manufacturer"], "dataset 'synthetic' does not take label_level"),
    (["data=fgvc-aircraft", "label_level=model"], "unknown label_level 'model'"),
    (["split_scheme=pooled"], "unknown split_scheme 'pooled'"),
])
def test_dataset_options_are_checked_before_any_work(extra, msg):
    from repdiag.errors import UserError

    with pytest.raises(UserError, match=msg):
        tiny_config(*extra)


def test_without_validation_split_the_monitor_uses_test_and_says_so(tmp_path):
    from train.trainer import format_metrics

    cfg = tiny_config("epochs=1", "val_fraction=0")
    Trainer(cfg, tmp_path, quiet=True).run()
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert "knn_test" in line and "knn_val" not in line and "val_loss" not in line
    assert "kNN(test, not used for selection)" in format_metrics(line)
    assert not (tmp_path / "best.pt").exists()


def test_epoch_hooks_see_epoch_zero_and_each_checkpointed_state(tmp_path):
    """hook(trainer, epoch) runs at epoch 0 and after each epoch, on the state last.pt holds;
    a resumed run calls it only for the epochs it trains."""
    seen = []

    def hook(trainer, epoch):
        ck = load_checkpoint(trainer.out / "last.pt") if epoch else None
        same = ck is None or all(torch.equal(v, trainer.head.state_dict()[k])
                                 for k, v in ck.head_state.items())
        seen.append((epoch, same))

    Trainer(tiny_config("epochs=1", "head.kind=linear"), tmp_path / "run", quiet=True,
            epoch_hooks=[hook]).run()
    assert seen == [(0, True), (1, True)]
    cfg = tiny_config("epochs=2", "head.kind=linear")
    Trainer(cfg, tmp_path / "run", quiet=True, resume=True, epoch_hooks=[hook]).run()
    assert seen == [(0, True), (1, True), (2, True)]
