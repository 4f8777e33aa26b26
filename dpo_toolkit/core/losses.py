"""Sequence log-probabilities and the SFT and DPO losses, as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log π(y | x): the sum of next-token log-probs over response positions.

    logits: (*models, batch, seq, vocab), the output on `tokens`; leading model dims are optional.
    tokens: (batch, seq) or (*models, batch, seq) int64.
    response_mask: like tokens, bool, True where tokens[..., t] is a response token.
    Position t is scored by logits[..., t − 1, :]; prompt and pad positions contribute nothing.
    Returns (*models, batch).
    """
    targets = tokens[..., 1:].expand((*logits.shape[:-2], tokens.shape[-1] - 1))  # (*models, batch, seq − 1)
    token_logps = logits[..., :-1, :].log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # (*models, batch, seq − 1)
    return (token_logps * response_mask[..., 1:]).sum(-1)


def sft_loss(logps: torch.Tensor) -> torch.Tensor:
    """SFT loss −E[log π(y | x)] (Park Eq. 4): mean over the batch of summed response log-probs,
    (batch,) → a scalar, or (M, batch) → (M,), one loss per model."""
    return -logps.mean(-1)


def soft_label_sft_loss(logps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SFT on a target distribution instead of samples: the expected cross-entropy
    −Σ_y q(y | x) log π(y | x), averaged over prompts. logps and targets: (*models, prompts, candidates),
    log π and q of each candidate response (q sums to ≤ 1 over a prompt's candidates); leading model
    dims are optional. Returns (*models), one loss per model (a scalar for one)."""
    return -(targets * logps).sum(-1).mean(-1)


def implicit_reward(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO implicit reward r = β log π_θ(y|x)/π_ref(y|x) (Park Eq. 3); inputs and output (batch,)."""
    return beta * (policy_logps - reference_logps)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
):
    """DPO loss per pair (Rafailov et al. 2023; Park Eq. 2).

    All inputs: (batch,), summed log-probs of the response tokens.
    Returns: losses (batch,), chosen_rewards (batch,), rejected_rewards (batch,); rewards detached.
    """
    chosen_rewards = implicit_reward(policy_chosen_logps, reference_chosen_logps, beta)  # Eq. 3
    rejected_rewards = implicit_reward(policy_rejected_logps, reference_rejected_logps, beta)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)  # Eq. 2
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
