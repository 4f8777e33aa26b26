import copy
import itertools

import numpy as np
import pytest
import torch

from dpo_toolkit.core.config import EvalConfig, ModelConfig
from dpo_toolkit.core.data import END, EQ, collate_pairs, decode_response, encode_prompt
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator, score
from dpo_toolkit.core.generate import greedy_answers, greedy_sequences, sample_responses
from dpo_toolkit.core.losses import sequence_logps
from dpo_toolkit.core.metrics import (
    TRL_NAMES,
    answers_tensor,
    frac_weight_delta,
    is_ood,
    kl_estimate,
    path_kl,
    reward_accuracy,
    reward_margin,
    sequence_error,
    trl_metrics,
    weight_delta,
)
from dpo_toolkit.core.model import build_model


def test_ood_and_error_on_hand_made_strings():
    # prompt 50, W = 5, S = [1, 99] → span 98
    strings = {"50.": (0, False), "55.": (5, False), "44.": (6, True), "7.": (43, True), "5=5.": (98, True), "56": (98, True)}
    tokens = [[EQ if c == "=" else END if c == "." else int(c) for c in s] for s in strings]
    answers = answers_tensor([decode_response(t) for t in tokens])
    prompts = torch.full((len(strings),), 50.0, dtype=torch.float64)
    assert sequence_error(answers, prompts, prompt_span=98).tolist() == [e for e, _ in strings.values()]
    assert is_ood(answers, prompts, window=5).tolist() == [o for _, o in strings.values()]


def test_reward_accuracy_and_margin():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, 0.5]), torch.tensor([0.0, 0.0, 3.0, 0.0])
    assert reward_accuracy(chosen, rejected).item() == pytest.approx(0.5)  # a tie is not a win
    assert reward_margin(chosen, rejected).item() == pytest.approx((1 + 0 - 1 + 0.5) / 4)


def test_kl_estimate_mean_and_stratified_stderr():
    kl, se = kl_estimate(torch.tensor([[1.0, 3.0], [0.0, 0.0]]))
    assert kl.item() == pytest.approx(1.0)
    assert se.item() == pytest.approx(np.sqrt(2.0 / 2) / 2)  # var of [1, 3] is 2 (unbiased), of [0, 0] is 0
    kl, se = kl_estimate(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))  # leading model dim
    assert kl.tolist() == [2.0, 2.0] and se[1].item() == 0.0
    with pytest.raises(ValueError, match="≥ 2 samples"):
        kl_estimate(torch.zeros(3, 1))


CFG = ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=5)


def exact_kl(policy, reference, prompt: int) -> float:
    """KL by enumerating every response the decoder can emit after 'prompt=' within n_ctx."""
    prefix = encode_prompt(prompt)
    room = CFG.n_ctx - len(prefix)
    non_end = [t for t in range(12) if t != END]
    responses = [[*list(body), END] for k in range(room) for body in itertools.product(non_end, repeat=k)]
    responses += [list(body) for body in itertools.product(non_end, repeat=room)]  # ran out of context
    tokens = torch.tensor([prefix + r + [END] * (room - len(r)) for r in responses])
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, r in enumerate(responses):
        mask[i, len(prefix) : len(prefix) + len(r)] = True
    with torch.no_grad():
        p = sequence_logps(policy(tokens), tokens, mask).double()
        q = sequence_logps(reference(tokens), tokens, mask).double()
    assert p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)  # the enumeration covers the whole space
    return float((p.exp() * (p - q)).sum())


def test_kl_is_zero_for_identical_models_and_matches_exact_enumeration():
    from dpo_toolkit.core.config import DataConfig
    from dpo_toolkit.core.data import PairSet

    policy, reference = build_model(CFG, seed=0), build_model(CFG, seed=1)
    with torch.no_grad():  # sharpen the models so that the KL is well away from 0
        policy.unembed.weight.mul_(8)
        reference.unembed.weight.mul_(8)
    prompts = np.array([3, 7])
    test = PairSet(prompts, prompts, prompts + 1)
    data_cfg = DataConfig(prompt_min=1, prompt_max=9, window=1)
    same = Evaluator(test, data_cfg, EvalConfig(kl_samples=8), reference=copy.deepcopy(policy)).kl(policy)
    assert all(float(v) == 0.0 for v in same.values())
    exact = np.mean([exact_kl(policy, reference, s) for s in prompts])
    assert exact > 0.1
    est = Evaluator(test, data_cfg, EvalConfig(kl_samples=4000, seed=5), reference=reference).kl(policy)
    for name in ("kl", "kl_mc"):  # both estimators are unbiased
        assert abs(est[name].item() - exact) < 4 * est[f"{name}_se"].item(), name
        assert est[f"{name}_se"].item() < 0.1 * exact
    assert est["kl_se"].item() < est["kl_mc_se"].item()  # the path estimator has lower variance


def test_path_kl_of_identical_logits_is_zero_and_matches_a_hand_sum():
    logits = torch.randn(2, 4, 12)
    mask = torch.tensor([[False, True, True, False], [False, False, True, True]])
    assert torch.allclose(path_kl(logits, logits, mask), torch.zeros(2), atol=1e-6)
    other = torch.randn(2, 4, 12)
    p, q = logits.log_softmax(-1), other.log_softmax(-1)
    by_hand = [
        sum(float((p[b, t - 1].exp() * (p[b, t - 1] - q[b, t - 1])).sum()) for t in range(1, 4) if mask[b, t]) for b in range(2)
    ]
    assert torch.allclose(path_kl(logits, other, mask), torch.tensor(by_hand), atol=1e-5)


def test_samples_follow_the_model_and_greedy_is_the_mode():
    model = build_model(CFG, seed=2)
    samples = sample_responses(model, np.array([4]), n_samples=3000, seed=0)
    first = samples.tokens[:, 2]  # first response token after '4='
    with torch.no_grad():
        probs = model(torch.tensor([encode_prompt(4)]))[0, -1].softmax(-1)
    freq = torch.bincount(first, minlength=12).double() / len(first)
    assert torch.allclose(freq, probs.double(), atol=0.03)
    assert torch.equal(
        sample_responses(model, np.array([4, 5]), 4, seed=1).tokens, sample_responses(model, np.array([4, 5]), 4, seed=1).tokens
    )
    greedy = greedy_answers(model, np.array([4]))
    assert len(greedy) == 1


def test_weight_delta_on_known_tensors(tiny_model):
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.attn.W_O.weight.add_(torch.full_like(other.attn.W_O.weight, 0.5))  # ‖·‖_F = 0.5 · sqrt(16 · 16) = 8
        other.mlp[0].bias.add_(torch.tensor([3.0, 4.0] + [0.0] * 14))  # ‖·‖_F = 5
    assert weight_delta(tiny_model, tiny_model) == 0.0
    assert weight_delta(tiny_model, other) == pytest.approx(13.0)
    assert weight_delta(other, tiny_model, group="attention") == pytest.approx(8.0)
    assert frac_weight_delta(tiny_model, other, "attention") == pytest.approx(8 / 13)
    assert frac_weight_delta(tiny_model, other, "mlp") == pytest.approx(5 / 13)


def test_reward_accuracy_tolerance_ignores_float_noise():
    chosen, rejected = torch.tensor([1e-7, 0.5]), torch.tensor([0.0, 0.0])
    assert reward_accuracy(chosen, rejected).item() == 1.0
    assert reward_accuracy(chosen, rejected, atol=1e-5).item() == 0.5


def test_evaluator_scores_a_fixed_subset_of_pairs(tiny_pairs, tiny_data_cfg, tiny_model):
    _, test = tiny_pairs
    sub = Evaluator(test, tiny_data_cfg, EvalConfig(max_pairs=5), reference=tiny_model)
    again = Evaluator(test, tiny_data_cfg, EvalConfig(max_pairs=5), reference=tiny_model)
    assert sub.test_batch.tokens.shape[0] == 2 * 5
    assert torch.equal(sub.test_batch.tokens, again.test_batch.tokens)
    assert len(sub.prompts) == len(test.prompts)  # greedy and KL metrics still use every test prompt


def test_evaluator_with_reference_needs_beta(tiny_pairs, tiny_data_cfg, tiny_model):
    _, test = tiny_pairs
    with pytest.raises(ValueError, match="needs the β of the runs it evaluates"):
        Evaluator(test, tiny_data_cfg, EvalConfig(), reference=tiny_model)(tiny_model)  # β comes with the runs evaluated
    with pytest.raises(ValueError, match="2 betas for an ensemble of 3"):
        Evaluator(test, tiny_data_cfg, EvalConfig(), reference=tiny_model)(Ensemble([tiny_model] * 3), betas=[0.1, 0.2])


def test_greedy_sequences_spell_the_greedy_answers(tiny_model):
    prompts = np.array([3, 12, 17])
    batch = greedy_sequences(tiny_model, prompts)
    assert batch.tokens.shape == (3, tiny_model.cfg.n_ctx)
    spelled = [decode_response(row[mask]) for row, mask in zip(batch.tokens, batch.response_mask, strict=True)]
    assert spelled == greedy_answers(tiny_model, prompts)
    assert [row[: len(encode_prompt(s))].tolist() for row, s in zip(batch.tokens, prompts, strict=True)] == [
        encode_prompt(s) for s in prompts.tolist()
    ]


def test_trl_metrics_against_hand_computed_values():
    """TRL's DPOTrainer logs means over the batch; accuracy is strict (a tie is wrong)."""
    chosen = torch.tensor([0.3, -0.1, 0.2])
    rejected = torch.tensor([0.1, 0.4, 0.2])
    out = trl_metrics(chosen, rejected, torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0, -5.0, -6.0]))
    assert list(out) == list(TRL_NAMES)
    assert out["rewards/chosen"].item() == pytest.approx(0.4 / 3)
    assert out["rewards/rejected"].item() == pytest.approx(0.7 / 3)
    assert out["rewards/accuracies"].item() == pytest.approx(1 / 3)  # 0.3 > 0.1 only
    assert out["rewards/margins"].item() == pytest.approx((0.2 - 0.5 + 0.0) / 3)
    assert out["logps/chosen"].item() == pytest.approx(-2.0) and out["logps/rejected"].item() == pytest.approx(-5.0)
    batched = trl_metrics(torch.stack([chosen, rejected]), torch.stack([rejected, chosen]), torch.zeros(2, 3), torch.zeros(2, 3))
    assert batched["rewards/margins"].tolist() == pytest.approx([-0.1, 0.1])  # one value per model of an ensemble


def test_the_evaluator_reports_trl_metrics_consistent_with_its_own(tiny_pairs, tiny_data_cfg, tiny_model, tiny_model_cfg):
    _, test = tiny_pairs
    policy = build_model(tiny_model_cfg, seed=5)
    row = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=2), reference=tiny_model)(policy, betas=0.5)
    assert row["rewards/margins"] == pytest.approx(row["margin"])
    assert row["rewards/chosen"] == pytest.approx(0.5 * row["chosen_logp_change"])


def test_score_counts_each_distinct_sequence_once_and_returns_every_row(tiny_pairs, tiny_model):
    train, _ = tiny_pairs
    batch = collate_pairs(train)
    assert len(torch.unique(batch.tokens, dim=0)) < len(batch.tokens)  # pairs share answers
    expected = sequence_logps(tiny_model(batch.tokens), batch.tokens, batch.response_mask)  # every row in full
    assert torch.allclose(score(tiny_model, batch), expected, atol=1e-5)
    other = build_model(tiny_model.cfg, seed=7)
    both = score(Ensemble([tiny_model, other]), batch)
    assert both.shape == (2, len(batch.tokens))
    assert torch.allclose(both[1], sequence_logps(other(batch.tokens), batch.tokens, batch.response_mask), atol=1e-5)


def test_kl_is_exactly_zero_for_the_reference_and_matches_per_model_scoring(tiny_pairs, tiny_data_cfg, tiny_model):
    _, test = tiny_pairs
    other = build_model(tiny_model.cfg, seed=5)
    evaluator = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=tiny_model)
    kl = evaluator.kl(Ensemble([tiny_model, other]))
    assert kl["kl"][0] == 0.0 and kl["kl_mc"][0] == 0.0  # a policy equal to the reference, bit for bit
    samples = sample_responses(other, evaluator.prompts, 3, evaluator.eval_cfg.seed)  # every sample scored in full
    path = path_kl(other(samples.tokens), tiny_model(samples.tokens), samples.response_mask)
    assert kl["kl"][1].item() == pytest.approx(path.double().mean().item(), rel=1e-5)
