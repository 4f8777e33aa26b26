"""Evaluation metrics of Park §3.4, as pure functions of tensors."""

from __future__ import annotations

import torch
from torch import nn

from .model import param_group


def answers_tensor(answers: list[int | None]) -> torch.Tensor:
    """Decoded answers as float64 (n,), NaN where the response was unparseable."""
    return torch.tensor([float("nan") if a is None else float(a) for a in answers], dtype=torch.float64)


def sequence_error(answers: torch.Tensor, prompts: torch.Tensor, prompt_span: int) -> torch.Tensor:
    """Error(Y, x) = |Y − x|, or max S − min S when Y is unparseable (NaN). Inputs and output (n,)."""
    error = (answers - prompts).abs()
    return torch.where(answers.isnan(), torch.as_tensor(float(prompt_span), dtype=error.dtype), error)


def is_ood(answers: torch.Tensor, prompts: torch.Tensor, window: int) -> torch.Tensor:
    """OOD(Y, x): Y unparseable (NaN) or Y ∉ [x − W, x + W]. Inputs (n,); output bool (n,)."""
    return answers.isnan() | ((answers - prompts).abs() > window)


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs with r(y_w) > r(y_l) (Park §3.4). Inputs (batch,); output scalar."""
    return (chosen_rewards > rejected_rewards).double().mean()


def reward_margin(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Mean of r(y_w) − r(y_l) over pairs (Park §3.4). Inputs (batch,); output scalar."""
    return (chosen_rewards - rejected_rewards).double().mean()


def kl_estimate(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> tuple[float, float]:
    """Monte Carlo KL(π_θ ‖ π_ref) averaged over prompts (Park Eq. 6), with its standard error.

    Both inputs: (prompts, samples), log-probs of responses sampled from π_θ.
    Estimator: mean of log π_θ(y|x) − log π_ref(y|x), unbiased for each prompt.
    Standard error: sqrt(Σ_x var_x / n_x) / n_prompts, stratified by prompt.
    """
    log_ratio = (policy_logps - reference_logps).double()  # (prompts, samples)
    n_prompts, n_samples = log_ratio.shape
    if n_samples < 2:
        raise ValueError(f"kl_estimate needs ≥ 2 samples per prompt, got {n_samples}")
    kl = log_ratio.mean()
    stderr = (log_ratio.var(dim=1) / n_samples).sum().sqrt() / n_prompts
    return float(kl), float(stderr)


def _delta_norms(model_a: nn.Module, model_b: nn.Module) -> dict[str, float]:
    params_b = dict(model_b.named_parameters())
    return {name: float(torch.linalg.norm((p - params_b[name]).detach().flatten())) for name, p in model_a.named_parameters()}


@torch.no_grad()
def weight_delta(model_a: nn.Module, model_b: nn.Module, group: str | None = None) -> float:
    """WeightDelta (Park Eq. 7): Σ over parameters P of ‖M1[P] − M2[P]‖_F, optionally within one group."""
    return sum(v for name, v in _delta_norms(model_a, model_b).items() if group is None or param_group(name) == group)


@torch.no_grad()
def frac_weight_delta(model_a: nn.Module, model_b: nn.Module, group: str) -> float:
    """FracWeightDelta (Park Eq. 8): the share of WeightDelta that falls in `group`."""
    return weight_delta(model_a, model_b, group) / weight_delta(model_a, model_b)
