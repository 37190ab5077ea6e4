"""Checkpoints written by the libraries themselves, read by ``repdiag rank --json``.

Each file is made the way its library's users make it (lightly: a module with
``backbone`` and ``projection_head`` saved by ``torch.save(model.state_dict())``;
a Lightning module with ``save_hyperparameters(OmegaConf config)`` saved by
``lightning.Trainer.save_checkpoint``; torchvision and timm state dicts), then
read through the CLI; z must equal the library's own head applied to h.
solo-learn's checkpoints are in test_solo_learn.py (files written by its code).
"""

import json
import warnings

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from repdiag.checkpoint import load_checkpoint
from repdiag.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
LIMIT = "96"  # synthetic images per split: n > the 64-d features of the narrow backbones


def _rank_json(capsys, path, *extra):
    code = main(["rank", str(path), "--data", "synthetic", "--limit", LIMIT, "--json", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _check_head(path, backbone, head, key_map=()):
    """repdiag's z = the library's head applied to repdiag's h (eval mode), to 1e-5."""
    ck = load_checkpoint(path, key_map)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        h = ck.build_backbone()(x)
        torch.testing.assert_close(h, backbone.eval()(x).flatten(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ck.build_head()(h), head.eval()(h), atol=1e-5, rtol=1e-5)
    return ck


def _narrow_resnet18():
    """torchvision's ResNet-18 at width 1/8 (64-d features), as a small stand-in."""
    from repdiag.models import BackboneSpec, build_backbone

    return build_backbone(BackboneSpec("resnet18", 0.125, True))


# ------------------------------------------------------------------------- torchvision / timm
def test_torchvision_resnet50_state_dict(tmp_path, capsys):
    path = tmp_path / "tv50.pt"
    torch.save(resnet50().state_dict(), path)
    r = _rank_json(capsys, path, "--limit", "8")
    assert r["h"]["dim"] == 2048 and "z" not in r  # no head: z is absent, not a copy of h


def test_timm_resnet_state_dict(tmp_path, capsys):
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "timm.pt"
    torch.save(model.state_dict(), path)
    r = _rank_json(capsys, path)
    assert r["h"]["dim"] == 512 and "z" not in r
    ck = load_checkpoint(path)
    x = torch.rand(2, 3, 64, 64)
    model.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(ck.build_backbone()(x), model.eval()(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- lightly
LIGHTLY_HEADS = {
    "SimCLRProjectionHead": dict(input_dim=64, hidden_dim=32, output_dim=16),
    "SimSiamProjectionHead": dict(input_dim=64, hidden_dim=32, output_dim=16),
    "BYOLProjectionHead": dict(input_dim=64, hidden_dim=32, output_dim=16),
    "MoCoProjectionHead": dict(input_dim=64, hidden_dim=32, output_dim=16),
    "BarlowTwinsProjectionHead": dict(input_dim=64, hidden_dim=32, output_dim=16),
    "VICRegProjectionHead": dict(input_dim=64, hidden_dim=32, output_dim=16),
}


@pytest.mark.parametrize("name", sorted(LIGHTLY_HEADS))
def test_lightly_model_with_every_projection_head(tmp_path, capsys, name):
    from lightly.models.modules import heads


    class Model(nn.Module):  # the pattern of lightly's examples
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(*list(_narrow_resnet18().children())[:-1])
            self.projection_head = getattr(heads, name)(**LIGHTLY_HEADS[name])

    torch.manual_seed(0)
    model = Model()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine weights
        for m in model.projection_head.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.uniform_(0.5, 2)
                    m.bias.uniform_(-1, 1)
    path = tmp_path / "lightly.pt"
    torch.save(model.state_dict(), path)
    r = _rank_json(capsys, path)
    assert r["h"]["dim"] == 64 and r["z"]["dim"] == 16
    ck = _check_head(path, model.backbone, model.projection_head)
    assert ck.source == "lightly"


def test_lightly_default_simclr_head_on_resnet18(tmp_path, capsys):
    """The exact case that failed: resnet18 children()[:-1] + SimCLRProjectionHead(512, 512, 128),
    whose last layer is a BatchNorm1d with affine weights."""
    from lightly.models.modules import heads


    class SimCLR(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(*list(resnet18().children())[:-1])
            self.projection_head = heads.SimCLRProjectionHead(512, 512, 128)

    model = SimCLR()
    path = tmp_path / "simclr.pt"
    torch.save(model.state_dict(), path)
    r = _rank_json(capsys, path)
    assert r["h"]["dim"] == 512 and r["z"]["dim"] == 128
    _check_head(path, model.backbone, model.projection_head)


# ------------------------------------------------------------------------- Lightning
# solo-learn's own checkpoints are tested in test_solo_learn.py, on files its code wrote.
def _lightning_checkpoint(path, backbone_attr="backbone", head_attr="head"):
    """A Lightning checkpoint with OmegaConf hyper-parameters, after two training steps."""
    import lightning
    import omegaconf

    cfg = omegaconf.OmegaConf.create({"model": {"width": 0.125}, "data": {"dataset": "cifar10"}})

    class Method(lightning.LightningModule):
        def __init__(self, cfg):
            super().__init__()
            self.save_hyperparameters(cfg)
            setattr(self, backbone_attr, _narrow_resnet18())
            setattr(self, head_attr, nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32),
                                                   nn.ReLU(), nn.Linear(32, 16)))

        def training_step(self, batch, _):
            h = getattr(self, backbone_attr)(batch[0])
            return getattr(self, head_attr)(h).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    model = Method(cfg)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32)),
                                       batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = lightning.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False,
                                    accelerator="cpu")
        trainer.fit(model, data)
    trainer.save_checkpoint(path)
    return model


def test_lightning_checkpoint_with_omegaconf(tmp_path, capsys):
    path = tmp_path / "run.ckpt"
    model = _lightning_checkpoint(path)
    with pytest.raises(Exception, match="(?i)global|weights_only"):  # what torch itself says
        torch.load(path, weights_only=True)
    r = _rank_json(capsys, path)
    assert r["h"]["dim"] == 64 and r["z"]["dim"] == 16
    assert r["import"]["decided"]["stem"].startswith("cifar-pad1")  # assumed, and said so
    assert any("--stem" in a for a in r["import"]["assumptions"])
    ck = _check_head(path, model.backbone, model.head)
    hp = ck.config["hyper_parameters"]  # kept as plain data
    assert hp["model"]["width"] == 0.125 and hp["data"]["dataset"] == "cifar10"
    assert ck.dataset == "cifar10"  # the default for --data, from the recorded config


def test_encoder_projector_layout_without_config_states_its_stem(tmp_path, capsys):
    """solo-learn's older key names (encoder., projector.) but no args.json: its CIFAR stem
    (padding 2) is assumed and said on stderr; --stem overrides it."""
    path = tmp_path / "old.ckpt"
    model = _lightning_checkpoint(path, backbone_attr="encoder", head_attr="projector")
    code = main(["rank", str(path), "--data", "synthetic", "--limit", LIMIT])
    err = capsys.readouterr().err
    assert code == 0
    assert "padding 2" in err and "--stem cifar-pad1|cifar-pad2" in err
    assert load_checkpoint(path).backbone_spec.stem == "cifar-pad2"
    r = _rank_json(capsys, path, "--stem", "cifar-pad1")
    assert r["import"]["decided"]["stem"] == "cifar-pad1 (--stem)"
    ck = load_checkpoint(path, options={"stem": "cifar-pad1"})
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():  # model's own stem is padding 1: exact with the override
        torch.testing.assert_close(ck.build_backbone()(x), model.encoder.eval()(x))
    assert main(["rank", str(path), "--stem", "imagenet", "--data", "synthetic"]) == 2
    assert "does not fit" in capsys.readouterr().err


# ------------------------------------------------------------------------- wrappers and --map
def test_ddp_module_prefix_in_a_state_dict_wrapper(tmp_path, capsys):
    torch.manual_seed(0)
    backbone, head = _narrow_resnet18(), nn.Sequential(nn.Linear(64, 16))
    wrapped = nn.Module()
    wrapped.backbone, wrapped.head = backbone, head
    state = {f"module.{k}": v for k, v in wrapped.state_dict().items()}
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    r = _rank_json(capsys, path)
    assert r["z"]["dim"] == 16
    _check_head(path, backbone, head)


def test_map_option_for_any_other_layout(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = _narrow_resnet18()
    head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    state = {**{f"enc.{k}": v for k, v in backbone.state_dict().items()},
             **{f"proj.{k}": v for k, v in head.state_dict().items()},
             "temperature": torch.tensor(0.1)}
    path = tmp_path / "custom.pt"
    torch.save(state, path)
    code = main(["rank", str(path), "--data", "synthetic", "--limit", LIMIT])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "enc. (" in err and "proj. (" in err and "--map" in err  # the prefixes and the way out
    r = _rank_json(capsys, path, "--map", "enc.=backbone", "--map", "proj.=head",
                   "--map", "temperature=ignore")
    assert r["h"]["dim"] == 64 and r["z"]["dim"] == 8
    _check_head(path, backbone, head, (("enc.", "backbone"), ("proj.", "head"),
                                       ("temperature", "ignore")))
    assert main(["rank", str(path), "--map", "enc.=encoder"]) == 2
    assert "PREFIX=ROLE" in capsys.readouterr().err


def test_pickled_whole_module_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(4, 2)), path)
    assert main(["rank", str(path), "--data", "synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "state_dict()" in err
    assert "add_safe_globals" not in err and "torch.nn.modules.container.Sequential" in err


def test_key_errors_name_the_files_own_keys(tmp_path):
    from lightly.models.modules import heads

    from repdiag.errors import UserError

    model = nn.Module()
    model.backbone = nn.Sequential(*list(_narrow_resnet18().children())[:-1])
    model.projection_head = heads.SimCLRProjectionHead(64, 32, 16)
    path = tmp_path / "lightly.pt"
    torch.save(model.state_dict(), path)
    ck = load_checkpoint(path)
    del ck.head_state["net.4.weight"]
    with pytest.raises(UserError, match=r"missing keys projection_head\.layers\.4\.weight$"):
        ck.build_head()


# ------------------------------------------------------------------------- DINO heads, activations
def _lightly_dino(batch_norm: bool):
    from lightly.models.modules import heads

    class DINO(nn.Module):  # lightly's DINO example: backbone + DINOProjectionHead
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(*list(_narrow_resnet18().children())[:-1])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # weight_norm's deprecation
                self.projection_head = heads.DINOProjectionHead(64, 32, 16, 50,
                                                                batch_norm=batch_norm)

    torch.manual_seed(0)
    return DINO()


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("mapped", [False, True])
def test_lightly_dino_head_z_is_its_bottleneck(tmp_path, capsys, batch_norm, mapped):
    model = _lightly_dino(batch_norm)
    path = tmp_path / "dino.pt"
    torch.save(model.state_dict(), path)
    key_map = (("backbone.", "backbone"), ("projection_head.", "head")) if mapped else ()
    flags = [f for p, r in key_map for f in ("--map", f"{p}={r}")]
    r = _rank_json(capsys, path, *flags)
    assert r["z"]["dim"] == 16  # the bottleneck, not the 50 prototype logits
    assert r["import"]["decided"]["head_activation"].startswith("gelu")
    assert "last_layer" in r["import"]["decided"]["z"]
    _check_head(path, model.backbone, model.projection_head.layers, key_map)


def test_head_activation_is_assumed_and_can_be_set(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = _narrow_resnet18()
    head = nn.Sequential(nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 8))
    state = {**{f"enc.{k}": v for k, v in backbone.state_dict().items()},
             **{f"proj.{k}": v for k, v in head.state_dict().items()}}
    path = tmp_path / "custom.pt"
    torch.save(state, path)
    flags = ["--map", "enc.=backbone", "--map", "proj.=head"]
    code = main(["rank", str(path), "--data", "synthetic", "--limit", LIMIT, *flags])
    err = capsys.readouterr().err
    assert code == 0 and "assumed ReLU" in err and "--head-activation" in err
    r = _rank_json(capsys, path, *flags, "--head-activation", "silu")
    assert r["import"]["decided"]["head_activation"] == "silu (--head-activation)"
    key_map = (("enc.", "backbone"), ("proj.", "head"))
    ck = load_checkpoint(path, key_map, options={"head_activation": "silu"})
    h = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(ck.build_head()(h), head.eval()(h))
    assert main(["rank", str(path), *flags, "--head-activation", "swish"]) == 2


# ------------------------------------------------------------------------- timm, ViT
def test_any_timm_model_with_backbone_option(tmp_path, capsys):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    path = tmp_path / "mnv3.pt"
    torch.save(model.state_dict(), path)
    code = main(["rank", str(path), "--data", "synthetic", "--limit", "8"])
    assert code == 2 and "--backbone" in capsys.readouterr().err
    r = _rank_json(capsys, path, "--backbone", "mobilenetv3_small_050", "--limit", "8")
    ck = load_checkpoint(path, options={"backbone": "mobilenetv3_small_050"})
    model.reset_classifier(0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert r["h"]["dim"] == model.eval()(x).shape[1] == 1024 and "z" not in r
        torch.testing.assert_close(ck.build_backbone()(x), model.eval()(x), atol=1e-5, rtol=1e-5)
    assert main(["rank", str(path), "--backbone", "no_such_model"]) == 2
    assert "timm has no model 'no_such_model'" in capsys.readouterr().err


def test_timm_vit_without_config_states_its_heads(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3,
                            num_classes=0)
    path = tmp_path / "vit.pt"
    torch.save({"backbone": vit.state_dict()}, path)
    with pytest.warns(UserWarning, match="3 attention heads assumed"):
        ck = load_checkpoint(path)
    assert ck.backbone_spec.kwargs["depth"] == 2 and ck.backbone_spec.kwargs["patch_size"] == 8
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():  # h: the CLS token after the final norm, as timm computes it
        torch.testing.assert_close(ck.build_backbone()(x), vit.eval()(x))


# ------------------------------------------------------------------------- normalisation
def test_normalize_option_values(tmp_path, capsys):
    from repdiag.features import _normalization

    path = tmp_path / "tv.pt"
    torch.save(resnet18().state_dict(), path)
    ck = load_checkpoint(path)
    assert _normalization(ck, "cifar100")[0] == (0.5071, 0.4865, 0.4409)
    assert _normalization(ck, "0.5,0.5,0.5/0.25,0.25,0.25") == ((0.5,) * 3, (0.25,) * 3)
    capsys.readouterr()
    assert main(["rank", str(path), "--normalize", "0.5,0.5/1,1,1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--normalize must be" in err
    r = _rank_json(capsys, path, "--normalize", "cifar10", "--limit", "8")  # chosen: not assumed
    assert r["import"]["decided"]["normalize"] == "cifar10 (--normalize)"
    assert not any("normalised" in a for a in r["import"]["assumptions"])
