"""Every layer of the head: where in the projector is information lost?

Paper G compares the two ends of the head, h and z. A multi-layer projector
changes the representation step by step, so :func:`layer_outputs` walks the
head layer by layer (after each Linear, after each BatchNorm, after each
activation) and :func:`layer_report` measures every stage with the existing
diagnostics: dimension, numerical rank and RankMe
(:func:`repdiag.diagnostics.rank`), kNN accuracy (and optionally the linear
probe), and for each Linear layer W the share of its input's energy in W's
row space, ‖X Q‖²_F / ‖X‖²_F (paper G eq. 4 applied to that layer:
the part of the input the layer can see; the rest is its null space).

Works for repdiag's heads (none, linear, mlp, ae, directclr), the
``sequential`` heads the importers build from lightly / solo-learn
checkpoints, and any ``nn.Sequential`` of such layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from repdiag.diagnostics import knn_probe, linear_probe, nullspace, rank
from repdiag.diagnostics.probes import DEFAULT_LINEAR_PRESET, PROBE_KINDS
from repdiag.errors import UserError

_NAMES = {nn.Linear: "linear", nn.BatchNorm1d: "bn", nn.ReLU: "relu", nn.SiLU: "silu",
          nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu", nn.Identity: "identity"}


@dataclass
class Stage:
    """One point along the head: its name ("h", "1 linear", ...), layer type and features."""

    name: str
    layer: str
    train: torch.Tensor
    test: torch.Tensor
    module: nn.Module | None = None


def head_layers(head: nn.Module) -> list[tuple[str, nn.Module]]:
    """The head's layers in forward order as (type, module), nested Sequentials flattened.

    A repdiag :class:`repdiag.models.Head` is walked through its ``net``; a
    lightly head through its ``layers``. A module that is neither a known
    layer nor a Sequential counts as one opaque layer (DirectCLR's selection,
    for instance); an identity head has no layers.
    """
    root = getattr(head, "net", None) if isinstance(getattr(head, "net", None), nn.Module) else head
    if not isinstance(root, nn.Sequential) and isinstance(getattr(root, "layers", None),
                                                          nn.Sequential):
        root = root.layers
    out: list[tuple[str, nn.Module]] = []

    def walk(m: nn.Module) -> None:
        if isinstance(m, nn.Sequential):
            for child in m:
                walk(child)
        elif isinstance(m, nn.Identity):
            return
        else:
            out.append((_NAMES.get(type(m), type(m).__name__.lower()), m))

    walk(root)
    return out


@torch.no_grad()
def layer_outputs(head: nn.Module, *features: torch.Tensor, batch_size: int = 4096
                  ) -> list[tuple[str, str, nn.Module | None, list[torch.Tensor]]]:
    """h and the output of every head layer, for each feature matrix given (eval mode).

    Returns (name, type, module, [output per input]) with name "h" first and
    "k type" for layer k (1-based); the last entry is z. The head's training
    flags are restored afterwards.
    """
    layers = head_layers(head)
    flags = [(m, m.training) for m in head.modules()]
    head.eval()
    try:
        stages = [("h", "input", None, [f.float() for f in features])]
        current = stages[0][3]
        for k, (kind, module) in enumerate(layers, 1):
            dev = next((p.device for p in module.parameters()), None) or \
                next((b.device for b in module.buffers()), torch.device("cpu"))
            current = [torch.cat([module(x[i:i + batch_size].to(dev)).float().cpu()
                                  for i in range(0, len(x), batch_size)]) for x in current]
            stages.append((f"{k} {kind}", kind, module, current))
    finally:
        for m, flag in flags:
            m.training = flag
    return stages


def layer_report(train_h: torch.Tensor, train_y: torch.Tensor, test_h: torch.Tensor,
                 test_y: torch.Tensor, head: nn.Module, *, probes: tuple[str, ...] = ("knn",),
                 preset: str | None = None, seed: int = 0) -> list[dict]:
    """Per stage of the head (h, after each layer, z): dim, rank, RankMe, probe accuracies.

    Ranks are those of the test features (as ``repdiag rank``), probes train on
    ``train_*`` and score ``test_*`` (kNN preset "g" unless ``preset``; linear
    preset "fast"). For a Linear layer W, ``input_energy_range`` is
    ‖X Q‖²_F / ‖X‖²_F of its test input X with Q a basis of W's row space
    (:func:`repdiag.diagnostics.nullspace`, paper G eq. 4), and ``layer_rank``
    the numerical rank of W.
    """
    bad = [p for p in probes if p not in PROBE_KINDS]
    if bad:
        raise UserError(f"unknown probe '{bad[0]}'; use {' or '.join(PROBE_KINDS)}")
    stages = layer_outputs(head, train_h, test_h)
    rows = []
    prev_test = None
    for depth, (name, kind, module, (tr, te)) in enumerate(stages):
        r = rank(te, name=name)
        row = {"depth": depth, "stage": name, "layer": kind, "dim": int(te.shape[1]),
               "rank": r.rank, "rankme": r.effective_rank, "n": r.n}
        for probe in probes:
            if probe == "knn":
                res = knn_probe(tr, train_y, te, test_y, preset=preset)
            else:
                res = linear_probe(tr, train_y, te, test_y, preset=DEFAULT_LINEAR_PRESET, seed=seed)
            row[probe] = float(res.accuracy)
        if isinstance(module, nn.Linear):
            ns = nullspace(prev_test, module.weight.detach().float().cpu())
            row.update(input_energy_range=ns.energy_range, layer_rank=ns.head_rank)
        rows.append(row)
        prev_test = te
    rows[-1]["stage"] = rows[-1]["stage"] + " = z" if len(rows) > 1 else "h = z"
    return rows


def layers_report(src, *, probes: tuple[str, ...] = ("knn",), preset: str | None = None,
                  seed: int = 0) -> dict:
    """:func:`layer_report` of a checkpoint (a :class:`repdiag.features.FeatureSource`).

    h of the train and test splits comes from the source (extracted and cached
    as for every diagnostic); the head is rebuilt from the checkpoint. A feature
    file holds no head and is refused with a one-line error.
    """
    if src.checkpoint is None:
        raise UserError(f"{src.path}: layers needs a checkpoint (the head's layers), not a "
                        "feature file")
    train, test = src.get("train"), src.get("test")
    head = src.checkpoint.build_head()
    return {"head": src.checkpoint.head_spec.kind, "n_train": len(train), "n_test": len(test),
            "stages": layer_report(train.h, train.y, test.h, test.y, head, probes=probes,
                                   preset=preset, seed=seed)}
