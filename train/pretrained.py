"""Pretrained weights a run starts from: the backbone's and the head's.

``pretrained_backbone: imagenet``: the backbone starts from torchvision's
ImageNet weights. Paper S initialised its ResNet-34 this way (keeping the 7x7
stem even at 32 px). repdiag's backbones use torchvision's parameter names, so
torchvision's state dict loads directly (its classifier ``fc.*`` is dropped).
The weights come from torchvision's cache or are downloaded; offline, the run
stops with one line saying how to train without them.

``head.pretrained: PATH``: the head starts from another repdiag run's head
(paper G Table 2, frozen there by ``scheme.kind=fixed``).
"""

from __future__ import annotations

from torch import nn

from repdiag.checkpoint import load_checkpoint
from repdiag.errors import UserError, reason

OFFLINE_HINT = "run without them with --set pretrained_backbone=null"


def imagenet_state_dict(name: str) -> dict:
    """torchvision's default ImageNet weights for backbone ``name`` (cache or download)."""
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise UserError(f"torchvision has no ImageNet weights for '{name}'") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, OSError, hash mismatch, truncated file, ...
        raise UserError(f"could not fetch torchvision's ImageNet weights for {name} "
                        f"({reason(e, typed=True, limit=160)}); {OFFLINE_HINT}") from None


def load_imagenet_backbone(backbone: nn.Module, name: str, *, width: float,
                           cifar_stem: bool) -> None:
    """Copy the ImageNet weights into ``backbone`` (width 1, 7x7 stem only)."""
    if width != 1:
        raise UserError(f"pretrained_backbone=imagenet needs width 1, got {width:g}")
    if cifar_stem:
        raise UserError("pretrained_backbone=imagenet needs torchvision's 7x7 stem: "
                        "--set cifar_stem=false")
    state = {k: v for k, v in imagenet_state_dict(name).items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    bad = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise UserError(f"torchvision's ImageNet weights for {name} do not fit the backbone "
                        f"(first mismatch: {bad[0]}); {OFFLINE_HINT}")
    backbone.load_state_dict(state, strict=True)


def load_pretrained_head(head: nn.Module, path: str) -> None:
    """Load the head weights of another repdiag checkpoint into ``head`` (shapes must match)."""
    ck = load_checkpoint(path)
    theirs, ours = ck.head_spec, head.spec
    if theirs.kind != ours.kind:
        raise UserError(f"head.pretrained={path}: that run's head is '{theirs.kind}', "
                        f"this run's is '{ours.kind}'; set head.kind={theirs.kind}")
    try:
        head.load_state_dict(ck.head_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"head.pretrained={path}: its head does not fit this run's head "
                        f"(in_dim {theirs.in_dim}->{ours.in_dim}, out_dim "
                        f"{theirs.out_dim}->{ours.out_dim}): {first[-1].strip()}") from None
