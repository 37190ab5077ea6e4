"""Importers for checkpoints users already have.

Each maps a foreign layout onto the same :class:`repdiag.checkpoint.Checkpoint`:

- plain torchvision (or timm, which uses the same names) ResNet state dicts
  (``conv1.weight``, ``layer1.0...``; ``fc.*`` is the classifier and is
  dropped), or ``{"backbone": state_dict, "head": state_dict}``;
- ``{"state_dict": ...}`` wrappers, with a DDP ``module.`` prefix or not;
- Lightning checkpoints, solo-learn's among them (``backbone.*`` or, in older
  versions, ``encoder.*``, and ``projector.*``), read without unpickling their
  OmegaConf hyper-parameters (:mod:`repdiag.inert_pickle`), which are kept as
  plain data in ``config["hyper_parameters"]``;
- lightly models: ``backbone.*`` holding torchvision names or the indices of
  ``nn.Sequential(*list(resnet.children())[:-1])`` (0 = conv1, 1 = bn1, 4-7 =
  layer1-4), and ``projection_head.layers.*`` for every projection head in
  ``lightly.models.modules`` (SimCLR, SimSiam, BYOL, MoCo, Barlow Twins, VICReg);
- anything else through ``key_map`` (the CLI's ``--map PREFIX=ROLE``), which
  assigns the keys under a prefix to the backbone or the head, or ignores them.

The architecture (depth, width, stem) is inferred from the tensor shapes. A
projector is rebuilt layer by layer from its ``nn.Sequential`` indices
(:func:`infer_head`), so its state dict loads unchanged. Loading is strict:
after mapping, missing or unexpected keys are reported by name.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from repdiag.errors import UserError
from repdiag.models import BackboneSpec, HeadSpec, build_head

ROLES = ("backbone", "head", "ignore")
_SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                      "7": "layer4"}
#: key prefixes of the backbone and of the projector, in the order they are tried
BACKBONE_PREFIXES = (("backbone.", "prefixed"), ("encoder.", "solo-learn"))
HEAD_PREFIXES = (("projector.", "solo-learn"), ("projection_head.layers.", "lightly"),
                 ("projection_head.", "lightly"), ("head.", "prefixed"))
#: other parts of SSL models that are not the online backbone/projector: left out
AUX_PREFIXES = ("momentum_", "classifier.", "predictor.", "prediction_head.", "target_",
                "teacher_", "online_", "queue", "prototypes", "backbone_momentum.",
                "projection_head_momentum.", "knn_")


def parse_key_map(items) -> tuple[tuple[str, str], ...]:
    """``["encoder.=backbone", "proj.=head"]`` as ((prefix, role), ...), checked."""
    out = []
    for item in items or ():
        prefix, sep, role = str(item).partition("=")
        if not sep or not prefix or role not in ROLES:
            raise UserError(f"--map expects PREFIX=ROLE with ROLE one of {', '.join(ROLES)} "
                            f"(e.g. --map encoder.=backbone), got '{item}'")
        out.append((prefix, role))
    return tuple(out)


def import_foreign(raw: object, path: str, key_map: tuple[tuple[str, str], ...] = ()) -> dict:
    """The fields of a :class:`repdiag.checkpoint.Checkpoint` for a non-repdiag torch file
    (``config``, ``backbone_spec``, ``head_spec``, ``backbone_state``, ``head_state``,
    ``source``, ``key_prefixes``), or a UserError saying why it cannot be read."""
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: not a repdiag checkpoint nor a state dict "
                        f"(found {type(raw).__name__})")
    config: dict = {}
    source = "torchvision"
    state, head_state = raw, {}
    if isinstance(raw.get("state_dict"), dict):
        source = "lightning" if "pytorch-lightning_version" in raw or "hyper_parameters" in raw \
            else "state_dict"
        state = raw["state_dict"]
        if isinstance(raw.get("hyper_parameters"), dict):
            config["hyper_parameters"] = hp = raw["hyper_parameters"]
            dataset = _recorded_dataset(hp)
            if dataset:  # solo-learn's cfg.data.dataset: the default for --data
                config["data"] = dataset
    if isinstance(state.get("backbone"), dict):
        head_state = dict(state.get("head") or {})
        state = state["backbone"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: not a repdiag checkpoint, and not a state dict of tensors "
                        f"('{bad[0]}' holds a {type(state[bad[0]]).__name__}; keys: "
                        f"{', '.join(list(map(str, raw))[:5])})")
    state = _strip_ddp(state)
    backbone, found_head, layout, prefixes = _assign_roles(state, path, key_map)
    source = layout or source
    head_state = head_state or found_head
    backbone = {_sequential_to_named(k): v for k, v in backbone.items() if not k.startswith("fc.")}
    if "conv1.weight" not in backbone:
        raise UserError(f"{path}: no ResNet backbone found (no conv1.weight); key prefixes in "
                        f"the file: {_prefix_summary(state)}. Name the parts with --map, "
                        "e.g. --map encoder.=backbone --map proj.=head")
    spec = infer_backbone_spec(backbone, path)
    head_spec, head_state = infer_head(head_state, _feature_dim(backbone, spec), path)
    if head_state and all(k.startswith("layers.") for k in head_state) and prefixes["head"]:
        prefixes["head"] += "layers."
    return {"config": config, "backbone_spec": spec, "head_spec": head_spec,
            "backbone_state": backbone, "head_state": head_state, "source": source,
            "key_prefixes": prefixes}


def _recorded_dataset(hp: dict) -> str | None:
    """The dataset a solo-learn config names (``data.dataset``), if repdiag knows it."""
    from repdiag.data.registry import REGISTRY

    data = hp.get("data")
    name = data.get("dataset") if isinstance(data, dict) else None
    if isinstance(name, str) and name.lower().replace("_", "-") in REGISTRY:
        return name.lower().replace("_", "-")
    return None


def _strip_ddp(state: dict) -> dict:
    """Remove DistributedDataParallel's ``module.`` prefix (on every key) if present."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _prefix_summary(state: dict, n: int = 6) -> str:
    counts = Counter(k.split(".")[0] + "." for k in state)
    shown = [f"{p} ({c} keys)" for p, c in counts.most_common(n)]
    return ", ".join(shown) + (f", ... ({len(counts)} prefixes)" if len(counts) > n else "")


def _take(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _assign_roles(state: dict, path: str, key_map) -> tuple[dict, dict, str | None, dict]:
    """Split a flat state dict into backbone and head parts, the layout's name, and the
    file's key prefix of each part (to name keys as the file does in error messages)."""
    if key_map:
        parts: dict[str, dict] = {"backbone": {}, "head": {}, "ignore": {}}
        claimed = set()
        for prefix, role in key_map:
            for k, v in state.items():
                if k.startswith(prefix) and k not in claimed:
                    parts[role][k[len(prefix):]] = v
                    claimed.add(k)
        rest = [k for k in state if k not in claimed and not k.startswith(AUX_PREFIXES)]
        if rest:
            raise UserError(f"{path}: --map leaves keys unassigned, e.g. {', '.join(rest[:3])} "
                            f"({len(rest)} in all); key prefixes in the file: "
                            f"{_prefix_summary(state)}; add --map PREFIX=ignore for parts to skip")
        firsts = {role: next((p for p, r in key_map if r == role), "") for role in ("backbone", "head")}
        return parts["backbone"], parts["head"], "mapped", firsts
    for prefix, layout in BACKBONE_PREFIXES:
        backbone = _take(state, prefix)
        if not backbone:
            continue
        head, source, found_prefix = {}, layout, ""
        for head_prefix, head_layout in HEAD_PREFIXES:
            head = _take(state, head_prefix)
            if head:
                source = head_layout if layout == "prefixed" else layout
                found_prefix = head_prefix
                break
        known = tuple(p for p, _ in BACKBONE_PREFIXES + HEAD_PREFIXES) + AUX_PREFIXES
        other = [k for k in state if not k.startswith(known)]
        if other:
            raise UserError(f"{path}: keys outside the backbone and projector, e.g. "
                            f"{', '.join(other[:3])} ({len(other)} in all); key prefixes in the "
                            f"file: {_prefix_summary(state)}; assign them with --map PREFIX=ROLE "
                            "(backbone, head or ignore)")
        return backbone, head, source, {"backbone": prefix, "head": found_prefix}
    return state, {}, None, {"backbone": "", "head": ""}


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


def sequential_layers(head_state: dict, path: str) -> list[dict]:
    """The layer list of an ``nn.Sequential`` projector from its state dict.

    Indices with a 2-D ``weight`` are Linear layers, indices with
    ``running_mean`` BatchNorm1d (affine if they have a ``weight``); indices
    without parameters between them are activations, which a state dict does
    not record: ReLU, every library's default, is assumed.
    """
    by_index: dict[int, dict] = {}
    for key, value in head_state.items():
        first, _, rest = key.partition(".")
        if not first.isdigit() or not rest:
            raise UserError(f"{path}: the projector's keys are not an nn.Sequential's "
                            f"(e.g. '{key}'); name its parts with --map PREFIX=head")
        by_index.setdefault(int(first), {})[rest] = value
    layers = []
    for i in range(max(by_index) + 1):
        params = by_index.get(i)
        if params is None:
            layers.append({"type": "relu"})
        elif "running_mean" in params:
            layers.append({"type": "bn", "dim": int(params["running_mean"].shape[0]),
                           "affine": "weight" in params})
        elif "weight" in params and params["weight"].ndim == 2:
            w = params["weight"]
            layers.append({"type": "linear", "in": int(w.shape[1]), "out": int(w.shape[0]),
                           "bias": "bias" in params})
        else:
            raise UserError(f"{path}: projector layer {i} ({', '.join(sorted(params))}) is "
                            "neither Linear nor BatchNorm1d; only those (and activations) "
                            "are supported")
    return layers


def infer_head(head_state: dict, in_dim: int, path: str) -> tuple[HeadSpec, dict]:
    """A HeadSpec for a projector given as an ``nn.Sequential`` state dict (or none).

    A single Linear layer is a ``linear`` head; a repdiag-shaped MLP
    (Linear-[BN]-act-...-Linear, the same bias and BN on every layer) an
    ``mlp`` head; anything else (lightly's heads with a final BatchNorm,
    SimSiam's affine-free one, ...) a ``sequential`` head with the file's own
    layer list, so that z is exactly what the library computes.
    """
    if not head_state:
        return HeadSpec(kind="none", in_dim=in_dim), {}
    for wrapper in ("net.", "layers."):
        if all(k.startswith(wrapper) for k in head_state):
            head_state = {k[len(wrapper):]: v for k, v in head_state.items()}
    layers = sequential_layers(head_state, path)
    linears = [layer for layer in layers if layer["type"] == "linear"]
    if linears[0]["in"] != in_dim:
        raise UserError(f"{path}: the projector takes {linears[0]['in']} features but the "
                        f"backbone gives {in_dim}")
    candidates = []
    if len(layers) == 1:
        candidates.append(HeadSpec(kind="linear", in_dim=in_dim, out_dim=linears[0]["out"],
                                   bias=linears[0]["bias"]))
    else:
        candidates.append(HeadSpec(kind="mlp", in_dim=in_dim, hidden_dim=linears[0]["out"],
                                   out_dim=linears[-1]["out"], bias=linears[0]["bias"],
                                   batchnorm=any(layer["type"] == "bn" for layer in layers),
                                   num_layers=len(linears)))
    state = {f"net.{k}": v for k, v in head_state.items()}
    for spec in candidates:  # the simple kind if it rebuilds exactly this state dict
        try:
            own = build_head(spec).state_dict()
        except UserError:
            continue
        if own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own):
            return spec, state
    return HeadSpec(kind="sequential", in_dim=in_dim, out_dim=linears[-1]["out"],
                    layers=layers), state
