import pytest
import torch
from torchvision.models import resnet18, resnet50

from repdiag.errors import UserError
from repdiag.models import ACTIVATIONS, BackboneSpec, HeadSpec, build_backbone, build_head


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_backbone_feature_dim_and_output(name, dim):
    net = build_backbone(BackboneSpec(name, 0.125 if name != "resnet50" else 0.0625, True))
    x = torch.rand(2, 3, 16, 16)
    h = net.eval()(x)
    assert h.shape == (2, net.feature_dim)
    expected = dim * (0.125 if name != "resnet50" else 0.0625)
    assert net.feature_dim == int(expected)


def test_full_width_matches_torchvision_parameter_names_and_shapes():
    ours = build_backbone(BackboneSpec("resnet50", 1.0, cifar_stem=False)).state_dict()
    theirs = {k: v for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()}


def test_torchvision_weights_give_identical_features():
    tv = resnet18().eval()
    ours = build_backbone(BackboneSpec("resnet18", 1.0, cifar_stem=False))
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    ours.eval()
    tv.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x))


def test_cifar_stem_keeps_resolution():
    stem = build_backbone(BackboneSpec("resnet18", 0.25, cifar_stem=True))
    assert stem.conv1.kernel_size == (3, 3) and stem.conv1.stride == (1, 1)
    assert isinstance(stem.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("stem,pad,size", [("cifar-pad1", 1, 16), ("cifar-pad2", 2, 18)])
def test_cifar_stem_padding_is_recorded_and_built(stem, pad, size):
    """conv1's padding is not in its weights: the spec carries it, and it changes h."""
    net = build_backbone(BackboneSpec("resnet18", 0.25, stem=stem))
    assert net.conv1.padding == (pad, pad)
    assert net.conv1(torch.rand(1, 3, 16, 16)).shape[-1] == size  # (16 + 2 pad - 3) + 1


def test_specs_without_a_stem_read_as_before():
    """Checkpoints written before stems were recorded hold only cifar_stem."""
    import dataclasses

    assert BackboneSpec(**{"name": "resnet18", "width": 1.0, "cifar_stem": True}).stem == "cifar-pad1"
    assert BackboneSpec("resnet18", 1.0, False).stem == "imagenet"
    assert dataclasses.asdict(BackboneSpec("resnet18", 0.5, True))["stem"] == "cifar-pad1"
    with pytest.raises(UserError, match="unknown stem 'cifar-pad3'"):
        BackboneSpec(stem="cifar-pad3")


@pytest.mark.parametrize("act", ["relu", "silu", "sigmoid", "tanh", "gelu"])
def test_mlp_head_shapes_and_first_layer_is_linear_map(act):
    head = build_head(HeadSpec("mlp", in_dim=32, hidden_dim=16, out_dim=8, activation=act))
    z = head.eval()(torch.randn(4, 32))
    assert z.shape == (4, 8)
    a, b = head.linear_map()
    assert a.shape == (16, 32) and b.shape == (16,)
    assert isinstance(head.net[2], ACTIVATIONS[act]) and isinstance(head.net[1], torch.nn.BatchNorm1d)


def test_linear_head_bias_off_and_map():
    head = build_head(HeadSpec("linear", in_dim=10, out_dim=3, bias=False))
    a, b = head.linear_map()
    assert b is None
    h = torch.randn(5, 10)
    torch.testing.assert_close(head(h), h @ a.T)


def test_identity_and_directclr_heads():
    h = torch.randn(3, 20)
    none = build_head(HeadSpec("none", in_dim=20))
    torch.testing.assert_close(none(h), h)
    assert torch.equal(none.linear_map()[0], torch.eye(20))
    dclr = build_head(HeadSpec("directclr", in_dim=20, d0=6))
    assert torch.equal(dclr(h), h[:, :6])
    a, _ = dclr.linear_map()
    torch.testing.assert_close(h @ a.T, h[:, :6])
    assert len(list(dclr.parameters())) == 0


def test_glorot_init_bounds():
    head = build_head(HeadSpec("linear", in_dim=100, out_dim=50, init="glorot"))
    bound = (6 / 150) ** 0.5
    assert head.net[0].weight.abs().max() <= bound
    assert head.net[0].weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize("bad,msg", [
    (dict(kind="conv"), "unknown head kind 'conv'"),
    (dict(activation="swish"), "unknown activation 'swish'"),
    (dict(kind="directclr", d0=4096), "head.d0=4096"),
])
def test_bad_head_specs_are_user_errors(bad, msg):
    with pytest.raises(UserError, match=msg):
        build_head(HeadSpec(**{"in_dim": 2048, **bad}))


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'vgg'"):
        build_backbone(BackboneSpec("vgg"))
