"""Which torch device to use: checking a device name a user gave, before any work starts.

The one place device names are read (diagnostics, t-SNE, the trainer).
"""

from __future__ import annotations

import re

import torch

from repdiag.errors import UserError


def check_device(name: str, what: str = "--device") -> torch.device:
    """The torch.device for ``name`` (cpu, cuda or cuda:N); an unknown name or a CUDA device
    this machine does not have is a one-line UserError that names ``what`` was given."""
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise UserError(f"unknown {what} {name!r}; use cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{what} {name!r}: no CUDA device is available on this machine; use cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"{what} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_device(name: str | torch.device, what: str = "device") -> torch.device:
    """``auto`` picks CUDA when present, CPU otherwise; any other name is checked by
    :func:`check_device` (cpu, cuda, cuda:N present on this machine) and a bad one is a
    one-line UserError naming ``what``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(str(name), what)
