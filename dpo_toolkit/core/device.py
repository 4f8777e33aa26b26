"""Which torch device to compute on: CPU by default, CUDA when asked for and present."""

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


def check_same_device(policy, reference) -> torch.device:
    """The device of policy and reference; raises ValueError, before any work, when they differ."""
    policy_device, reference_device = model_device(policy), model_device(reference)
    if policy_device != reference_device:
        raise ValueError(
            f"the policy is on {policy_device} but the reference on {reference_device}: "
            "build or load both on one device (a chapter's `device` parameter)"
        )
    return policy_device


def model_device(policy) -> torch.device:
    """The device of a model's weights (a Transformer, an Ensemble or a one-model view): the
    device every tensor of its training and evaluation is created on ("device follows the model")."""
    from .ensemble import Ensemble, SingleModel

    if isinstance(policy, Ensemble):
        return next(iter(policy.params.values())).device
    module = policy.model if isinstance(policy, SingleModel) else policy
    return next(module.parameters()).device
