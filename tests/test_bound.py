"""Theorem 1's quantities (studies/vanishing_gradients/bound.py): γ against a finite-difference
Jacobian, its lower bound, and the bound as we read it on small random policies of the RL task."""

import numpy as np
import pytest
import torch

from dpo_toolkit.core.config import ModelConfig, RLTaskConfig
from dpo_toolkit.core.data import encode_prompt
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.vanishing_gradients.bound import (
    bound_ratio,
    gamma_exact,
    gamma_lower,
    logit_jacobian_norms,
)
from dpo_toolkit.studies.vanishing_gradients.rft import (
    RESPONSE_LENGTH,
    all_responses,
    closeness_reward,
    label_shifts,
    pretrain_labels,
    response_logps,
    split_prompts,
    targets,
    value_and_std,
    value_gradient_norms,
)

TINY = ModelConfig(d_model=8, n_heads=2, d_mlp=8, n_ctx=6)


def _finite_difference_jacobian(model, tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """∂z/∂θ of the last position's logits, one central difference per parameter: (V, n_params)."""
    params = list(model.parameters())
    columns = []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for i in range(flat.numel()):
                keep = flat[i].item()
                flat[i] = keep + eps
                up = model(tokens)[0, -1]
                flat[i] = keep - eps
                down = model(tokens)[0, -1]
                flat[i] = keep
                columns.append((up - down) / (2 * eps))
    return torch.stack(columns, dim=1)


def test_logit_jacobian_norm_is_the_largest_singular_value_of_the_finite_difference_jacobian():
    model = build_model(TINY, seed=3).double()
    tokens = torch.tensor([[*encode_prompt(417), 5]])
    jacobian = _finite_difference_jacobian(model, tokens)  # (12, n_params)
    assert jacobian.shape == (12, sum(p.numel() for p in model.parameters()))
    exact = torch.linalg.svdvals(jacobian)[0]
    assert float(logit_jacobian_norms(model, tokens)[0]) == pytest.approx(float(exact), rel=1e-6)


def test_gamma_exact_is_the_largest_over_every_output_prefix_and_gamma_lower_bounds_it():
    model = build_model(TINY, seed=5).double()
    prompt = 382
    prefixes = [torch.tensor([encode_prompt(prompt)])] + [torch.tensor([[*encode_prompt(prompt), y1]]) for y1 in range(12)]
    by_prefix = [float(logit_jacobian_norms(model, t)[0]) for t in prefixes]
    assert gamma_exact(model, prompt) == pytest.approx(max(by_prefix), rel=1e-9)
    # the unembedding's own columns: J Jᵀ ⪰ (‖h‖² + 1) I at each prefix, h the final hidden state
    with torch.no_grad():
        norms = [model.hidden(t)[0][0, -1].double().pow(2).sum().item() for t in prefixes]
    assert gamma_lower(model, np.array([prompt]))[0] == pytest.approx(np.sqrt(max(norms) + 1), rel=1e-9)
    assert gamma_lower(model, np.array([prompt]))[0] <= gamma_exact(model, prompt)


@pytest.mark.parametrize("scale", [1.0, 8.0, 40.0])
def test_the_bound_as_read_holds_on_random_policies_from_spread_to_near_deterministic(scale):
    """6·L·γ·std^(2/3) on the task's own policies: random tiny models, their unembedding scaled up
    to make them near-deterministic. A ratio above 1 would mean our reading of the constant is wrong."""
    prompts = np.array([105, 233, 377, 418, 561, 999])
    rewards = closeness_reward(prompts, all_responses(12))
    for seed in range(3):
        model = build_model(TINY, seed=seed).double()
        with torch.no_grad():
            model.unembed.weight.mul_(scale)
        _, std = value_and_std(response_logps(model, prompts), rewards)
        grads = value_gradient_norms(model, prompts, rewards)
        gammas = np.array([gamma_exact(model, int(p)) for p in prompts])
        ratio = bound_ratio(grads, std.numpy(), gammas, RESPONSE_LENGTH)
        assert np.nanmax(ratio) <= 1.0


def test_bound_ratio_by_hand():
    # ‖∇V‖ = 0.12, std = 0.008 (std^(2/3) = 0.04), γ = 2, L = 2: 0.12 / (6 · 2 · 2 · 0.04) = 0.125
    assert bound_ratio([0.12], [0.008], [2.0], 2)[0] == pytest.approx(0.125)
    assert np.isnan(bound_ratio([0.0], [0.0], [2.0], 2)[0])


def test_per_prompt_wrong_labels_are_each_prompts_own_and_far_enough():
    cfg = RLTaskConfig(prompt_min=100, prompt_max=299, shift=30, seed=4)
    _, _, hard = split_prompts(cfg)
    prompts = np.arange(100, 300)
    shifts = label_shifts(cfg, prompts)
    assert shifts.min() >= 30 and shifts.max() <= 70 and len(np.unique(shifts)) > 20  # no one shared rule
    labels = pretrain_labels(cfg, prompts, hard)
    distance = np.minimum((labels - targets(prompts)) % 100, (targets(prompts) - labels) % 100)
    is_hard = np.isin(prompts, hard)
    assert (distance[is_hard] >= 30).all() and (distance[~is_hard] == 0).all()
    assert (label_shifts(cfg, prompts[50:60]) == shifts[50:60]).all()  # a prompt's shift does not depend on the others asked
    shared = RLTaskConfig(prompt_min=100, prompt_max=299, shift=30, seed=4, wrong_labels="shared shift")
    assert (pretrain_labels(shared, prompts, hard)[is_hard] == (targets(prompts[is_hard]) + 30) % 100).all()
