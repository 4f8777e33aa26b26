import numpy as np
import pytest
import torch

from dpo_toolkit.core.config import ModelConfig
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.exact import enumerate_responses, in_window_strings, is_aligned, response_masses
from dpo_toolkit.core.model import build_model


@pytest.fixture
def short_model():
    """A float64 model whose 5-token context leaves 3 response tokens after a 1-digit prompt.

    float64, so that the two methods agree to 1e-9 although they run different matmul shapes."""
    model = build_model(ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=5), seed=3).double()
    with torch.no_grad():
        model.unembed.weight.mul_(8)  # sharper next-token distributions than at initialisation
    return model


def _brute_force_masses(model, prompt, window, temperature):
    leaves = enumerate_responses(model, prompt, temperature)
    logps = np.array([lp for _, lp in leaves])
    aligned = np.array([is_aligned(r, prompt, window) for r, _ in leaves])
    return logps, aligned


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_enumerated_probabilities_sum_to_one(short_model, temperature):
    logps, _ = _brute_force_masses(short_model, 5, 2, temperature)
    assert len(logps) == 1 + 11 + 11 * 11 * 12  # ".", "d.", then every 3-token path (the context ends it)
    assert np.exp(logps).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("prompt", "temperature"), [(5, 1.0), (5, 0.5), (1, 2.0), (8, 1.0)])
def test_response_masses_match_brute_force_enumeration(short_model, prompt, temperature):
    logps, aligned = _brute_force_masses(short_model, prompt, 2, temperature)
    log_aligned, log_unaligned = response_masses(short_model, np.array([prompt]), 2, temperature)
    assert aligned.any() and (~aligned).any()
    assert log_aligned[0] == pytest.approx(np.logaddexp.reduce(logps[aligned]), abs=1e-9)
    assert log_unaligned[0] == pytest.approx(np.logaddexp.reduce(logps[~aligned]), abs=1e-9)


def test_no_room_for_an_in_window_answer_means_all_mass_unaligned(short_model):
    # "12=" leaves two response tokens: one digit and '.', and no single digit is in [10, 14]
    log_aligned, log_unaligned = response_masses(short_model, np.array([12]), 2)
    assert log_aligned[0] == -np.inf and log_unaligned[0] == 0.0
    _, aligned = _brute_force_masses(short_model, 12, 2, 1.0)
    assert not aligned.any()


def test_prompts_of_different_lengths_in_one_call_match_brute_force(short_model):
    # 1-digit prompts walk three-digit trees, "10=" a one-digit tree, "12=" none; all in one call
    prompts = [5, 12, 1, 10, 8, 0]
    log_aligned, log_unaligned = response_masses(short_model, np.array(prompts), 2, 1.5)
    for i, prompt in enumerate(prompts):
        logps, aligned = _brute_force_masses(short_model, prompt, 2, 1.5)
        expected_aligned = np.logaddexp.reduce(logps[aligned]) if aligned.any() else -np.inf
        assert log_aligned[i] == pytest.approx(expected_aligned, abs=1e-9)
        assert log_unaligned[i] == pytest.approx(np.logaddexp.reduce(logps[~aligned]), abs=1e-9)


def test_masses_sum_to_one_on_the_paper_model_and_an_ensemble_matches_its_members():
    models = [build_model(ModelConfig(), seed) for seed in (0, 1)]
    prompts = np.array([100, 257, 499])
    ensemble_aligned, ensemble_unaligned = response_masses(Ensemble(models), prompts, 10)
    assert ensemble_aligned.shape == (2, 3)
    assert np.allclose(np.exp(ensemble_aligned) + np.exp(ensemble_unaligned), 1.0, atol=1e-9)
    for i, m in enumerate(models):
        log_aligned, log_unaligned = response_masses(m, prompts, 10)
        assert np.allclose(log_aligned, ensemble_aligned[i], atol=1e-5)
        assert np.allclose(log_unaligned, ensemble_unaligned[i], atol=1e-5)


def test_in_window_strings_include_leading_zeros_that_fit():
    strings = in_window_strings(5, 1, max_digits=2)
    assert sorted(strings) == sorted([[4], [0, 4], [5], [0, 5], [6], [0, 6]])
    assert in_window_strings(100, 0, max_digits=2) == []


def test_bad_input(short_model):
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        response_masses(short_model, np.array([5]), 2, temperature=0.0)
    with pytest.raises(ValueError, match="MAX_ENUMERATED"):
        enumerate_responses(build_model(ModelConfig(), 0), 5)
