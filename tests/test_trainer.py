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
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, msg):
    code = main(["train", *args, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


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
