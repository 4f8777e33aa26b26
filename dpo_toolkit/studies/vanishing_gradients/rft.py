"""RL fine-tuning with exact expectations (Razin et al., ICLR 2024, "vanishing gradients").

The task (``RLTaskConfig``): prompt 'ABC=', response exactly two tokens y = (y1, y2)
drawn from the whole vocabulary, so the response space has d_vocab² members (144) and
every expectation over π(·|x) is an exact sum rather than a sample mean.
Reward: closeness of the 2-digit number y1y2 to the target s mod 100,
r = 1 − d / 50 with d the cyclic distance (0 ≤ d ≤ 50); 0 when a token is not a digit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, grad, vmap

from dpo_toolkit.core.config import RLTaskConfig, TrainConfig
from dpo_toolkit.core.data import Batch, encode_prompt
from dpo_toolkit.core.ensemble import Ensemble, as_ensemble, rows_per_call
from dpo_toolkit.core.losses import sequence_logps
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.train import Checkpoint, optimize

RESPONSE_LENGTH = 2


def all_responses(d_vocab: int) -> torch.Tensor:
    """Every two-token response, (d_vocab², 2) int64, in lexicographic order."""
    ids = torch.arange(d_vocab)
    return torch.cartesian_prod(ids, ids)


def targets(prompts: np.ndarray) -> np.ndarray:
    """The target answer of each prompt: s mod 100."""
    return np.asarray(prompts) % 100


def closeness_reward(prompts: np.ndarray, responses: torch.Tensor) -> torch.Tensor:
    """r(s, y) = 1 − d(y, s mod 100) / 50 with d the cyclic distance on 0..99; 0 if y has a
    non-digit token. Returns (n_prompts, n_responses) float64 in [0, 1]."""
    is_number = (responses < 10).all(-1)  # (R,)
    value = (10 * responses[:, 0] + responses[:, 1]).double()  # (R,)
    gap = (value[None, :] - torch.as_tensor(targets(prompts), dtype=torch.float64)[:, None]).abs()  # (n, R)
    distance = torch.minimum(gap, 100 - gap)
    return torch.where(is_number[None, :], 1 - distance / 50, torch.zeros(()).double())


def split_prompts(cfg: RLTaskConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, test, hard) prompt arrays, each sorted. Train and test partition the
    prompts; `hard` (the prompts pretrained on shifted labels) is drawn from all of them."""
    prompts = np.arange(cfg.prompt_min, cfg.prompt_max + 1)
    rng = np.random.default_rng(cfg.seed)
    n_test = round(len(prompts) * cfg.test_fraction)
    order = rng.permutation(prompts)
    hard = rng.choice(prompts, round(len(prompts) * cfg.hard_fraction), replace=False)
    return np.sort(order[n_test:]), np.sort(order[:n_test]), np.sort(hard)


def pretrain_labels(cfg: RLTaskConfig, prompts: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """The pretraining label of each prompt: its target, shifted by cfg.shift (mod 100) on hard prompts."""
    return (targets(prompts) + np.where(np.isin(prompts, hard), cfg.shift, 0)) % 100


def label_batch(prompts: np.ndarray, labels: np.ndarray) -> Batch:
    """Sequences 'ABC=' + the two digits of each label (leading zero kept), for SFT."""
    rows = [[*encode_prompt(int(s)), int(y) // 10, int(y) % 10] for s, y in zip(prompts.tolist(), labels.tolist(), strict=True)]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("label_batch needs prompts of one length (RLTaskConfig keeps them at three digits)")
    tokens = torch.tensor(rows)  # (n, 6)
    response_mask = torch.zeros_like(tokens, dtype=torch.bool)
    response_mask[:, -RESPONSE_LENGTH:] = True
    return Batch(tokens, response_mask)


def _response_tokens(prompts: np.ndarray, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prompt followed by every response: tokens (n, R, T) and the response mask (T,)."""
    prompt_tokens = torch.tensor([encode_prompt(int(s)) for s in np.asarray(prompts).tolist()])  # (n, P)
    n, R = len(prompt_tokens), len(responses)
    tokens = torch.cat([prompt_tokens[:, None, :].expand(n, R, -1), responses[None].expand(n, -1, -1)], dim=-1)
    response_mask = torch.zeros(tokens.shape[-1], dtype=torch.bool)
    response_mask[-RESPONSE_LENGTH:] = True
    return tokens, response_mask


@torch.no_grad()
def response_logps(policy: Transformer | Ensemble, prompts: np.ndarray, responses: torch.Tensor) -> torch.Tensor:
    """log π(y | s) of every response to every prompt: (n, R), or (M, n, R) for an ensemble."""
    model = as_ensemble(policy)
    tokens, response_mask = _response_tokens(prompts, responses)
    flat = tokens.flatten(0, 1)  # (n·R, T)
    chunk = rows_per_call(len(model)) * 8
    logps = torch.cat(
        [sequence_logps(model(flat[i : i + chunk]), flat[i : i + chunk], response_mask.expand(len(flat[i : i + chunk]), -1))
         for i in range(0, len(flat), chunk)],
        dim=-1,
    ).view(len(model), *tokens.shape[:2])  # fmt: skip
    return logps[0] if isinstance(policy, Transformer) else logps


def value_and_std(logps: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V_x = E_{y∼π}[r(x, y)] and std_{y∼π}[r(x, y)], exactly, in float64.

    logps: (..., n, R) log π(y|x) over the whole response space; rewards: (n, R).
    The std is √E[(r − V)²], which has no cancellation when π is nearly deterministic.
    """
    probs = logps.double().exp()
    value = (probs * rewards).sum(-1)
    std = (probs * (rewards - value[..., None]) ** 2).sum(-1).sqrt()
    return value, std


def _value_fn(model: Transformer, response_mask: torch.Tensor):
    def value(params: dict, tokens: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:  # tokens (R, T), rewards (R,)
        logps = sequence_logps(functional_call(model, params, (tokens,)), tokens, response_mask.expand(len(tokens), -1))
        return (logps.exp() * rewards.to(logps.dtype)).sum()

    return value


def value_gradient(model: Transformer, prompt: int, responses: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """The exact ∇_θ V_x of one prompt, flattened over model.named_parameters() in order. rewards: (R,)."""
    tokens, response_mask = _response_tokens(np.array([prompt]), responses)
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = grad(_value_fn(model, response_mask))(params, tokens[0], rewards)
    return torch.cat([g.flatten() for g in grads.values()])


def value_gradient_norms(model: Transformer, prompts: np.ndarray, responses: torch.Tensor, rewards: torch.Tensor) -> np.ndarray:
    """‖∇_θ V_x‖₂ of every prompt, exactly (per-input gradients by vmap over prompts). rewards: (n, R). Returns (n,)."""
    tokens, response_mask = _response_tokens(prompts, responses)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_input = vmap(grad(_value_fn(model, response_mask)), in_dims=(None, 0, 0))
    norms = []
    for i in range(0, len(prompts), 16):
        grads = per_input(params, tokens[i : i + 16], rewards[i : i + 16])
        norms.append(torch.stack([g.flatten(1).double().pow(2).sum(1) for g in grads.values()]).sum(0).sqrt())
    return torch.cat(norms).numpy()


def reinforce_gradient(
    model: Transformer, prompt: int, responses: torch.Tensor, rewards: torch.Tensor, n_samples: int, seed: int
) -> torch.Tensor:
    """REINFORCE estimate of ∇_θ V_x with the exact V_x as baseline: mean over n_samples
    draws y ∼ π(·|x) of (r(x, y) − V_x) ∇ log π(y|x). Flattened like ``value_gradient``."""
    tokens, response_mask = _response_tokens(np.array([prompt]), responses)
    tokens = tokens[0]  # (R, T)
    logps = sequence_logps(model(tokens), tokens, response_mask.expand(len(tokens), -1))  # (R,)
    probs = logps.detach().double().exp()
    baseline = (probs * rewards).sum()
    draws = torch.multinomial(probs, n_samples, replacement=True, generator=torch.Generator().manual_seed(seed))
    surrogate = ((rewards[draws] - baseline).to(logps.dtype) * logps[draws]).mean()
    grads = torch.autograd.grad(surrogate, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def train_rft(
    policies: Ensemble,
    prompts: np.ndarray,
    rewards: torch.Tensor,
    cfg: TrainConfig,
    evaluate: Callable[[], list[dict]],
    on_eval: Callable[[int], object] | None = None,
    progress: bool | None = None,
    checkpoint: Checkpoint | None = None,
) -> pd.DataFrame:
    """Policy-gradient fine-tuning with exact expected gradients: every model of the ensemble
    ascends the mean of V_x over a minibatch of prompts, in place. rewards: (n, R) for
    `prompts` over ``all_responses``. Returns one row per evaluation and model; with a
    checkpoint, a killed run resumes from its last evaluation (see optimize)."""
    responses = all_responses(policies.cfg.d_vocab)
    tokens, response_mask = _response_tokens(prompts, responses)  # (n, R, T)
    reward_table = rewards.float()

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        batch_tokens = tokens[index].flatten(0, 1)  # (b·R, T)
        logps = sequence_logps(policies(batch_tokens), batch_tokens, response_mask.expand(len(batch_tokens), -1))
        value = (logps.view(len(policies), len(index), -1).exp() * reward_table[index]).sum(-1)  # (M, b)
        return -value.mean(-1)

    params = list(policies.params.values())
    return optimize(
        params,
        batch_loss,
        len(prompts),
        [cfg],
        evaluate,
        stacked=True,
        checkpoint=checkpoint,
        on_eval=on_eval,
        progress=progress,
        desc="RFT",
    )
