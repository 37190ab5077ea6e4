import pytest

from repdiag.errors import UserError
from train.config import TrainConfig, list_presets, load_config


def test_presets_parse_and_carry_paper_g_defaults():
    assert {"fmnist-tiny", "cifar10-g", "cifar100-g", "tinyimagenet-g"} <= set(list_presets())
    c10 = load_config("cifar10-g")
    assert (c10.backbone, c10.batch_size, c10.epochs, c10.temperature) == (
        "resnet50", 256, 500, 0.5)
    assert (c10.optim.name, c10.optim.lr, c10.optim.weight_decay) == ("adam", 1e-3, 1e-6)
    assert (c10.head.kind, c10.head.hidden_dim, c10.head.out_dim) == ("mlp", 512, 128)
    tin = load_config("tinyimagenet-g")
    assert tin.batch_size == 512 and tin.augment.gray_p == 0.1


def test_dataclass_defaults_are_paper_g():
    cfg = TrainConfig()
    assert (cfg.temperature, cfg.optim.lr, cfg.optim.weight_decay, cfg.knn_k) == (
        0.5, 1e-3, 1e-6, 200)


def test_overrides_are_typed_and_dotted():
    cfg = load_config("fmnist-tiny", ["data=synthetic", "epochs=3", "head.kind=linear",
                                      "head.bias=false", "optim.lr=3e-4", "seed=7"])
    assert (cfg.data, cfg.epochs, cfg.head.kind, cfg.head.bias, cfg.seed) == (
        "synthetic", 3, "linear", False, 7)
    assert cfg.optim.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("overrides,msg", [
    (["colour=red"], "unknown --set key 'colour'"),
    (["head.size=3"], "unknown --set key 'head.size'"),
    (["epochs=three"], "epochs: expected an integer, got 'three'"),
    (["head.bias=maybe"], "head.bias: expected true or false"),
    (["epochs"], "--set expects key=value"),
    (["batch_size=1"], "batch_size must be at least 2"),
    (["optim.name=lamb"], "unknown optimizer 'lamb'"),
])
def test_bad_overrides_are_user_errors(overrides, msg):
    with pytest.raises(UserError, match=msg):
        load_config("fmnist-tiny", overrides)


def test_unknown_preset_and_yaml_file(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_config("nope")
    good = tmp_path / "mine.yaml"
    good.write_text("data: synthetic\nepochs: 2\nhead: {kind: none}\n")
    cfg = load_config(str(good))
    assert (cfg.data, cfg.epochs, cfg.head.kind) == ("synthetic", 2, "none")
    bad = tmp_path / "bad.yaml"
    bad.write_text("head: {widht: 3}\n")
    with pytest.raises(UserError, match="unknown config key 'widht'"):
        load_config(str(bad))
