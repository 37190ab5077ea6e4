"""Which torch device a run uses (shared by the trainer and the autoencoder trainer)."""

from __future__ import annotations

import torch

from repdiag.devices import check_device


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, CPU otherwise; any other name is checked (cpu, cuda,
    cuda:N present on this machine) and a bad one is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name, "device")
