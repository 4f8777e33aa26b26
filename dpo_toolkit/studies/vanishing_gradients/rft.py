"""RL fine-tuning with exact expectations (Razin et al., ICLR 2024, "vanishing gradients").

The task (``RLTaskConfig``): prompt 'ABC=', response exactly two tokens y = (y1, y2)
drawn from the whole vocabulary, so the response space has d_vocab² members (144) and
every expectation over π(·|x) is an exact sum rather than a sample mean.
Reward: closeness of the 2-digit number y1y2 to the target s mod 100,
r = 1 − d / 50 with d the cyclic distance (0 ≤ d ≤ 50); 0 when a token is not a digit.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch.func import grad, vmap

from dpo_toolkit.core.config import RLTaskConfig, TrainConfig
from dpo_toolkit.core.data import Batch, encode_prompt
from dpo_toolkit.core.ensemble import Ensemble, as_ensemble, model_device, rows_per_call
from dpo_toolkit.core.losses import sequence_logps
from dpo_toolkit.core.model import Transformer, extend_with
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


def label_shifts(cfg: RLTaskConfig, prompts: np.ndarray) -> np.ndarray:
    """The label shift of each prompt, were it hard: cfg.shift for every prompt ("shared shift"), or
    each prompt's own, uniform on [shift, 100 − shift] ("per prompt"), drawn from cfg.seed with a
    stream of its own (the split and the hard prompts stay those of ``split_prompts``), one per
    three-digit prompt, so that a prompt's shift does not depend on the prompt range. A shift's
    cyclic distance is ≥ shift, so the wrong label's reward is ≤ 1 − shift/50."""
    prompts = np.asarray(prompts)
    if cfg.wrong_labels == "shared shift":
        return np.full(len(prompts), cfg.shift)
    rng = np.random.default_rng([cfg.seed, 1])
    every = rng.integers(cfg.shift, 100 - cfg.shift, endpoint=True, size=900)  # one per three-digit prompt 100–999
    return every[prompts - 100]


def pretrain_labels(cfg: RLTaskConfig, prompts: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """The pretraining label of each prompt: its target, shifted (mod 100) on the hard prompts (``label_shifts``)."""
    return (targets(prompts) + np.where(np.isin(prompts, hard), label_shifts(cfg, prompts), 0)) % 100


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


def _prompt_tokens(prompts: np.ndarray) -> torch.Tensor:
    """The encoded prompts, (n, P): they share one length (RLTaskConfig keeps them at three digits)."""
    return torch.tensor([encode_prompt(int(s)) for s in np.asarray(prompts).tolist()])


def _tree_logps(extend: Callable, prompt_tokens: torch.Tensor) -> torch.Tensor:
    """log π(y | x) of every two-token response y (``all_responses`` order) to prompts (..., n, P).

    The response space is a two-level tree: the prompt is computed once, then each of its V
    first tokens once against the prompt's cached keys and values (``Transformer.extend``), so
    log π(y1 y2 | x) = log π(y1 | x) + log π(y2 | x, y1) costs P + V positions per prompt
    instead of V² sequences. extend(tokens, past) is a model's or an ensemble's ``extend``.
    Returns (..., n, V²).
    """
    logits, cache = extend(prompt_tokens, None)  # (..., n, P, V)
    first = logits[..., -1, :].log_softmax(-1)  # (..., n, V): log π(y1 | x)
    n, vocab = prompt_tokens.shape[-2], first.shape[-1]
    batch_dim = prompt_tokens.ndim - 2
    y1 = torch.arange(vocab, device=prompt_tokens.device).repeat(n).expand(*prompt_tokens.shape[:-2], -1)[..., None]
    cache = tuple(c.repeat_interleave(vocab, dim=batch_dim) for c in cache)  # each prompt's cache, once per y1
    logits, _ = extend(y1, cache)  # (..., n·V, 1, V)
    second = logits[..., -1, :].log_softmax(-1).unflatten(-2, (n, vocab))  # (..., n, V, V): log π(y2 | x, y1)
    return (first[..., :, None] + second).flatten(-2)


@torch.no_grad()
def response_logps(policy: Transformer | Ensemble, prompts: np.ndarray) -> torch.Tensor:
    """log π(y | s) of every response (``all_responses``) to every prompt: (n, R), or (M, n, R) for an
    ensemble; computed on the policy's device, returned on the CPU."""
    model = as_ensemble(policy)
    prompt_tokens = _prompt_tokens(prompts).to(model_device(model))
    chunk = max(1, 8 * rows_per_call(len(model)) // model.cfg.d_vocab)
    logps = torch.cat(
        [
            _tree_logps(model.extend, prompt_tokens[i : i + chunk].expand(len(model), -1, -1))
            for i in range(0, len(prompts), chunk)
        ],
        dim=1,
    ).cpu()  # (M, n, R)
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


def _value_fn(model: Transformer):
    def value(params: dict, prompt_tokens: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:  # (P,), rewards (R,)
        logps = _tree_logps(partial(extend_with, model, params), prompt_tokens[None])[0]  # (R,)
        return (logps.exp() * rewards.to(logps.dtype)).sum()

    return value


def value_gradient(model: Transformer, prompt: int, rewards: torch.Tensor) -> torch.Tensor:
    """The exact ∇_θ V_x of one prompt, flattened over model.named_parameters() in order. rewards: (R,)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    device = model_device(model)
    grads = grad(_value_fn(model))(params, _prompt_tokens(np.array([prompt]))[0].to(device), rewards.to(device))
    return torch.cat([g.flatten() for g in grads.values()]).cpu()


def value_gradient_norms(model: Transformer, prompts: np.ndarray, rewards: torch.Tensor) -> np.ndarray:
    """‖∇_θ V_x‖₂ of every prompt, exactly (per-input gradients by vmap over prompts). rewards: (n, R). Returns (n,)."""
    device = model_device(model)
    prompt_tokens, rewards = _prompt_tokens(prompts).to(device), rewards.to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_input = vmap(grad(_value_fn(model)), in_dims=(None, 0, 0))
    norms = []
    for i in range(0, len(prompts), 64):
        grads = per_input(params, prompt_tokens[i : i + 64], rewards[i : i + 64])
        norms.append(torch.stack([g.flatten(1).double().pow(2).sum(1) for g in grads.values()]).sum(0).sqrt())
    return torch.cat(norms).cpu().numpy()


def reinforce_gradient(
    model: Transformer, prompt: int, responses: torch.Tensor, rewards: torch.Tensor, n_samples: int, seed: int
) -> torch.Tensor:
    """REINFORCE estimate of ∇_θ V_x with the exact V_x as baseline: mean over n_samples
    draws y ∼ π(·|x) of (r(x, y) − V_x) ∇ log π(y|x), each response scored by a full forward pass
    (the independent check of ``value_gradient``). Flattened like ``value_gradient``, on the CPU;
    the draws are made on the CPU, so a seed gives the same draws on every device."""
    tokens, response_mask = _response_tokens(np.array([prompt]), responses)
    device = model_device(model)
    tokens = tokens[0].to(device)  # (R, T)
    logps = sequence_logps(model(tokens), tokens, response_mask.to(device).expand(len(tokens), -1))  # (R,)
    probs = logps.detach().double().exp().cpu()
    rewards = rewards.double().cpu()
    baseline = (probs * rewards).sum()
    draws = torch.multinomial(probs, n_samples, replacement=True, generator=torch.Generator().manual_seed(seed))
    advantages = (rewards[draws] - baseline).to(device=device, dtype=logps.dtype)  # (n_samples,)
    surrogate = (advantages * logps[draws.to(device)]).mean()
    grads = torch.autograd.grad(surrogate, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads]).cpu()


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
    device = model_device(policies)
    prompt_tokens = _prompt_tokens(prompts).to(device).expand(len(policies), -1, -1)  # (M, n, P)
    reward_table = rewards.float().to(device)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        logps = _tree_logps(policies.extend, prompt_tokens[:, index])  # (M, b, R)
        value = (logps.exp() * reward_table[index]).sum(-1)  # (M, b)
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
