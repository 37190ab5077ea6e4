"""Which torch device a run uses (shared by the trainer and the autoencoder trainer)."""

from __future__ import annotations

import torch

from repdiag.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, CPU otherwise; a missing CUDA device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but no CUDA device is available")
    return torch.device(name)
