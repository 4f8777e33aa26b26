import dataclasses

import numpy as np
import pytest
import torch

from dpo_toolkit.core.config import ConfigError, ModelConfig, RLTaskConfig, TrainConfig
from dpo_toolkit.core.data import encode_prompt
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.losses import sequence_logps
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.vanishing_gradients.rft import (
    all_responses,
    closeness_reward,
    label_batch,
    pretrain_labels,
    reinforce_gradient,
    response_logps,
    split_prompts,
    train_rft,
    value_and_std,
    value_gradient,
    value_gradient_norms,
)

RESPONSES = all_responses(12)


@pytest.fixture
def small_model():
    return build_model(ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=6), seed=0)


def test_response_space_and_reward_by_hand():
    assert RESPONSES.shape == (144, 2) and len({tuple(r) for r in RESPONSES.tolist()}) == 144
    rewards = closeness_reward(np.array([107]), torch.tensor([[0, 7], [5, 7], [9, 9], [10, 7], [0, 8]]))
    assert rewards[0].tolist() == pytest.approx([1.0, 0.0, 1 - 8 / 50, 0.0, 1 - 1 / 50])


def test_response_probabilities_sum_to_one_and_ensembles_agree(small_model):
    prompts = np.array([100, 345])
    logps = response_logps(small_model, prompts)
    assert logps.shape == (2, 144)
    assert torch.allclose(logps.double().exp().sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-5)
    other = build_model(small_model.cfg, seed=1)
    stacked = response_logps(Ensemble([small_model, other]), prompts)
    assert torch.allclose(stacked[0], logps, atol=1e-5)
    assert torch.allclose(stacked[1], response_logps(other, prompts), atol=1e-5)


def test_tree_log_probs_equal_every_response_scored_in_full(small_model):
    # the slow path: every (prompt, response) sequence through the whole model
    prompts = np.array([100, 345, 287])
    tokens = torch.tensor([encode_prompt(int(s)) + r for s in prompts for r in RESPONSES.tolist()])  # (n·R, 6)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, -2:] = True
    full = sequence_logps(small_model(tokens), tokens, mask).view(3, 144)
    assert torch.allclose(response_logps(small_model, prompts), full, atol=1e-5)


def test_value_and_std_by_brute_force():
    probs = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0, 0.4], [0.3, 1.0, 0.0]], dtype=torch.float64)
    value, std = value_and_std(probs.log(), rewards)
    assert value.tolist() == pytest.approx([0.6, 0.3])
    assert std[0].item() == pytest.approx(np.sqrt(0.5 * 0.4**2 + 0.25 * 0.6**2 + 0.25 * 0.2**2))
    assert std[1].item() == 0.0  # a deterministic policy has zero reward std


def test_exact_gradient_matches_finite_differences(small_model):
    model = small_model.double()
    rewards = closeness_reward(np.array([231]), RESPONSES)[0]
    gradient = value_gradient(model, 231, rewards)
    direction = torch.randn(gradient.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-5

    def value_at(shift: float) -> float:
        shifted = build_model(model.cfg, seed=0).double()
        offset = 0
        with torch.no_grad():
            for p_shifted, p in zip(shifted.parameters(), model.parameters(), strict=True):
                p_shifted.copy_(p + shift * direction[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        value, _ = value_and_std(response_logps(shifted, np.array([231])), rewards[None])
        return value.item()

    numeric = (value_at(eps) - value_at(-eps)) / (2 * eps)
    assert numeric == pytest.approx(float(gradient @ direction), rel=1e-6)


def test_per_input_gradient_norms_match_one_at_a_time(small_model):
    prompts = np.array([120, 199, 403])
    rewards = closeness_reward(prompts, RESPONSES)
    norms = value_gradient_norms(small_model, prompts, rewards)
    expected = [value_gradient(small_model, int(s), rewards[i]).norm().item() for i, s in enumerate(prompts)]
    assert norms == pytest.approx(expected, rel=1e-4)


def test_reinforce_estimate_is_unbiased(small_model):
    model = small_model.double()
    rewards = closeness_reward(np.array([150]), RESPONSES)[0]
    exact = value_gradient(model, 150, rewards)
    estimates = torch.stack([reinforce_gradient(model, 150, RESPONSES, rewards, 2000, seed) for seed in range(40)])
    mean, stderr = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
    z = (mean - exact) / (stderr + 1e-12)
    assert (z.abs() < 5).float().mean() > 0.99  # every coordinate within noise of the exact gradient
    assert torch.nn.functional.cosine_similarity(mean, exact, dim=0) > 0.95


def test_deterministic_policy_has_zero_std_and_zero_gradient(small_model):
    with torch.no_grad():
        small_model.unembed.weight.zero_()
        small_model.unembed.bias.copy_(torch.tensor([0.0] * 7 + [1e4] + [0.0] * 4))  # always emits '7'
    prompts = np.array([177, 300])
    rewards = closeness_reward(prompts, RESPONSES)
    value, std = value_and_std(response_logps(small_model, prompts), rewards)
    assert std.tolist() == [0.0, 0.0]
    assert value.tolist() == pytest.approx([1.0, 1 - 23 / 50])  # '77' against targets 77 and 0
    assert value_gradient_norms(small_model, prompts, rewards).tolist() == [0.0, 0.0]


def test_rft_raises_the_expected_reward(small_model):
    prompts = np.arange(100, 132)
    rewards = closeness_reward(prompts, RESPONSES)
    policies = Ensemble([small_model])
    before = value_and_std(response_logps(policies, prompts), rewards)[0].mean().item()
    cfg = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=5, batch_size=8, grad_clip=None, n_evals=1)
    df = train_rft(policies, prompts, rewards, cfg, evaluate=lambda: [{}], progress=False)
    after = value_and_std(response_logps(policies, prompts), rewards)[0].mean().item()
    assert len(df) == 2 and after > before + 0.05


def test_task_split_labels_and_batches():
    cfg = RLTaskConfig(prompt_min=100, prompt_max=139, test_fraction=0.25, hard_fraction=0.5, shift=30, seed=1)
    train, test, hard = split_prompts(cfg)
    assert len(test) == 10 and len(train) == 30 and len(hard) == 20
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100, 140))
    shared = dataclasses.replace(cfg, wrong_labels="shared shift")
    easy = int(np.setdiff1d(np.arange(100, 140), hard)[0])
    labels = pretrain_labels(shared, np.array([hard[0], easy]), hard)
    assert labels.tolist() == [(hard[0] % 100 + 30) % 100, easy % 100]
    batch = label_batch(np.array([105, 299]), np.array([5, 99]))
    assert batch.tokens.tolist() == [[1, 0, 5, 10, 0, 5], [2, 9, 9, 10, 9, 9]]
    assert batch.response_mask.sum(1).tolist() == [2, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_min": 99}, "RLTaskConfig.prompt_min must be an integer in [100, 999]"),
        ({"prompt_max": 1000}, "RLTaskConfig.prompt_max must be an integer in [prompt_min=100, 999]"),
        ({"shift": 0}, "RLTaskConfig.shift must be an integer in [1, 50]"),
        ({"hard_fraction": 1.5}, "RLTaskConfig.hard_fraction must be a number in [0, 1]"),
        ({"prompt_max": 100, "test_fraction": 0.5}, "leaves ≥ 1 prompt in train and in test"),
    ],
)
def test_task_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError) as info:
        RLTaskConfig(**kwargs)
    assert message in str(info.value)
