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

The architecture (ResNet depth and width, solo-learn's WideResNet, timm's
VisionTransformer: patch and image size, depth, width) is inferred from the tensor
shapes; ``options["backbone"]`` (the CLI's ``--backbone TIMM_NAME``) builds any timm
model instead. A projector is rebuilt layer by layer from its ``nn.Sequential``
indices (:func:`infer_head`), so its state dict loads unchanged; DINO heads
(solo-learn's ``DINOHead``, lightly's ``DINOProjectionHead``) are read as their MLP
(GELU, up to the bottleneck): z is the bottleneck output, and the weight-normalised
``last_layer`` is left out, since its outputs are prototype logits, not a
representation. Loading is strict: after mapping, missing or unexpected keys are
reported by name.

What the weights cannot decide -- a CIFAR stem's padding (solo-learn pads by 2,
lightly and repdiag by 1), a ViT's number of attention heads, the activation
between projector layers, the input normalisation -- comes from the best
evidence there is: the CLI's options (``--stem``, ``--head-activation``,
``--normalize``), then solo-learn's own config (``args.json`` beside the
checkpoint, or the checkpoint's ``hyper_parameters``), then the layout's known
origin. Every fact taken from anything but an option or the config is an
assumption: it is warned on stderr in one line with the option that overrides it,
and recorded with the rest in ``extra["import"]`` (``decided`` and
``assumptions``), which the CLI's ``--json`` output carries.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path

import torch

from repdiag.errors import UserError
from repdiag.models import ACTIVATIONS, STEMS, BackboneSpec, HeadSpec, build_head

ROLES = ("backbone", "head", "ignore")
_SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                      "7": "layer4"}
#: key prefixes of the backbone and of the projector, in the order they are tried
BACKBONE_PREFIXES = (("backbone.", "prefixed"), ("encoder.", "solo-learn"))
HEAD_PREFIXES = (("projector.", "solo-learn"), ("projection_head.", "lightly"),
                 ("head.", "prefixed"))
#: other parts of SSL models that are not the online backbone/projector: left out
AUX_PREFIXES = ("momentum_", "classifier.", "predictor.", "prediction_head.", "target_",
                "teacher_", "online_", "queue", "prototypes", "backbone_momentum.",
                "projection_head_momentum.", "knn_", "dino_loss_func.")
#: solo-learn's training statistics (``MEANS_N_STD`` in solo/data/pretrain_dataloader.py)
SOLO_MEANS_N_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: solo-learn's ViTs: attention heads by name (``solo/backbones/vit/vit.py``); the same
#: widths in timm's vit_tiny/small/base/large are the fallback guess by width
VIT_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_large": 16}
VIT_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16}
#: options a foreign checkpoint can be read with (the CLI's flags)
OPTIONS = ("stem", "head_activation", "backbone", "normalize")


class _Record:
    """What was decided on what evidence, and what was assumed (warned once each by
    :meth:`warn`, once the whole file was read: a refused file shows only its error)."""

    def __init__(self, path: str):
        self.path = path
        self.decided: dict[str, str] = {}
        self.assumptions: list[str] = []

    def decide(self, fact: str, value, why: str) -> None:
        self.decided[fact] = f"{value} ({why})"

    def assume(self, fact: str, value, text: str) -> None:
        self.decided[fact] = f"{value} (assumed)"
        self.assumptions.append(text)

    def warn(self) -> None:
        for text in self.assumptions:
            warnings.warn(f"{self.path}: {text}", stacklevel=4)

    def to_dict(self) -> dict:
        return {"decided": dict(self.decided), "assumptions": list(self.assumptions)}


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


def import_foreign(raw: object, path: str, key_map: tuple[tuple[str, str], ...] = (),
                   options: dict | None = None) -> dict:
    """The fields of a :class:`repdiag.checkpoint.Checkpoint` for a non-repdiag torch file
    (``config``, ``backbone_spec``, ``head_spec``, ``backbone_state``, ``head_state``,
    ``source``, ``key_prefixes``, ``extra``), or a UserError saying why it cannot be read.

    ``options``: ``stem`` (one of :data:`repdiag.models.STEMS`), ``head_activation``
    (one of :data:`repdiag.models.ACTIVATIONS`), ``backbone`` (a timm model name),
    ``normalize`` (the CLI's ``--normalize``; anything but ``auto`` is the user's choice,
    so nothing is assumed about the input statistics).
    """
    options = {k: v for k, v in (options or {}).items() if v and v != "auto"}
    if set(options) - set(OPTIONS):
        raise ValueError(f"unknown import options {sorted(set(options) - set(OPTIONS))}")
    _check_options(options)
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: not a repdiag checkpoint nor a state dict "
                        f"(found {type(raw).__name__})")
    config: dict = {}
    record = _Record(path)
    source = "torchvision"
    state, head_state = raw, {}
    solo_cfg, cfg_origin = None, ""
    if isinstance(raw.get("state_dict"), dict):
        source = "lightning" if "pytorch-lightning_version" in raw or "hyper_parameters" in raw \
            else "state_dict"
        state = raw["state_dict"]
        if isinstance(raw.get("hyper_parameters"), dict):
            config["hyper_parameters"] = hp = raw["hyper_parameters"]
            if _is_solo_config(hp):  # older solo-learn saved its config as hyper-parameters
                solo_cfg, cfg_origin = hp, "the checkpoint's hyper_parameters"
    if solo_cfg is None:
        solo_cfg = _args_json(path)
        if solo_cfg is not None:
            config["solo_learn_args"] = solo_cfg
            cfg_origin = "args.json"
    dataset = _recorded_dataset(solo_cfg or config.get("hyper_parameters") or {})
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
    if solo_cfg is not None and source in ("prefixed", "lightning", "state_dict"):
        source = "solo-learn"
    head_state = head_state or found_head
    backbone = {_sequential_to_named(k): v for k, v in backbone.items() if not k.startswith("fc.")}
    solo = solo_cfg if isinstance(solo_cfg, dict) else {}
    spec, backbone = _backbone_spec(backbone, state, path, source, solo, cfg_origin, options,
                                    record)
    from repdiag.models import build_backbone

    feature_dim = int(build_backbone(spec).feature_dim) if not spec.name.startswith(
        "resnet") else _feature_dim(backbone, spec)
    head_state, dino = _dino_part(head_state, prefixes, record)
    activation = _head_activation(head_state, source, dino, options, record)
    if head_state and all(k.startswith("layers.") for k in head_state) and prefixes["head"]:
        prefixes["head"] += "layers."
    head_spec, head_state = infer_head(head_state, feature_dim, path, activation)
    extra = {"import": None}
    mean_std = _input_norm(solo, cfg_origin, options, record)
    if mean_std is not None:
        extra["input_norm"] = {"mean": list(mean_std[0]), "std": list(mean_std[1])}
    extra["import"] = record.to_dict()
    record.warn()
    return {"config": config, "backbone_spec": spec, "head_spec": head_spec,
            "backbone_state": backbone, "head_state": head_state, "source": source,
            "key_prefixes": prefixes, "extra": extra}


def _check_options(options: dict) -> None:
    stem = options.get("stem")
    if stem and stem not in STEMS:
        raise UserError(f"--stem must be one of {', '.join(STEMS)}, got '{stem}'")
    act = options.get("head_activation")
    if act and act not in ACTIVATIONS:
        raise UserError(f"--head-activation must be one of {', '.join(ACTIVATIONS)}, got '{act}'")


def _args_json(path: str) -> dict | None:
    """solo-learn's config, which its Checkpointer writes as ``args.json`` beside the
    checkpoint (None when there is none, or it is not solo-learn's)."""
    file = Path(path).parent / "args.json"
    if not file.is_file():
        return None
    try:
        cfg = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: beside the checkpoint but not readable JSON ({e}); move it "
                        "away if it is not the checkpoint's solo-learn config") from None
    return cfg if _is_solo_config(cfg) else None


def _is_solo_config(cfg) -> bool:
    """A solo-learn config: ``method``, ``backbone.name`` and ``data.dataset``."""
    return (isinstance(cfg, dict) and "method" in cfg and isinstance(cfg.get("backbone"), dict)
            and "name" in cfg["backbone"] and isinstance(cfg.get("data"), dict))


def _backbone_spec(backbone: dict, state: dict, path: str, source: str, solo: dict,
                   cfg_origin: str, options: dict, record: _Record) -> tuple[BackboneSpec, dict]:
    """The backbone's spec and state dict (classifier keys of timm models dropped)."""
    name = options.get("backbone")
    if name:
        return _timm_spec(name, backbone, path, record)
    if "patch_embed.proj.weight" in backbone:
        return _vit_spec(backbone, path, solo, cfg_origin, record), backbone
    if "block1.layer.0.conv1.weight" in backbone:
        return _wrn_spec(backbone, path, solo, cfg_origin, record), backbone
    if "conv1.weight" not in backbone:
        raise UserError(f"{path}: no ResNet, WideResNet or ViT backbone found (no conv1.weight "
                        f"or patch_embed.proj.weight); key prefixes in the file: "
                        f"{_prefix_summary(state)}. Name the parts with --map, e.g. --map "
                        "encoder.=backbone --map proj.=head, or name a timm model with "
                        "--backbone NAME")
    spec = infer_backbone_spec(backbone, path)
    spec.stem = _stem(spec, source, solo, cfg_origin, options, record)
    return spec, backbone


def _stem(spec: BackboneSpec, source: str, solo: dict, cfg_origin: str, options: dict,
          record: _Record) -> str:
    """A ResNet's stem: 7x7 conv1 is ImageNet's; a 3x3 conv1's padding is not in the
    weights, so it comes from --stem, solo-learn's config, or is assumed and said."""
    if options.get("stem"):
        if options["stem"] == "imagenet" and spec.cifar_stem or \
                options["stem"] != "imagenet" and not spec.cifar_stem:
            raise UserError(f"{record.path}: --stem {options['stem']} does not fit the file's "
                            f"{'3x3' if spec.cifar_stem else '7x7'} conv1")
        record.decide("stem", options["stem"], "--stem")
        return options["stem"]
    if not spec.cifar_stem:
        record.decide("stem", "imagenet", "7x7 conv1")
        return "imagenet"
    if cfg_origin:
        dataset = (solo.get("data") or {}).get("dataset")
        record.decide("stem", "cifar-pad2", f"{cfg_origin}: solo-learn replaces conv1 by a 3x3 "
                      f"padding-2 conv for data.dataset={dataset}")
        return "cifar-pad2"
    if source == "solo-learn":
        record.assume("stem", "cifar-pad2", "3x3 conv1 read as solo-learn's CIFAR stem (padding "
                      "2), from the key layout; no args.json beside the file; override with "
                      "--stem cifar-pad1|cifar-pad2")
        return "cifar-pad2"
    record.assume("stem", "cifar-pad1", "3x3 conv1 read as a CIFAR stem with padding 1 "
                  "(repdiag, lightly, leftthomas/SimCLR; solo-learn pads by 2); override with "
                  "--stem cifar-pad1|cifar-pad2")
    return "cifar-pad1"


def _vit_spec(state: dict, path: str, solo: dict, cfg_origin: str,
              record: _Record) -> BackboneSpec:
    """timm VisionTransformer kwargs from the tensors; heads from the config or width."""
    proj = state["patch_embed.proj.weight"]
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    cls = "cls_token" in state
    tokens = int(state["pos_embed"].shape[1]) - (1 if cls else 0) if "pos_embed" in state else 0
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise UserError(f"{path}: ViT with {tokens} position embeddings, not a square grid; "
                        "name the timm model with --backbone NAME")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    name = str((solo.get("backbone") or {}).get("name", ""))
    if name in VIT_HEADS:
        heads = VIT_HEADS[name]
        record.decide("vit_heads", heads, f"{cfg_origin}: backbone.name={name}")
    elif dim in VIT_HEADS_BY_WIDTH:
        heads = VIT_HEADS_BY_WIDTH[dim]
        record.assume("vit_heads", heads, f"ViT of width {dim}: {heads} attention heads assumed "
                      "(timm's and solo-learn's ViT of that width); for another model name it "
                      "with --backbone TIMM_NAME")
    else:
        raise UserError(f"{path}: ViT of width {dim}: the number of attention heads is not in "
                        "the weights; name the timm model with --backbone TIMM_NAME")
    kwargs = {"img_size": side * patch, "patch_size": patch, "embed_dim": dim, "depth": depth,
              "num_heads": heads, "class_token": cls, "global_pool": "token" if cls else "avg",
              "qkv_bias": "blocks.0.attn.qkv.bias" in state,
              "mlp_ratio": int(state["blocks.0.mlp.fc1.weight"].shape[0]) / dim}
    record.decide("backbone", f"vit {kwargs}", "tensor shapes; h = the CLS token after the "
                  "final norm" if cls else "tensor shapes; h = mean of the tokens")
    return BackboneSpec(name="vit", width=1.0, cifar_stem=False, kwargs=kwargs)


def _wrn_spec(state: dict, path: str, solo: dict, cfg_origin: str,
              record: _Record) -> BackboneSpec:
    """solo-learn's WideResNet: depth and widening from the tensors, first stride from the
    config (1, solo-learn's default, otherwise: the weights cannot tell)."""
    n = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"block1\.layer\.(\d+)\.", k)))
    widen = int(state["bn1.weight"].shape[0]) // 64
    kwargs = {"depth": 6 * n + 4, "widen_factor": widen}
    given = (solo.get("backbone") or {}).get("kwargs") or {}
    if cfg_origin:
        kwargs["first_stride"] = int(given.get("first_stride", 1))
        record.decide("first_stride", kwargs["first_stride"], cfg_origin)
    else:
        kwargs["first_stride"] = 1
        record.assume("first_stride", 1, "WideResNet read with first_stride=1 (solo-learn's "
                      "default; the weights cannot tell); no args.json beside the file")
    record.decide("backbone", f"wide_resnet {kwargs}", "tensor shapes (solo-learn's WideResNet)")
    return BackboneSpec(name="wide_resnet", width=1.0, cifar_stem=False, kwargs=kwargs)


def _timm_spec(name: str, backbone: dict, path: str, record: _Record) -> tuple[BackboneSpec, dict]:
    """Any timm model by name; the file's classifier keys (timm's ``classifier``) dropped."""
    from repdiag.models import build_backbone

    spec = BackboneSpec(name=f"timm:{name}", width=1.0, cifar_stem=False)
    try:
        import timm

        if name not in timm.list_models():
            raise UserError(f"--backbone: timm has no model '{name}' (timm.list_models() lists "
                            "them)")
    except ImportError:  # pragma: no cover - timm is a dependency
        raise UserError("--backbone needs timm (pip install timm)") from None
    net = build_backbone(spec)
    own = set(net.state_dict())
    classifier = str(getattr(net, "pretrained_cfg", {}).get("classifier", "") or "fc")
    kept = {k: v for k, v in backbone.items()
            if k in own or not k.startswith(classifier + ".")}
    record.decide("backbone", spec.name, "--backbone")
    return spec, kept


def _dino_part(head_state: dict, prefixes: dict, record: _Record) -> tuple[dict, bool]:
    """A DINO head's MLP (``mlp.*`` in solo-learn, ``layers.*`` in lightly) without its
    weight-normalised ``last_layer``; other heads unchanged."""
    if not any(k.startswith("last_layer.") for k in head_state):
        return head_state, False
    rest = {k: v for k, v in head_state.items() if not k.startswith("last_layer.")}
    for wrapper in ("mlp.", "layers."):
        if rest and all(k.startswith(wrapper) for k in rest):
            rest = {k[len(wrapper):]: v for k, v in rest.items()}
            if prefixes.get("head"):
                prefixes["head"] += wrapper
            break
    if set(rest) <= {"weight", "bias"}:  # solo-learn's DINOHead with num_layers=1
        rest = {f"0.{k}": v for k, v in rest.items()}
    record.decide("z", "the DINO head's bottleneck", "its last_layer is left out: weight-"
                  "normalised prototypes whose logits are not a representation")
    return rest, True


def _head_activation(head_state: dict, source: str, dino: bool, options: dict,
                     record: _Record) -> str:
    """The activation between projector layers: not in a state dict."""
    if not head_state:
        return "relu"
    if options.get("head_activation"):
        record.decide("head_activation", options["head_activation"], "--head-activation")
        return options["head_activation"]
    if dino:
        record.decide("head_activation", "gelu", "DINO heads (solo-learn DINOHead, lightly "
                      "DINOProjectionHead) use GELU")
        return "gelu"
    if source in ("solo-learn", "lightly"):
        record.decide("head_activation", "relu", f"{source}'s projectors use ReLU")
        return "relu"
    firsts = sorted({k.split(".")[0] for k in head_state})
    if len([f for f in firsts if f.isdigit()]) > 1:
        record.assume("head_activation", "relu", "activations between projector layers assumed "
                      "ReLU (a state dict does not record them); override with "
                      f"--head-activation {'|'.join(ACTIVATIONS)}")
    return "relu"


def _input_norm(solo: dict, cfg_origin: str, options: dict, record: _Record):
    """The mean/std the model was trained with: solo-learn's by dataset (from its config),
    else ImageNet's (assumed and said) unless ``--normalize`` chose."""
    if options.get("normalize"):
        record.decide("normalize", options["normalize"], "--normalize")
        return None
    if cfg_origin:
        dataset = str((solo.get("data") or {}).get("dataset", ""))
        if dataset in SOLO_MEANS_N_STD:
            mean_std = SOLO_MEANS_N_STD[dataset]
        else:
            augs = solo.get("augmentations") or [{}]
            aug = augs[0] if isinstance(augs, list) and augs and isinstance(augs[0], dict) else {}
            mean_std = (tuple(aug.get("mean", IMAGENET_MEAN_STD[0])),
                        tuple(aug.get("std", IMAGENET_MEAN_STD[1])))
        record.decide("normalize", f"mean {list(mean_std[0])} std {list(mean_std[1])}",
                      f"{cfg_origin}: solo-learn's statistics for data.dataset={dataset}")
        return mean_std
    record.assume("normalize", "imagenet", "inputs normalised with ImageNet's mean/std (the "
                  "file does not record its own); override with --normalize none|imagenet|"
                  "cifar10|cifar100|MEAN,MEAN,MEAN/STD,STD,STD")
    return None


def _recorded_dataset(hp: dict) -> str | None:
    """The dataset a solo-learn config names (``data.dataset``), if repdiag knows it."""
    from repdiag.data.registry import REGISTRY

    data = hp.get("data") if isinstance(hp, dict) else None
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
                        f"{'bottleneck' if bottleneck else 'basic'}); supported: resnet18/34/50, "
                        "solo-learn's WideResNet and ViTs, and any timm model named with "
                        "--backbone NAME")
    width = conv1.shape[0] / 64
    return BackboneSpec(name=name, width=width, cifar_stem=conv1.shape[-1] == 3)


def _feature_dim(state: dict, spec: BackboneSpec) -> int:
    last = [k for k in state if re.match(r"layer4\.\d+\.bn\d\.weight$", k)]
    return int(state[sorted(last)[-1]].shape[0]) if last else int(round(512 * spec.width))


def sequential_layers(head_state: dict, path: str, activation: str = "relu") -> list[dict]:
    """The layer list of an ``nn.Sequential`` projector from its state dict.

    Indices with a 2-D ``weight`` are Linear layers, indices with
    ``running_mean`` BatchNorm1d (affine if they have a ``weight``); indices
    without parameters between them are activations, which a state dict does
    not record: ``activation`` (decided by the importer) for all of them.
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
            layers.append({"type": activation})
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


def infer_head(head_state: dict, in_dim: int, path: str,
               activation: str = "relu") -> tuple[HeadSpec, dict]:
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
    layers = sequential_layers(head_state, path, activation)
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
                                   num_layers=len(linears), activation=activation))
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
