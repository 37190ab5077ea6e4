"""One head description for the training config and the checkpoint, checked at config time;
one registry of schemes and of methods; checkpoints written before stay readable."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from repdiag.checkpoint import load_checkpoint
from repdiag.cli import main
from repdiag.errors import UserError
from repdiag.models import BackboneSpec, HeadOptions, HeadSpec, build_backbone, build_head
from train.config import HeadConfig, load_config
from train.methods import METHODS
from train.schemes import SCHEMES, JointScheme
from train.trainer import Trainer, resume_state

FIXTURES = Path(__file__).parent / "fixtures" / "repdiag_1b4a1c3"
TINY = ["data=synthetic", "data_limit=48", "width=0.125", "batch_size=16", "knn_every=0",
        "head.hidden_dim=16", "head.out_dim=8", "epochs=1"]


def train(capsys, out, *extra):
    argv = ["train", "--quiet", "--config", "fmnist-tiny", "--out", str(out)]
    for s in [*TINY, *extra]:
        argv += ["--set", s]
    code = main(argv)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ one description
def test_the_config_head_section_is_the_spec_options_plus_the_trainers_keys():
    own = {f.name for f in dataclasses.fields(HeadConfig)} - {
        f.name for f in dataclasses.fields(HeadOptions)}
    assert own == {"pretrained", "ae_checkpoint", "ae_frozen", "ae_epochs"}
    assert {f.name for f in dataclasses.fields(HeadSpec)} - {
        f.name for f in dataclasses.fields(HeadOptions)} == {"in_dim", "layers"}
    # config.yaml keeps its key order
    assert list(dataclasses.asdict(HeadConfig())) == [
        "kind", "hidden_dim", "out_dim", "activation", "bias", "batchnorm", "num_layers", "d0",
        "init", "last_bn", "pretrained", "ae_checkpoint", "ae_frozen", "ae_epochs"]


def test_from_options_carries_every_field_and_resolves_directclr_d0():
    cfg = load_config("fmnist-tiny", ["data=synthetic", "head.hidden_dim=24", "head.out_dim=6",
                                      "head.activation=tanh", "head.bias=false",
                                      "head.batchnorm=false", "head.num_layers=3",
                                      "head.init=glorot", "head.last_bn=true"])
    spec = HeadSpec.from_options(cfg.head, 40)
    assert spec == HeadSpec(kind="mlp", in_dim=40, hidden_dim=24, out_dim=6, activation="tanh",
                            bias=False, batchnorm=False, num_layers=3, init="glorot",
                            last_bn=True, d0=360)
    dclr = load_config("fmnist-tiny", ["data=synthetic", "head.kind=directclr"]).head
    assert HeadSpec.from_options(dclr, 128).d0 == round(360 * 128 / 2048) == 22
    assert HeadSpec.from_options(dclr, 2048).d0 == 360  # DirectCLR's own value at m = 2048
    dclr.d0 = 5
    assert HeadSpec.from_options(dclr, 128).d0 == 5


@pytest.mark.parametrize("extra,msg", [
    (["head.kind=bogus"], "unknown head kind 'bogus'; known: none, linear, mlp, directclr, ae"),
    (["head.activation=swish"], "unknown activation 'swish'"),
    (["head.num_layers=1"], "an MLP head needs num_layers >= 2, got 1"),
    (["head.hidden_dim=0"], "head.hidden_dim must be positive, got 0"),
    (["head.init=he"], "unknown head init 'he'"),
    (["head.kind=sequential"], "a sequential head needs a non-empty layer list"),
    (["head.kind=directclr", "head.d0={over}"], "head.d0={over} must be in 1..{m} "),
    # before the trainer would first train the autoencoder for ae_epochs
    (["head.kind=ae", "head.bias=false"], "head.kind=ae needs head.bias=true"),
    (["head.kind=ae", "head.ae_epochs=0"], "head.ae_epochs must be at least 1, got 0"),
])
def test_a_bad_head_is_refused_by_the_config_before_any_work(tmp_path, capsys, extra, msg):
    cfg = load_config("fmnist-tiny", TINY)
    m = build_backbone(BackboneSpec(cfg.backbone, cfg.width, True)).feature_dim  # the real m
    extra = [e.format(over=m + 1) for e in extra]
    msg = msg.format(over=m + 1, m=m)
    with pytest.raises(UserError) as e:
        load_config("fmnist-tiny", TINY + extra)  # the config alone refuses it
    assert msg in str(e.value)
    out = tmp_path / "run"
    code, err = train(capsys, out, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert msg in err, err
    assert not out.exists()


def test_a_head_the_config_refuses_was_never_built_by_the_trainer(tmp_path, capsys, monkeypatch):
    import train.trainer as trainer_mod

    def no_data(*a, **k):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(trainer_mod, "load_dataset", no_data)
    code, err = train(capsys, tmp_path / "run", "head.kind=bogus")
    assert code == 2 and "unknown head kind 'bogus'" in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ registries
def test_the_config_asks_the_registries_for_names():
    with pytest.raises(UserError) as e:
        load_config("fmnist-tiny", ["data=synthetic", "scheme.kind=nope"])
    assert str(e.value) == f"unknown scheme 'nope'; known: {', '.join(SCHEMES)}"
    with pytest.raises(UserError) as e:
        load_config("fmnist-tiny", ["data=synthetic", "method=byol"])
    assert str(e.value) == f"unknown method 'byol'; known: {', '.join(METHODS)}"
    import train.config as config

    assert config.SCHEMES is SCHEMES and config.METHODS is METHODS  # no second list
    assert {cls.__module__ for cls in METHODS.values()} == {"train.methods"}


def test_each_scheme_checks_its_own_config(monkeypatch):
    class Picky(JointScheme):
        @classmethod
        def check_config(cls, cfg):
            raise UserError(f"picky refuses head.kind={cfg.head.kind}")

    monkeypatch.setitem(SCHEMES, "picky", Picky)
    with pytest.raises(UserError, match="picky refuses head.kind=linear"):
        load_config("fmnist-tiny", ["data=synthetic", "scheme.kind=picky", "head.kind=linear"])
    # the registry's schemes that update the head themselves refuse a head without parameters
    for kind, cls in SCHEMES.items():
        refused = kind in ("slow-single", "slow-optimal", "bilevel")
        assert cls.needs_head_parameters is refused, kind
        for head in ("none", "directclr"):
            if refused:
                with pytest.raises(UserError, match="has no parameters"):
                    load_config("fmnist-tiny", ["data=synthetic", f"scheme.kind={kind}",
                                                f"head.kind={head}"])


def test_the_pca_rule_is_the_schemes_own_and_documented():
    cfg = load_config("fmnist-tiny", ["data=synthetic", "scheme.kind=pca-top", "head.kind=mlp"])
    assert cfg.head.kind == "linear"
    # settled before the head is checked: an MLP-only setting of the rewritten head is moot
    one = load_config("fmnist-tiny", ["data=synthetic", "scheme.kind=pca-top", "head.num_layers=1"])
    assert one.head.kind == "linear"
    doc = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    assert "a preset's MLP head becomes it" in doc
    backbone = build_backbone(BackboneSpec("resnet18", 0.125, True))
    mlp = build_head(HeadSpec("mlp", in_dim=backbone.feature_dim, hidden_dim=8, out_dim=4))
    with pytest.raises(UserError, match="scheme.kind=pca-top needs head.kind=linear \\(got 'mlp'\\)"):
        SCHEMES["pca-top"](cfg, backbone, mlp)  # a hand-built MLP head is not rewritten


# ------------------------------------------------------------------ old checkpoints
@pytest.mark.parametrize("kind", ["mlp", "directclr"])
def test_checkpoints_written_before_load_and_compute_the_same(kind):
    ck = load_checkpoint(FIXTURES / f"{kind}.pt")
    ref = torch.load(FIXTURES / f"{kind}-outputs.pt", weights_only=True)
    raw = torch.load(FIXTURES / f"{kind}.pt", weights_only=True)["model"]["head"]
    assert ck.head_spec.to_dict() == raw  # every stored field read back as written
    with torch.no_grad():
        h = ck.build_backbone()(ref["x"])
        z = ck.build_head()(h)
    assert torch.equal(h, ref["h"]) and torch.equal(z, ref["z"])
    if kind == "directclr":
        assert ck.head_spec.d0 == ck.config["head"]["d0"] == round(360 * 16 / 2048)


@pytest.mark.parametrize("kind,extra", [("mlp", ["head.kind=mlp"]),
                                        ("directclr", ["head.kind=directclr", "scheme.kind=fixed"])])
def test_the_same_run_today_writes_what_the_earlier_code_wrote(tmp_path, one_thread, kind, extra):
    """make_fixtures.py's run again with today's code: the same head spec and config, and the
    same weights (to float tolerance: the fixture may come from another CPU)."""
    tiny = ["data=synthetic", "data_limit=16", "width=0.03125", "batch_size=8", "epochs=1",
            "knn_every=0", "val_fraction=0", "head.hidden_dim=8", "head.out_dim=4"]
    Trainer(load_config("fmnist-tiny", tiny + extra), tmp_path, quiet=True).run()
    new = torch.load(tmp_path / "last.pt", weights_only=True)
    old = torch.load(FIXTURES / f"{kind}.pt", weights_only=True)
    assert new["model"] == old["model"]
    assert list(new["config"]["head"].items()) == list(old["config"]["head"].items())
    for part in ("backbone", "head"):
        assert new[part].keys() == old[part].keys()
        for k in old[part]:
            torch.testing.assert_close(new[part][k], old[part][k], rtol=1e-4, atol=1e-5)


def test_a_run_written_before_resumes(tmp_path, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(FIXTURES / "mlp.pt", run / "last.pt")
    cfg, done = resume_state(run)
    assert done == 1 and cfg.head.kind == "mlp" and cfg.head.hidden_dim == 8
    cfg.epochs = 2
    Trainer(cfg, run, quiet=True, resume=True).run()
    ck = load_checkpoint(run / "last.pt")
    assert ck.epoch == 2 and ck.head_spec == load_checkpoint(FIXTURES / "mlp.pt").head_spec
