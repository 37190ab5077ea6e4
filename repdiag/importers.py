"""Importers for checkpoints users already have.

Each maps a foreign layout onto the same :class:`repdiag.checkpoint.Checkpoint`:

- a plain torchvision ResNet state dict (``conv1.weight``, ``layer1.0...``,
  optionally ``fc.*``, which is the classifier and is dropped), or a dict
  ``{"backbone": state_dict, "head": state_dict}``;
- solo-learn checkpoints: ``{"state_dict": {"backbone.*", "projector.*", ...}}``;
- lightly-style state dicts: ``backbone.*`` holding either torchvision names or
  the indices of ``nn.Sequential(*list(resnet.children())[:-1])`` (0 = conv1,
  1 = bn1, 4-7 = layer1-4), and ``projection_head.layers.*``.

The architecture (depth, width, stem) is inferred from the tensor shapes.
Loading is strict: after mapping, missing or unexpected keys are reported by
name (see :func:`repdiag.checkpoint._load_strict`).
"""

from __future__ import annotations

import re

import torch

from repdiag.errors import UserError
from repdiag.models import BackboneSpec, HeadSpec

_SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                      "7": "layer4"}
_AUX_PREFIXES = ("momentum_", "classifier.", "predictor.", "target_", "teacher_", "online_",
                 "queue", "prototypes")


def import_foreign(raw: object, path: str):
    """Turn a non-repdiag torch file into a Checkpoint, or say why it cannot."""
    from repdiag.checkpoint import Checkpoint

    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: not a repdiag checkpoint nor a state dict "
                        f"(found {type(raw).__name__})")
    source = "torchvision"
    state = raw
    head_state: dict = {}
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        source = "solo-learn"
        state = raw["state_dict"]
    if "backbone" in state and isinstance(state["backbone"], dict):
        head_state = dict(state.get("head") or {})
        state = state["backbone"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a repdiag checkpoint, and not a state dict of tensors "
                        f"(keys: {', '.join(list(map(str, raw))[:5])})")
    backbone, head_found, src = _split_prefixed(state)
    if src:
        source = src
    head_state = head_state or head_found
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    backbone = {_sequential_to_named(k): v for k, v in backbone.items()}
    if "conv1.weight" not in backbone:
        raise UserError(f"{path}: not a repdiag checkpoint, and no ResNet backbone found "
                        f"(no conv1.weight among {len(backbone)} keys)")
    spec = infer_backbone_spec(backbone, path)
    head_spec, head_state = infer_head(head_state, _feature_dim(backbone, spec), path)
    return Checkpoint(path=path, config={}, backbone_spec=spec, head_spec=head_spec,
                      backbone_state=backbone, head_state=head_state, source=source)


def _split_prefixed(state: dict) -> tuple[dict, dict, str | None]:
    """Separate backbone and head keys of solo-learn/lightly layouts."""
    keys = list(state)
    if any(k.startswith("backbone.") for k in keys):
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {}
        source = "prefixed"
        for prefix, src in (("projector.", "solo-learn"), ("projection_head.layers.", "lightly"),
                            ("projection_head.", "lightly")):
            found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if found:
                head, source = found, src
                break
        known = ("backbone.", "projector.", "projection_head.") + _AUX_PREFIXES
        other = [k for k in keys if not k.startswith(known)]
        if other:
            raise UserError(f"unexpected keys outside backbone/projector: {', '.join(other[:4])}")
        return backbone, head, source
    return state, {}, None


def _sequential_to_named(key: str) -> str:
    first, _, rest = key.partition(".")
    if first in _SEQUENTIAL_RESNET and rest:
        return f"{_SEQUENTIAL_RESNET[first]}.{rest}"
    return key


def infer_backbone_spec(state: dict, path: str = "checkpoint") -> BackboneSpec:
    """ResNet depth, width multiplier and stem from a backbone state dict's shapes."""
    conv1 = state["conv1.weight"]
    bottleneck = any(re.match(r"layer1\.0\.conv3\.weight$", k) for k in state)
    blocks = []
    for layer in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    table = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
             (True, (3, 4, 6, 3)): "resnet50"}
    name = table.get((bottleneck, tuple(blocks)))
    if name is None:
        raise UserError(f"{path}: unsupported ResNet layout (blocks per stage {blocks}, "
                        f"{'bottleneck' if bottleneck else 'basic'}); supported: resnet18/34/50")
    width = conv1.shape[0] / 64
    return BackboneSpec(name=name, width=width, cifar_stem=conv1.shape[-1] == 3)


def _feature_dim(state: dict, spec: BackboneSpec) -> int:
    last = [k for k in state if re.match(r"layer4\.\d+\.bn\d\.weight$", k)]
    return int(state[sorted(last)[-1]].shape[0]) if last else int(round(512 * spec.width))


def infer_head(head_state: dict, in_dim: int, path: str) -> tuple[HeadSpec, dict]:
    """A HeadSpec for a projector given as an nn.Sequential state dict (or none)."""
    if not head_state:
        return HeadSpec(kind="none", in_dim=in_dim), {}
    head_state = {k[len("net."):] if k.startswith("net.") else k: v for k, v in head_state.items()}
    linear_idx = sorted({int(k.split(".")[0]) for k, v in head_state.items()
                         if k.endswith(".weight") and v.ndim == 2})
    if not linear_idx:
        raise UserError(f"{path}: head state has no linear layer")
    first = head_state[f"{linear_idx[0]}.weight"]
    if first.shape[1] != in_dim:
        raise UserError(f"{path}: head input size {first.shape[1]} does not match the "
                        f"backbone's feature size {in_dim}")
    bias = f"{linear_idx[0]}.bias" in head_state
    if len(linear_idx) == 1:
        spec = HeadSpec(kind="linear", in_dim=in_dim, out_dim=int(first.shape[0]), bias=bias)
    else:
        bn = f"{linear_idx[0] + 1}.running_mean" in head_state
        last = head_state[f"{linear_idx[-1]}.weight"]
        spec = HeadSpec(kind="mlp", in_dim=in_dim, hidden_dim=int(first.shape[0]),
                        out_dim=int(last.shape[0]), bias=bias, batchnorm=bn,
                        num_layers=len(linear_idx))
        # the activation is not stored in a state dict; ReLU is every library's default
    return spec, {f"net.{k}": v for k, v in head_state.items()}
