"""Evaluation metrics of Park §3.4, as pure functions of tensors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .model import PARAM_GROUPS, param_group


def answers_tensor(answers: list) -> torch.Tensor:
    """Decoded answers (a list, or a list of lists per model) as float64 (..., n), NaN where unparseable."""

    def to_float(a):
        return [to_float(x) for x in a] if isinstance(a, list) else float("nan") if a is None else float(a)

    return torch.tensor(to_float(answers), dtype=torch.float64)


def sequence_error(answers: torch.Tensor, prompts: torch.Tensor, prompt_span: int) -> torch.Tensor:
    """Error(Y, x) = |Y − x|, or max S − min S when Y is unparseable (NaN). Inputs and output (n,)."""
    error = (answers - prompts).abs()
    return torch.where(answers.isnan(), torch.as_tensor(float(prompt_span), dtype=error.dtype), error)


def is_ood(answers: torch.Tensor, prompts: torch.Tensor, window: int) -> torch.Tensor:
    """OOD(Y, x): Y unparseable (NaN) or Y ∉ [x − W, x + W]. Inputs (n,); output bool (n,)."""
    return answers.isnan() | ((answers - prompts).abs() > window)


def reward_accuracy(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, atol: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Fraction of pairs with r(y_w) − r(y_l) > atol (Park §3.4, where atol = 0); ties count as wrong.

    Inputs (..., batch); atol broadcastable to (..., 1); output (...). A small atol keeps
    float rounding from deciding pairs whose rewards are equal, as all are at step 0.
    """
    return (chosen_rewards - rejected_rewards > atol).double().mean(-1)


def reward_margin(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Mean of r(y_w) − r(y_l) over pairs (Park §3.4). Inputs (..., batch); output (...)."""
    return (chosen_rewards - rejected_rewards).double().mean(-1)


TRL_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")


def trl_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The DPO metrics Hugging Face TRL's DPOTrainer logs, under its names and definitions, so
    that a TRL user can compare logs: means over the batch of β·log(π/π_ref) of y_w and y_l,
    of 1[r(y_w) > r(y_l)] (strict, no tolerance), of r(y_w) − r(y_l), and of the summed
    response log-probs of y_w and y_l under the policy. Inputs (..., batch); outputs (...)."""
    return {
        "rewards/chosen": chosen_rewards.double().mean(-1),
        "rewards/rejected": rejected_rewards.double().mean(-1),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).double().mean(-1),
        "rewards/margins": (chosen_rewards - rejected_rewards).double().mean(-1),
        "logps/chosen": policy_chosen_logps.double().mean(-1),
        "logps/rejected": policy_rejected_logps.double().mean(-1),
    }


def kl_estimate(log_ratios: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(π_θ ‖ π_ref) averaged over prompts (Park Eq. 6) from per-sample estimates, with its standard error.

    log_ratios: (..., prompts, samples), one unbiased estimate per response sampled from π_θ:
    either log π_θ(y|x) − log π_ref(y|x) (plain Monte Carlo) or the exact per-token KL
    summed along the sampled path (lower variance; see ``generate.sample_responses``).
    Returns the mean (...) and its standard error sqrt(Σ_x var_x / n) / n_prompts (...),
    stratified by prompt.
    """
    log_ratios = log_ratios.double()
    n_prompts, n_samples = log_ratios.shape[-2:]
    if n_samples < 2:
        raise ValueError(f"kl_estimate needs ≥ 2 samples per prompt, got {n_samples}")
    stderr = (log_ratios.var(dim=-1) / n_samples).sum(-1).sqrt() / n_prompts
    return log_ratios.mean((-2, -1)), stderr


@torch.no_grad()
def group_weight_deltas(
    params_a: Mapping[str, torch.Tensor], params_b: Mapping[str, torch.Tensor], stacked_b: bool = False
) -> dict[str, torch.Tensor]:
    """Σ over the parameters P of each group of ‖A[P] − B[P]‖_F (the summand of Park Eq. 7).

    params_a may carry leading model dimensions (an Ensemble's stacked (M, *shape)
    weights); params_b is one model's and is broadcast, or, with `stacked_b`, stacked like
    params_a (M, *shape): one reference per model. Returns {group: (...) tensor}
    for every group of PARAM_GROUPS (0 for a group with no parameters).
    """
    deltas = dict.fromkeys(PARAM_GROUPS, torch.zeros(()))
    for name, b in params_b.items():
        diff = (params_a[name].detach() - b.detach()).double()  # (..., *shape)
        model_ndim = b.ndim - 1 if stacked_b else b.ndim  # the dimensions of one model's parameter
        deltas[param_group(name)] = deltas[param_group(name)] + diff.flatten(diff.ndim - model_ndim).norm(dim=-1)
    return deltas


def weight_delta(model_a: nn.Module, model_b: nn.Module, group: str | None = None) -> float:
    """WeightDelta (Park Eq. 7): Σ over parameters P of ‖M1[P] − M2[P]‖_F, optionally within one group."""
    if group is not None and group not in PARAM_GROUPS:
        raise ValueError(f"group must be one of {list(PARAM_GROUPS)}, got {group!r}")
    deltas = group_weight_deltas(dict(model_a.named_parameters()), dict(model_b.named_parameters()))
    return float(sum(deltas.values()) if group is None else deltas[group])


def frac_weight_delta(model_a: nn.Module, model_b: nn.Module, group: str) -> float:
    """FracWeightDelta (Park Eq. 8): the share of WeightDelta that falls in `group`."""
    return weight_delta(model_a, model_b, group) / weight_delta(model_a, model_b)


def path_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Exact per-token KL(π_θ(·|prefix) ‖ π_ref(·|prefix)) summed along each sampled response.

    logits: (..., batch, seq, vocab) on sequences sampled from π_θ; response_mask (..., batch, seq).
    By the chain rule its expectation is the sequence KL of Eq. 6, with lower variance than
    the plain log-ratio. Position t − 1 predicts token t, as in ``sequence_logps``. Returns (..., batch).
    """
    policy_logp = policy_logits[..., :-1, :].log_softmax(-1)
    reference_logp = reference_logits[..., :-1, :].log_softmax(-1)
    token_kl = (policy_logp.exp() * (policy_logp - reference_logp)).sum(-1)  # (..., batch, seq − 1)
    return (token_kl * response_mask[..., 1:]).sum(-1)
