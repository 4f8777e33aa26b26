"""M models of one architecture evaluated and trained as one: stacked weights with a
leading model dimension, run through ``torch.func.functional_call`` under ``vmap``."""

from __future__ import annotations

import copy
from functools import partial

import torch
from torch.func import functional_call, stack_module_state, vmap

from .model import Transformer, extend_with

SEQS_PER_CALL = 1024  # sequences (over all models) per forward pass in evaluation: small enough to stay in cache


def rows_per_call(n_models: int) -> int:
    """Rows of a (models, rows, seq) batch to run per forward pass, keeping ≈ SEQS_PER_CALL sequences."""
    return max(1, SEQS_PER_CALL // n_models)


class Ensemble:
    """Stacked copies of one architecture. ``params[name]`` has shape (M, *shape) and is a leaf tensor."""

    def __init__(self, models: list[Transformer]):
        if not models:
            raise ValueError("an Ensemble needs at least one model")
        self.cfg = models[0].cfg
        if any(m.cfg != self.cfg for m in models):
            raise ValueError("every model of an Ensemble must share one ModelConfig")
        params, _ = stack_module_state(models)
        self.params = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
        self._skeleton = copy.deepcopy(models[0]).to("meta")

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (M, batch, seq, vocab) for tokens shared by all models (batch, seq) or per model (M, batch, seq)."""
        in_dims = (0, None) if tokens.ndim == 2 else (0, 0)
        return vmap(partial(functional_call, self._skeleton), in_dims=in_dims)(self.params, (tokens,))

    def extend(self, tokens: torch.Tensor, past=None):
        """Incremental decoding (``Transformer.extend``) of every model: tokens (M, batch, seq) continue the
        sequences cached in `past` (None: they start them); returns logits (M, batch, seq, vocab) and the cache."""

        return vmap(partial(extend_with, self._skeleton), in_dims=(0, 0, None if past is None else 0))(self.params, tokens, past)

    def member(self, i: int) -> Transformer:
        """A standalone copy of model i."""
        model = Transformer(self.cfg).to(next(iter(self.params.values())).device)
        model.load_state_dict({name: p[i].detach().clone() for name, p in self.params.items()})
        return model


def distinct_logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """model's logits (k, rows, T, V) on tokens (k, rows, T), each distinct row computed once."""
    distinct, inverse = torch.unique(tokens.flatten(0, 1), dim=0, return_inverse=True)  # (D, T), (k · rows,)
    per_call = rows_per_call(1)
    logits = torch.cat([model(distinct[i : i + per_call]) for i in range(0, len(distinct), per_call)])
    return logits[inverse].view(*tokens.shape, -1)


class References:
    """The frozen references of an ensemble's M members, each distinct model stored and run once:
    member i's reference is models[index[i]] (replicates as members: one SFT reference per seed,
    shared by that seed's members). It stands for the Ensemble of its M members: len() is M, a call
    returns (M, batch, seq, vocab) logits (each distinct model on its members' rows, each distinct row
    once) and ``params`` are stacked (M, *shape); ``evaluate.score`` runs each distinct model once on
    rows shared by all members."""

    def __init__(self, models: list[Transformer], index: list[int]):
        if not index or any(not 0 <= i < len(models) for i in index):
            raise ValueError(f"References: every index must name one of the {len(models)} models, got {index}")
        self.models = [m.eval().requires_grad_(False) for m in models]
        self.distinct = Ensemble(self.models)
        for p in self.distinct.params.values():
            p.requires_grad_(False)
        self.cfg, self.index = self.distinct.cfg, torch.as_tensor(index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Each member's reference weights, stacked (M, *shape)."""
        return {name: p[self.index.to(p.device)] for name, p in self.distinct.params.items()}

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (M, batch, seq, vocab) for tokens shared by all members (batch, seq) or per member (M, batch, seq)."""
        index = self.index.to(tokens.device)
        if tokens.ndim == 2:
            return self.distinct(tokens)[index]
        logits = torch.empty(*tokens.shape, self.cfg.d_vocab, device=tokens.device)
        for d, model in enumerate(self.models):  # each distinct reference on its members' rows, each distinct row once
            mine = (index == d).nonzero().squeeze(1)
            if len(mine):
                logits[mine] = distinct_logits(model, tokens[mine])
        return logits

    def member(self, i: int) -> Transformer:
        """A standalone copy of member i's reference."""
        return self.distinct.member(int(self.index[i]))


class SingleModel:
    """A view of one Transformer as an ensemble of one, sharing its parameters (no copy)."""

    def __init__(self, model: Transformer):
        self.cfg, self.model = model.cfg, model

    def __len__(self) -> int:
        return 1

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens if tokens.ndim == 2 else tokens[0])[None]

    def extend(self, tokens: torch.Tensor, past=None):
        """``Transformer.extend`` on tokens (1, batch, seq); logits (1, batch, seq, vocab) and the cache,
        with a leading model dimension like an Ensemble's."""
        logits, cache = self.model.extend(tokens[0], None if past is None else tuple(c[0] for c in past))
        return logits[None], tuple(c[None] for c in cache)


def as_ensemble(policy: Transformer | Ensemble | References) -> Ensemble | SingleModel | References:
    """The policy itself if it is an Ensemble (or References), else a one-model view of it."""
    return policy if isinstance(policy, Ensemble | SingleModel | References) else SingleModel(policy)


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
    if isinstance(policy, Ensemble):
        return next(iter(policy.params.values())).device
    if isinstance(policy, References):
        return model_device(policy.distinct)
    module = policy.model if isinstance(policy, SingleModel) else policy
    return next(module.parameters()).device
