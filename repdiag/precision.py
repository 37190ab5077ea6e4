"""Numerical precision of model forwards: fp32, or bf16 autocast where it is safe.

``precision`` is one of ``fp32``, ``bf16`` or ``auto`` (bf16 on a CUDA device
that supports it, fp32 everywhere else, the CPU included). bf16 is applied as
``torch.autocast`` around the backbone and head forwards only; everything
whose precision matters -- the losses (NT-Xent's log-sum-exp, SimSiam's
cosine), eigen-decompositions, pseudo-inverses, the bilevel inner steps and
every diagnostic -- casts its inputs to float32 and runs outside autocast.
Parameters, gradients and optimizer states stay float32 (autocast only
lowers the matmul/convolution inputs), so no loss scaling is needed.

Shared by the trainer and feature extraction (``repdiag.features.extract``),
so features are computed the way the model was trained when asked to.
"""

from __future__ import annotations

import contextlib

import torch

from repdiag.errors import UserError

PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(name: str, key: str = "precision") -> str:
    """``name`` if it is a known precision, else a one-line UserError."""
    if name not in PRECISIONS:
        raise UserError(f"unknown {key} '{name}'; known: {', '.join(PRECISIONS)} "
                        "(auto = bf16 on a GPU that supports it, fp32 on the CPU)")
    return name


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is worthwhile on ``device`` (a CUDA device with bf16 support)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError):
        return False


def resolve_precision(name: str, device: torch.device | str) -> str:
    """The precision actually used on ``device``: ``fp32`` or ``bf16``.

    ``auto`` is bf16 on a CUDA device that supports it and fp32 elsewhere
    (the CPU included: its bf16 matmuls are slower than fp32 on most
    machines). An explicit ``bf16`` is honoured on the CPU (torch's CPU
    autocast supports it) but refused on a GPU without bf16 support.
    """
    check_precision(name)
    device = torch.device(device)
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if name == "bf16" and device.type == "cuda" and not bf16_supported(device):
        raise UserError(f"precision=bf16: the GPU {device} does not support bfloat16; "
                        "use precision=fp32 or auto")
    return name


def autocast(precision: str, device: torch.device | str):
    """The forward context of a resolved ``precision``: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device | str):
    """A context in which autocast is off (for the parts that must run in float32)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
