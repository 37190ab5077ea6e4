import json
import math
import urllib.error

import pytest
import torch

from repdiag.cli import main
from repdiag.data import load_dataset
from repdiag.errors import UserError
from train.autoencoder import (
    AEConfig,
    load_ae_embedding,
    split_stats,
    train_autoencoder,
    zscore_stats,
)
from train.config import load_config
from train.trainer import Trainer

# ResNet-18 at width 1 (512 features, as the embedding layer needs) on a few 32 px images,
# with torchvision's 7x7 stem so that the feature maps stay tiny.
SIM = ["data=synthetic", "data_limit=32", "width=1", "batch_size=16", "cifar_stem=false",
       "knn_every=0", "epochs=1", "head.kind=ae", "head.hidden_dim=128", "head.out_dim=16"]


@pytest.fixture(scope="module")
def ae_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    cfg = AEConfig(data="synthetic", data_limit=64, latent=128, epochs=2, batch_size=32)
    summary = train_autoencoder(cfg, out, quiet=True)
    return out / "autoencoder.pt", summary


def test_autoencoder_trains_and_keeps_best_checkpoint(ae_file):
    path, summary = ae_file
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "repdiag-autoencoder" and raw["latent"] == 128
    hist = raw["history"]
    assert all(math.isfinite(h["val_loss"]) for h in hist)
    best = min(h["val_loss"] for h in hist)
    assert raw["best_val_loss"] == pytest.approx(best) == pytest.approx(summary["best_val_loss"])
    assert hist[raw["best_epoch"] - 1]["val_loss"] == pytest.approx(best)
    w, b = raw["embedding"]["weight"], raw["embedding"]["bias"]
    assert w.shape == (128, 512) and b.shape == (128,)
    assert torch.equal(w, raw["state_dict"]["encoder.2.weight"])
    assert raw["zscore"]["mode"] == "none" and raw["config"]["lr"] == 1e-4
    lines = (path.parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert math.isfinite(summary["test_loss"])


def test_train_ae_cli_and_refusals(tmp_path, capsys):
    out = tmp_path / "ae"
    args = ["train-ae", "--data", "synthetic", "--out", str(out), "--quiet",
            "--set", "epochs=1", "--set", "data_limit=16", "--set", "latent=256"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["latent"] == 256
    assert load_ae_embedding(out / "autoencoder.pt")["weight"].shape == (256, 512)
    assert main(args) == 2 and "already holds an autoencoder" in capsys.readouterr().err
    for bad, msg in (("latent=0", "latent must be a positive integer"),
                     ("zscore=sometimes", "unknown zscore")):
        assert main(["train-ae", "--data", "synthetic", "--out", str(tmp_path / "o"),
                     "--set", bad]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1


def _direct_stats(images: torch.Tensor):
    x = images.double() / 255
    per_mean = x.mean(dim=(2, 3))
    per_std = x.std(dim=(2, 3), correction=0)
    return per_mean.mean(0), per_std.mean(0)


def test_zscore_train_uses_train_statistics_and_per_split_its_own():
    data = load_dataset("synthetic", val_fraction=0.2, seed=0, limit=40)
    mean, std = _direct_stats(data.train.images)
    got = zscore_stats(data.train.images, 128, chunk=7)
    assert torch.allclose(got[0].double(), mean, atol=1e-6)
    assert torch.allclose(got[1].double(), std, atol=1e-6)
    train = split_stats(data, "train", 128)
    for name in ("train", "val", "test"):
        assert torch.allclose(train[name][0].double(), mean, atol=1e-6)
        assert torch.allclose(train[name][1].double(), std, atol=1e-6)
    per = split_stats(data, "per-split", 128)
    vmean, vstd = _direct_stats(data.val.images)
    assert torch.allclose(per["val"][0].double(), vmean, atol=1e-6)
    assert torch.allclose(per["val"][1].double(), vstd, atol=1e-6)
    assert not torch.allclose(per["val"][0], train["val"][0])
    assert split_stats(data, "none", 128)["train"] is None


def _first(head):
    return head.first_linear()


def test_frozen_embedding_is_bitwise_unchanged_and_equals_the_autoencoder(tmp_path, ae_file):
    path, _ = ae_file
    emb = load_ae_embedding(path)
    cfg = load_config("fmnist-tiny", SIM + [f"head.ae_checkpoint={path}"])
    t = Trainer(cfg, tmp_path / "frozen", quiet=True)
    other_before = t.head.net[-1].weight.detach().clone()
    opt_params = {id(p) for g in t.scheme.optimizer.param_groups for p in g["params"]}
    assert id(_first(t.head).weight) not in opt_params and id(_first(t.head).bias) not in opt_params
    t.run()
    from repdiag.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "frozen" / "last.pt")
    assert torch.equal(ck.head_state["net.0.weight"], emb["weight"])
    assert torch.equal(ck.head_state["net.0.bias"], emb["bias"])
    assert not torch.equal(ck.head_state["net.2.weight"], other_before)  # the rest trains
    assert ck.config["head"]["kind"] == "ae" and ck.config["head"]["ae_frozen"] is True

    cfg = load_config("fmnist-tiny", SIM + [f"head.ae_checkpoint={path}", "head.ae_frozen=false"])
    t = Trainer(cfg, tmp_path / "free", quiet=True)
    assert torch.equal(_first(t.head).weight.detach(), emb["weight"])
    t.run()
    assert not torch.equal(_first(t.head).weight.detach().cpu(), emb["weight"])


def test_ae_head_refusals(tmp_path, ae_file):
    path, _ = ae_file
    with pytest.raises(UserError, match="latent size is 128"):
        cfg = load_config("fmnist-tiny", SIM + [f"head.ae_checkpoint={path}",
                                                "head.hidden_dim=256"])
        Trainer(cfg, tmp_path / "x", quiet=True)
    # the trainer refuses ResNet-50 features too (config checks bypassed)
    from train.autoencoder import attach_ae_embedding

    cfg = load_config("fmnist-tiny", SIM + [f"head.ae_checkpoint={path}"])
    with pytest.raises(UserError, match="takes 512 inputs but the backbone gives 2048") as e:
        attach_ae_embedding(None, cfg, 2048)
    assert "resnet18/resnet34" in str(e.value)


def test_ae_hidden_width_follows_a_narrow_backbone(tmp_path):
    """Without head.ae_checkpoint the autoencoder's hidden width is the backbone's m (here
    128: ResNet-18 at width 1/4), so its embedding layer fits; a 128-wide file refuses m=512."""
    cfg = load_config("fmnist-tiny", SIM + ["width=0.25", "head.hidden_dim=16",
                                            "head.ae_epochs=1"])
    Trainer(cfg, tmp_path / "narrow", quiet=True).run()
    emb = load_ae_embedding(tmp_path / "narrow" / "autoencoder" / "autoencoder.pt")
    assert emb["weight"].shape == (16, 128) and emb["hidden"] == 128
    from train.autoencoder import attach_ae_embedding

    wide = load_config("fmnist-tiny", SIM + ["head.hidden_dim=16", "head.ae_checkpoint="
                                             f"{tmp_path / 'narrow' / 'autoencoder' / 'autoencoder.pt'}"])
    with pytest.raises(UserError, match="takes 128 inputs but the backbone gives 512") as e:
        attach_ae_embedding(None, wide, 512)
    assert "hidden=512" in str(e.value)


def test_ae_head_without_checkpoint_trains_the_autoencoder_first(tmp_path):
    from repdiag.checkpoint import load_checkpoint
    from train.autoencoder import load_ae_embedding

    cfg = load_config("fmnist-tiny", SIM + ["head.ae_epochs=1"])
    Trainer(cfg, tmp_path, quiet=True).run()
    ae_path = tmp_path / "autoencoder" / "autoencoder.pt"
    emb = load_ae_embedding(ae_path)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.config["head"]["ae_checkpoint"] == str(ae_path) and emb["latent"] == 128
    assert torch.equal(ck.head_state["net.0.weight"], emb["weight"])
    assert torch.equal(ck.head_state["net.0.bias"], emb["bias"])


def test_s_presets_load():
    for name in ("s-cifar10", "s-stl10", "s-imagenette", "s-fgvc-aircraft"):
        assert load_config(name).head.ae_checkpoint is None  # trained first when left unset
        cfg = load_config(name, ["head.ae_checkpoint=/some/autoencoder.pt"])
        assert cfg.backbone == "resnet34" and cfg.cifar_stem is False
        assert cfg.pretrained_backbone == "imagenet" and cfg.head.batchnorm is False
        assert cfg.optim.name == "sgd" and cfg.optim.weight_decay == 1e-5
        assert cfg.optim.lr == pytest.approx(0.3 * cfg.batch_size / 256)
        assert cfg.optim.schedule == "cosine" and cfg.optim.min_lr_ratio == 0.02
        assert cfg.epochs == 150 and cfg.temperature == 0.5
    sizes = {n: load_config(n, ["head.kind=mlp"]).batch_size
             for n in ("s-cifar10", "s-stl10", "s-imagenette", "s-fgvc-aircraft")}
    assert sizes == {"s-cifar10": 1280, "s-stl10": 500, "s-imagenette": 392,
                     "s-fgvc-aircraft": 666}


PRE = ["data=synthetic", "data_limit=16", "width=1", "batch_size=8", "cifar_stem=false",
       "knn_every=0", "epochs=1", "head.kind=linear", "head.out_dim=8",
       "pretrained_backbone=imagenet"]


def test_pretrained_backbone_offline_is_one_line_user_error(tmp_path, monkeypatch, capsys):
    from torchvision.models._api import WeightsEnum

    def offline(self, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    args = ["train", "--config", "fmnist-tiny", "--out", str(tmp_path / "r"), "--quiet"]
    for s in PRE:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "could not fetch" in err and "--set pretrained_backbone=null" in err


def test_pretrained_backbone_loads_torchvision_weights(tmp_path, monkeypatch):
    import torchvision
    from torchvision.models._api import WeightsEnum

    torch.manual_seed(123)
    ref = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: ref)
    t = Trainer(load_config("fmnist-tiny", PRE), tmp_path / "r", quiet=True)
    own = t.backbone.state_dict()
    assert torch.equal(own["conv1.weight"], ref["conv1.weight"])
    assert torch.equal(own["layer4.1.bn2.running_var"], ref["layer4.1.bn2.running_var"])
    with pytest.raises(UserError, match="width 1"):
        load_config("fmnist-tiny", PRE + ["width=0.5"])
    with pytest.raises(UserError, match="cifar_stem=false"):
        load_config("fmnist-tiny", PRE + ["cifar_stem=true"])


def test_ae_checkpoint_path_template_and_example_grid():
    from train.autoencoder import ae_checkpoint_path
    from train.sweep import expand, read_grid

    assert ae_checkpoint_path("ae/c-{latent}/autoencoder.pt", 256) == "ae/c-256/autoencoder.pt"
    assert ae_checkpoint_path("/x/autoencoder.pt", 256) == "/x/autoencoder.pt"
    from pathlib import Path

    grid = Path(__file__).parent.parent / "train" / "grids" / "s-cifar10.yaml"
    g = read_grid(grid)
    runs = expand(g)
    # S §3.5: ae/mlp x dim(g) x dim(z) x activation x Z-score = 144 configurations, 3 seeds
    assert len(runs) == 2 * 3 * 3 * 4 * 2 * 3 and len({r.name for r in runs}) == len(runs)
    assert {r.config.augment.zscore for r in runs} == {False, True}
    assert g.probes == ["linear:s"] and g.checkpoint == "best"  # S's Acc@1 on best-val-loss runs
    assert {r.config.split_seed for r in runs} == {0}  # one split for every run, as in S
