"""Backbones and projection heads, shared by the trainer and the diagnostics.

Both sides rebuild a model from a checkpoint, so the definitions live here.

Backbones are torchvision ResNets with the classifier removed (``fc`` is an
identity, so the module maps images to the pooled features h of paper G §2),
a stem (:data:`STEMS`: ImageNet's 7x7 stride-2 ``conv1`` and max-pool, or a CIFAR
3x3 stride-1 ``conv1`` without max-pool, padded by 1 as in leftthomas/SimCLR and
lightly, or by 2 as in solo-learn) and a width multiplier for narrow CPU-sized
networks. Parameter names match torchvision's, so plain torchvision state dicts
load into them. For checkpoints of other libraries there are also solo-learn's
WideResNet (``wide_resnet``), timm's VisionTransformer (``vit``, h = the CLS token
after the final norm, as timm and solo-learn compute it) and any timm model
(``timm:NAME``, h = its pooled feature, ``num_classes=0``).

Heads are built from a small declarative :class:`HeadSpec` rather than a class
per variant. Every head can report the linear map the null-space analysis of
paper G §3 (eq. 4) needs: the weight of the linear head, the first layer of an
MLP head, or DirectCLR's coordinate selection.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from repdiag.errors import UserError, reason

BACKBONES = {
    "resnet18": (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (tv_resnet.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (tv_resnet.Bottleneck, (3, 4, 6, 3)),
}
HEAD_KINDS = ("none", "linear", "mlp", "directclr", "ae", "sequential")
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
               "gelu": nn.GELU}
#: layer types of a ``sequential`` head (foreign projectors, layer by layer)
SEQUENTIAL_LAYERS = ("linear", "bn", *ACTIVATIONS)
#: ResNet stems: conv1's padding cannot be read from its weights (same shape), so it is
#: part of the spec. ``cifar-pad1``: 3x3 stride 1 padding 1, no max-pool (repdiag,
#: leftthomas/SimCLR, lightly's ResNetGenerator); ``cifar-pad2``: the same with padding 2
#: (solo-learn, ``solo/methods/base.py``); ``imagenet``: torchvision's 7x7 stride 2 + max-pool.
STEMS = ("cifar-pad1", "cifar-pad2", "imagenet")
#: backbones other than the ResNets (``timm:NAME`` is any timm model as well)
OTHER_BACKBONES = ("wide_resnet", "vit")


@dataclass
class BackboneSpec:
    """What is needed to rebuild a backbone: name, width multiplier, stem, and for the
    non-ResNet backbones their constructor's keyword arguments.

    ``stem`` defaults from ``cifar_stem`` (checkpoints written before stems were
    recorded: True reads as ``cifar-pad1``, the only CIFAR stem repdiag builds).
    """

    name: str = "resnet18"
    width: float = 1.0
    cifar_stem: bool = True
    stem: str = ""
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.stem:
            self.stem = "cifar-pad1" if self.cifar_stem else "imagenet"
        if self.stem not in STEMS:
            raise UserError(f"unknown stem '{self.stem}'; known: {', '.join(STEMS)}")
        self.cifar_stem = self.stem != "imagenet"


class _ResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every stage width scaled by ``width``."""

    def __init__(self, block, layers, width: float):
        nn.Module.__init__(self)
        widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self._norm_layer = nn.BatchNorm2d
        self.dilation, self.groups, self.base_width = 1, 1, 64
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = widths[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """Build a feature extractor images -> h (N, m); ``.feature_dim`` is m."""
    if spec.name == "wide_resnet":
        from repdiag.wide_resnet import WideResNet

        return WideResNet(**spec.kwargs)
    if spec.name == "vit" or spec.name.startswith("timm:"):
        return _timm_backbone(spec)
    if spec.name not in BACKBONES:
        raise UserError(f"unknown backbone '{spec.name}'; known: "
                        f"{', '.join((*BACKBONES, *OTHER_BACKBONES))}, timm:NAME")
    if not spec.width > 0:
        raise UserError(f"backbone width must be positive, got {spec.width}")
    block, layers = BACKBONES[spec.name]
    net = _ResNet(block, layers, spec.width)
    if spec.cifar_stem:
        pad = 2 if spec.stem == "cifar-pad2" else 1
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=pad, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net


def _timm_backbone(spec: BackboneSpec) -> nn.Module:
    """timm's VisionTransformer (``vit``, built from ``spec.kwargs``) or any timm model
    (``timm:NAME``), without classifier: forward gives the pooled feature h."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        if spec.name == "vit":
            net = VisionTransformer(num_classes=0, **spec.kwargs)
        else:
            net = timm.create_model(spec.name[len("timm:"):], pretrained=False, num_classes=0,
                                    **spec.kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as e:
        raise UserError(f"cannot build backbone {spec.name} {spec.kwargs}: "
                        f"{reason(e)}") from None
    # the width of forward()'s output: timm's head_hidden_size where a pre-logits layer
    # follows the pooling (e.g. MobileNetV3), else num_features
    net.feature_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return net


def default_cifar_stem(image_size: int) -> bool:
    """The CIFAR stem is the default for inputs of at most 64 pixels."""
    return image_size <= 64


#: DirectCLR's d0 for the 2048-d features of a ResNet-50 (Jing et al. 2022)
DIRECTCLR_D0 = 360
#: head kinds without parameters: nothing for a scheme to update
PARAMETER_FREE_HEADS = ("none", "directclr")


def directclr_d0(d0: int | None, in_dim: int) -> int:
    """DirectCLR's d0 (z = h[:, :d0]): ``d0`` as given, or by default its reference 360 for
    2048-d ResNet-50 features scaled to ``in_dim``, round(360 m / 2048) (at least 1)."""
    if d0 is not None:
        return d0
    return max(1, round(DIRECTCLR_D0 * in_dim / 2048))


@dataclass
class HeadOptions:
    """What a projection head g: h -> z is, apart from the size m of its input.

    One description for both sides: a training config's ``head:`` section
    (``train.settings.HeadConfig`` adds the trainer's own keys to these) and a
    checkpoint's :class:`HeadSpec` (which adds ``in_dim``). kind: ``none``
    (identity), ``linear``, ``mlp`` (Linear-[BN]-act-...-Linear), ``directclr``
    (z = h[:, :d0], no parameters), ``ae`` (paper S: an MLP without BN whose first
    layer comes from an autoencoder's embedding layer), ``sequential`` (a foreign
    projector layer by layer; :class:`HeadSpec` only). ``num_layers`` counts the
    Linear layers of an MLP (2 as in G, 3 for the usual SimSiam projector);
    ``last_bn`` adds a BN after the last layer (SimSiam). The defaults are paper
    G's MLP m -> 512 -> 128.
    """

    kind: str = "mlp"
    hidden_dim: int = 512
    out_dim: int = 128
    activation: str = "relu"
    bias: bool = True
    batchnorm: bool = True
    num_layers: int = 2
    # DirectCLR: z = h[:, :d0]. None = DirectCLR's 360 of a 2048-d ResNet-50 scaled to the
    # backbone's feature size m, round(360 * m / 2048) (22 for m = 128): directclr_d0.
    d0: int | None = None
    init: str = "default"
    last_bn: bool = False

    def check(self, in_dim: int | None = None) -> None:
        """Refuse an impossible head in one line (:class:`UserError`); with the input size
        ``in_dim`` (m) known, also a DirectCLR d0 outside 1..m."""
        if self.kind not in HEAD_KINDS:
            raise UserError(f"unknown head kind '{self.kind}'; known: {', '.join(HEAD_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"unknown activation '{self.activation}'; known: {', '.join(ACTIVATIONS)}"
            )
        if self.kind in ("mlp", "ae") and self.num_layers < 2:
            raise UserError(f"an MLP head needs num_layers >= 2, got {self.num_layers}")
        if self.d0 is not None and self.d0 < 1:
            raise UserError(f"head.d0 must be positive, got {self.d0}")
        if self.kind == "directclr" and in_dim is not None:
            d0 = directclr_d0(self.d0, in_dim)
            if not d0 <= in_dim:
                raise UserError(f"head.d0={d0} must be in 1..{in_dim} (the backbone feature size)")
        dims = (("in_dim", in_dim),) if in_dim is not None else ()
        for name, value in (*dims, ("hidden_dim", self.hidden_dim), ("out_dim", self.out_dim)):
            if value < 1:
                raise UserError(f"head.{name} must be positive, got {value}")
        if self.init not in ("default", "glorot"):
            raise UserError(f"unknown head init '{self.init}'; known: default, glorot")
        if self.kind == "sequential":
            self._check_layers(in_dim)

    def _check_layers(self, in_dim: int | None) -> None:
        """Only a :class:`HeadSpec` carries the layer list a sequential head needs."""
        _validate_layers(None, in_dim)

    @property
    def has_parameters(self) -> bool:
        """Whether the head has weights a scheme could update (not ``none``/``directclr``)."""
        return self.kind not in PARAMETER_FREE_HEADS


@dataclass
class HeadSpec(HeadOptions):
    """Declarative description of a projection head g: h -> z, as a checkpoint stores it:
    the :class:`HeadOptions` and the input size ``in_dim`` (m).

    ``d0`` left unset reads as 360 (old checkpoints always store it);
    :meth:`from_options` resolves a config's default with :func:`directclr_d0`.
    """

    in_dim: int = 2048
    # kind "sequential": the projector of another library layer by layer, index for index
    # (so its state dict loads unchanged): {"type": "linear", "in": int, "out": int,
    # "bias": bool}, {"type": "bn", "dim": int, "affine": bool} or {"type": "relu"} (or
    # silu / sigmoid / tanh).
    layers: list | None = None

    def __post_init__(self):
        if self.d0 is None:
            self.d0 = DIRECTCLR_D0

    @classmethod
    def from_options(cls, options: HeadOptions, in_dim: int) -> HeadSpec:
        """The spec of the head ``options`` describe on ``in_dim``-dim features (the one
        conversion from a training config's ``head:`` section; DirectCLR's d0 resolved)."""
        fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(HeadOptions)}
        if options.kind == "directclr":
            fields["d0"] = directclr_d0(options.d0, in_dim)
        return cls(**fields, in_dim=in_dim)

    def validate(self) -> None:
        """Refuse an impossible head in one line (:meth:`HeadOptions.check` at ``in_dim``)."""
        self.check(self.in_dim)

    def _check_layers(self, in_dim: int | None) -> None:
        _validate_layers(self.layers, in_dim)

    @property
    def output_dim(self) -> int:
        if self.kind == "sequential":
            return _sequential_dims(self.layers)[-1]
        return {"none": self.in_dim, "directclr": self.d0}.get(self.kind, self.out_dim)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HeadSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown head fields: {', '.join(sorted(unknown))}")
        return cls(**d)


def _sequential_dims(layers: list) -> list[int]:
    """The feature size after each layer of a sequential head's layer list."""
    dims, d = [], None
    for layer in layers:
        if layer["type"] == "linear":
            d = layer["out"]
        elif layer["type"] == "bn":
            d = layer["dim"]
        dims.append(d)
    return dims


def _validate_layers(layers, in_dim: int) -> None:
    if not layers or not isinstance(layers, list):
        raise UserError("a sequential head needs a non-empty layer list")
    d = in_dim
    for i, layer in enumerate(layers):
        t = layer.get("type") if isinstance(layer, dict) else None
        if t not in SEQUENTIAL_LAYERS:
            raise UserError(f"sequential head layer {i}: unknown type {t!r}; known: "
                            f"{', '.join(SEQUENTIAL_LAYERS)}")
        if t == "linear":
            if layer["in"] != d:
                raise UserError(f"sequential head layer {i}: Linear takes {layer['in']} features "
                                f"but gets {d}")
            d = layer["out"]
        elif t == "bn" and layer["dim"] != d:
            raise UserError(f"sequential head layer {i}: BatchNorm of {layer['dim']} features "
                            f"gets {d}")
    if not any(layer["type"] == "linear" for layer in layers):
        raise UserError("a sequential head needs at least one Linear layer")


class DirectCLR(nn.Module):
    """DirectCLR's fixed head: z is the first d0 coordinates of h."""

    def __init__(self, d0: int):
        super().__init__()
        self.d0 = d0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, : self.d0]


class Head(nn.Module):
    """A projection head built from a :class:`HeadSpec`; ``self.net`` maps h -> z."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        self.net = self._build(spec)
        if spec.init == "glorot":
            for m in self.net.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    @staticmethod
    def _build(spec: HeadSpec) -> nn.Module:
        if spec.kind == "none":
            return nn.Identity()
        if spec.kind == "directclr":
            return DirectCLR(spec.d0)
        if spec.kind == "linear":
            return nn.Sequential(nn.Linear(spec.in_dim, spec.out_dim, bias=spec.bias))
        if spec.kind == "sequential":
            return nn.Sequential(*(_layer(layer) for layer in spec.layers))
        use_bn = spec.batchnorm and spec.kind == "mlp"
        layers: list[nn.Module] = []
        dims = [spec.in_dim] + [spec.hidden_dim] * (spec.num_layers - 1) + [spec.out_dim]
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            last = i == len(dims) - 2
            layers.append(nn.Linear(a, b, bias=spec.bias))
            if not last:
                if use_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(ACTIVATIONS[spec.activation]())
        if spec.last_bn:
            layers.append(nn.BatchNorm1d(spec.out_dim, affine=False))
        return nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def first_linear(self) -> nn.Linear | None:
        """The head's first nn.Linear (the map A of paper G eq. 4), or None."""
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                return m
        return None

    def linear_map(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The linear map A (d x m) and bias b of the head's first affine layer.

        Paper G §3 splits h = h_r + h_n with h_r = A^+ A h (eq. 4), where A is
        the linear head or the first layer of an MLP head. DirectCLR's head is
        the selection [I_d0 0]; the identity head gives the m x m identity.
        """
        first = self.first_linear()
        if first is not None:
            bias = first.bias.detach() if first.bias is not None else None
            return first.weight.detach(), bias
        m = self.spec.in_dim
        eye = torch.eye(m)
        if self.spec.kind == "directclr":
            return eye[: self.spec.d0], None
        return eye, None


def _layer(layer: dict) -> nn.Module:
    if layer["type"] == "linear":
        return nn.Linear(layer["in"], layer["out"], bias=layer["bias"])
    if layer["type"] == "bn":
        return nn.BatchNorm1d(layer["dim"], affine=layer["affine"])
    return ACTIVATIONS[layer["type"]]()


def build_head(spec: HeadSpec) -> Head:
    """Build the projection head described by ``spec``."""
    return Head(spec)
