"""DPO on the one training loop (``train.optimize``): the loss of a minibatch (Park Eq. 2),
``train_dpo`` for one model and ``train_dpo_ensemble`` for M models as one batched ensemble
(their own β, learning rate, weight decay, seed and, optionally, reference)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial

import pandas as pd
import torch

from .config import DPOConfig
from .data import Batch, PairSet, collate_pairs
from .ensemble import Ensemble, References, check_same_device, model_device
from .evaluate import pair_logps
from .losses import dpo_loss, sequence_logps
from .model import Transformer
from .train import Checkpoint, optimize


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (n,) or (M, n) at a minibatch's indices, (batch,) shared or (M, batch) per model:
    (batch,) or (M, batch)."""
    if index.ndim == 1:
        return values[..., index]
    return values[index] if values.ndim == 1 else values.gather(1, index)


def dpo_batch_loss(
    policy,
    train: PairSet | Batch,
    reference: Transformer | Ensemble | References,
    betas: torch.Tensor,
    pair_weights: torch.Tensor | None = None,
    sft_weights: torch.Tensor | None = None,
):
    """The per-model loss (M,) of a minibatch of pair indices: DPO (Park Eq. 2), plus
    sft_weights (M, 1) × −log π(y+) when given (an SFT term on the preferred response).

    pair_weights (M, n_pairs) weight each model's pairs: a model's loss is the weighted
    mean over the minibatch (0 when all its weights there are 0). None: the plain mean.
    `train` is the pairs, or their ``collate_pairs``-layout batch (chosen rows, then rejected rows).
    `reference` is one model, or an Ensemble or ``References`` of one frozen reference per model (replicates as
    members); the minibatch indices are shared (batch,) or per model (M, batch).
    Everything runs on the reference's device (the policy's weights must be there too).
    """
    device = model_device(reference)  # the policy's too: data and weights follow the reference
    batch = train if isinstance(train, Batch) else collate_pairs(train)  # chosen rows 0..n−1, rejected rows n..2n−1
    batch = Batch(batch.tokens.to(device), batch.response_mask.to(device))
    betas = betas.to(device)
    pair_weights = None if pair_weights is None else pair_weights.to(device)
    sft_weights = None if sft_weights is None else sft_weights.to(device)
    reference_chosen_logps, reference_rejected_logps = pair_logps(reference, batch)  # (n,) each, or (M, n)
    n = batch.tokens.shape[0] // 2

    def batch_loss(index: torch.Tensor) -> torch.Tensor:  # index (batch,) or (M, batch)
        b = batch.select(torch.cat([index, index + n], dim=-1))
        logps = sequence_logps(policy(b.tokens), b.tokens, b.response_mask)  # (M, 2·batch)
        policy_chosen_logps, policy_rejected_logps = logps.chunk(2, dim=-1)  # (M, batch) each
        ref_chosen_logps, ref_rejected_logps = take(reference_chosen_logps, index), take(reference_rejected_logps, index)
        losses, _, _ = dpo_loss(
            policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, betas
        )  # (M, batch)
        if sft_weights is not None:
            losses = losses - sft_weights * policy_chosen_logps
        if pair_weights is None:
            return losses.mean(-1)
        weights = take(pair_weights, index)  # (M, batch)
        return (losses * weights).sum(-1) / weights.sum(-1).clamp(min=1e-12)

    return batch_loss


def train_dpo(
    policy: Transformer,
    reference: Transformer,
    train: PairSet,
    cfg: DPOConfig,
    evaluate: Callable[..., dict],  # evaluate(policy, betas=[cfg.beta])
    progress: bool | None = None,
) -> pd.DataFrame:
    """DPO of `policy` against a frozen `reference` (Park Eq. 2), in place. Returns one row per evaluation."""
    check_same_device(policy, reference)
    betas = torch.tensor([[cfg.beta]])  # (1, 1)
    batch_loss = dpo_batch_loss(lambda tokens: policy(tokens)[None], train, reference, betas)
    params = list(policy.parameters())
    evaluation = partial(evaluate, policy, betas=[cfg.beta])  # the run's β, from its config only
    df = optimize(params, batch_loss, len(train), [cfg], evaluation, progress=progress, desc=f"DPO β={cfg.beta:g}")
    return df.drop(columns="member")


def _ensemble_inputs(policies, reference, cfgs, n_pairs, pair_weights, sft_weights):
    """train_dpo_ensemble's inputs checked before any work; returns pair_weights (M, n_pairs) and
    sft_weights (M, 1) as tensors (or None)."""
    check_same_device(policies, reference)
    n_models = len(policies)
    if len(cfgs) != n_models:
        raise ValueError(f"train_dpo_ensemble needs one DPOConfig per model: {len(cfgs)} configs for {n_models} models")
    if isinstance(reference, Ensemble | References) and len(reference) != n_models:
        raise ValueError(f"train_dpo_ensemble: {len(reference)} references for {n_models} models (one, or one per model)")
    shared = {dataclasses.replace(c, beta=1.0, lr=1.0, weight_decay=0.0, seed=0) for c in cfgs}
    if len(shared) != 1:
        raise ValueError("train_dpo_ensemble: the DPOConfigs of an ensemble may differ in beta, lr, weight_decay and seed only")
    if pair_weights is not None:
        pair_weights = torch.as_tensor(pair_weights, dtype=torch.float32)
        if pair_weights.shape != (n_models, n_pairs) or (pair_weights < 0).any():
            shape = tuple(pair_weights.shape)
            raise ValueError(f"pair_weights must be ≥ 0 with shape (models, pairs) = {(n_models, n_pairs)}, got {shape}")
    if sft_weights is not None:
        if len(sft_weights) != n_models or any(not math.isfinite(w) or w < 0 for w in sft_weights):
            raise ValueError(f"sft_weights must be {n_models} finite numbers ≥ 0 (one per model), got {list(sft_weights)}")
        sft_weights = torch.tensor([[float(w)] for w in sft_weights])  # (M, 1)
    return pair_weights, sft_weights


def train_dpo_ensemble(
    policies: Ensemble,
    reference: Transformer | Ensemble | References,
    train: PairSet | Batch,
    cfgs: Sequence[DPOConfig],
    evaluate: Callable[..., list[dict]],  # evaluate(policies, betas=[β of each member])
    progress: bool | None = None,
    checkpoint: Checkpoint | None = None,
    on_eval: Callable[[int], object] | None = None,
    pair_weights: torch.Tensor | None = None,
    sft_weights: Sequence[float] | None = None,
) -> pd.DataFrame:
    """DPO of every model of `policies` at its own β, learning rate and weight decay, in
    place, as one batched run.

    cfgs[i] configures model i; they may differ in beta, lr, weight_decay and seed only. Models
    of one seed see the same minibatches; when the seeds differ, each model draws its own batch
    order (replicates as members). `reference` is one frozen model, or an Ensemble of one frozen
    reference per model. Optionally, model i weights pair j by pair_weights[i, j] (a 0/1 mask
    trains it on a subset with the same number of steps) and adds sft_weights[i] × the
    SFT loss on the preferred responses (see dpo_batch_loss). Returns one row per
    evaluation and model, with `member` the model's index and `beta` its β. With
    `checkpoint`, progress is saved after every evaluation and resumed from; ``on_eval(step)``
    runs after every evaluation (see optimize).
    """
    n_pairs = train.tokens.shape[0] // 2 if isinstance(train, Batch) else len(train)
    pair_weights, sft_weights = _ensemble_inputs(policies, reference, cfgs, n_pairs, pair_weights, sft_weights)
    betas = torch.tensor([[c.beta] for c in cfgs])  # (M, 1)
    batch_loss = dpo_batch_loss(policies, train, reference, betas, pair_weights, sft_weights)
    params = list(policies.params.values())
    evaluation = partial(evaluate, policies, betas=[c.beta for c in cfgs])  # each member's β, from its config only
    df = optimize(params, batch_loss, n_pairs, cfgs, evaluation, stacked=True, checkpoint=checkpoint, on_eval=on_eval,
                  progress=progress, desc=f"DPO ×{len(cfgs)}")  # fmt: skip
    return df.assign(beta=df["member"].map(dict(enumerate(c.beta for c in cfgs))))
