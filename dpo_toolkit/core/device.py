"""Which torch device to compute on: CPU by default, CUDA when asked for and present (the device a
model is on: ``ensemble.model_device``)."""

from __future__ import annotations

import re

import torch


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The device `device` names: 'cpu', 'cuda' or 'cuda:N'. Raises ValueError naming the
    parameter, before any work, for any other name or when CUDA is asked for and absent."""
    name = str(device)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} asks for CUDA, but torch {torch.__version__} sees no CUDA device here")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)
