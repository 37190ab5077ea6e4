"""Checking a torch device name a user gave, before any work starts."""

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
