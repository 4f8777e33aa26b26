import math

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import ConfigError, ModelConfig, TrainConfig
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.likelihood_displacement.claims import displacement_claims
from dpo_toolkit.studies.likelihood_displacement.persona import ANSWER_GROUPS, PersonaConfig, persona_corpus, train_persona_lm
from dpo_toolkit.studies.likelihood_displacement.study import displacement_row, one_step_geometry
from dpo_toolkit.studies.likelihood_displacement.theory import (
    first_order_logp_change,
    random_features_study,
    single_token_dpo_loss,
    unconstrained_logps,
)


def _instance(seed=0, V=7, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g, dtype=torch.float64), torch.randn(V, d, generator=g, dtype=torch.float64)


def test_loss_is_log2_at_the_reference_and_falls_with_the_margin():
    logps = torch.log_softmax(torch.tensor([1.0, 0.5, -0.2], dtype=torch.float64), -1)
    assert single_token_dpo_loss(logps, logps, 0, 1, 0.1).item() == pytest.approx(math.log(2))
    shifted = logps + torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    assert single_token_dpo_loss(shifted, logps, 0, 1, 0.1).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.05))))


def test_loss_gradient_matches_finite_differences():
    h, W = _instance()
    reference = unconstrained_logps(h, W).detach()
    h0 = h + 0.1  # away from the reference, so that the margin is not zero
    h_var = h0.clone().requires_grad_(True)
    single_token_dpo_loss(unconstrained_logps(h_var, W), reference, 2, 4, 0.5).backward()
    eps = 1e-6
    for i in range(len(h)):
        step = torch.zeros_like(h)
        step[i] = eps
        plus = single_token_dpo_loss(unconstrained_logps(h0 + step, W), reference, 2, 4, 0.5)
        minus = single_token_dpo_loss(unconstrained_logps(h0 - step, W), reference, 2, 4, 0.5)
        assert h_var.grad[i].item() == pytest.approx(((plus - minus) / (2 * eps)).item(), rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("bias", [False, True])
def test_one_step_change_matches_the_closed_form_for_a_small_step(bias):
    h, W = _instance(seed=3)
    b = torch.linspace(-1, 1, len(W), dtype=torch.float64) if bias else torch.zeros(len(W), dtype=torch.float64)
    reference = (W @ h + b).log_softmax(-1).detach()
    h_var, W_var = h.clone().requires_grad_(True), W.clone().requires_grad_(True)
    loss = single_token_dpo_loss((W_var @ h_var + b).log_softmax(-1), reference, 1, 3, 0.2)
    grad_h, grad_W = torch.autograd.grad(loss, [h_var, W_var])
    lr = 1e-6
    after = ((W - lr * grad_W) @ (h - lr * grad_h) + b).log_softmax(-1)
    predicted = first_order_logp_change(h, W, reference, 1, 3, 0.2, bias=b if bias else None)
    assert torch.allclose((after - reference) / lr, predicted, rtol=1e-4, atol=1e-8)


def test_mass_moves_in_proportion_to_the_inner_product_in_the_features_model():
    study = random_features_study(5, n_tokens=8, dim=4, h_scale=0.3, beta=0.1, lr=0.05, steps=3, seed=0)
    assert (study["z_corr"] > 0.999).all()  # exact at first order: Δlogit_z = c ⟨W_z, W_y+ − W_y−⟩
    assert len(study) == 5 and study["p_pos_before"].between(0, 1).all()


def test_one_step_geometry_of_the_lm_has_exact_features_theory():
    cfg = PersonaConfig(n_statements=8)
    model = build_model(cfg.model_config(d_model=16, n_heads=2), 0)
    train_persona_lm(cfg, model, TrainConfig(lr=1e-2, epochs=5, weight_decay=0.0))
    model.eval().requires_grad_(False)
    prompts, _, _ = persona_corpus(cfg)
    geometry = one_step_geometry(model, prompts[0], cfg.token("Yes"), cfg.token("No"), 0.1, 1e-5)
    assert np.allclose(geometry["dlogp_features"], geometry["dlogp_theory"], rtol=1e-3, atol=1e-10)
    assert len(geometry) == len(cfg.vocab)


def test_corpus_targets_and_stances():
    cfg = PersonaConfig(n_statements=10, hedge_fraction=0.2, lead_weight=0.5)
    prompts, stances, targets = persona_corpus(cfg)
    assert prompts.shape == (10, 3) and (prompts[:, 0] == cfg.token("Q")).all()
    assert sorted(stances.tolist()) == ["agree"] * 4 + ["disagree"] * 4 + ["hedge"] * 2
    assert torch.allclose(targets.sum(-1), torch.ones(10, dtype=torch.float64))
    agree = int(np.flatnonzero(stances == "agree")[0])
    assert targets[agree, cfg.token("Yes")].item() == 0.5
    assert targets[agree, cfg.token("Sure")].item() == pytest.approx(0.5 / 3)
    assert targets[agree, cfg.token("No")].item() == 0.0


def test_displacement_row_classes_benign_and_catastrophic():
    cfg = PersonaConfig()
    before = torch.zeros(len(cfg.vocab), dtype=torch.float64)
    after = before.clone()
    before[cfg.token("No")], after[cfg.token("No")] = 0.8, 0.1
    after[cfg.token("Yes")], after[cfg.token("no")], after[cfg.token("Maybe")] = 0.5, 0.2, 0.01
    row = displacement_row(cfg, before, after, "No", "Never")
    assert row["displaced"] and row["p_pos_before"] == 0.8 and row["p_pos_after"] == 0.1
    assert row["benign"] == "no" and row["catastrophic"] == "Yes, Maybe" and row["is_catastrophic"]
    assert {t for g in ANSWER_GROUPS.values() for t in g} <= set(cfg.vocab)
    kept = displacement_row(cfg, before, after.clone().index_fill_(0, torch.tensor([cfg.token("No")]), 0.9), "No", "Never")
    assert not kept["displaced"] and kept["catastrophic"] == "Yes, Maybe" and not kept["is_catastrophic"]


def test_bad_configs():
    with pytest.raises(ConfigError, match=r"PersonaConfig\.lead_weight must be a number in"):
        PersonaConfig(lead_weight=1.0)
    with pytest.raises(ConfigError, match="d_vocab="):
        train_persona_lm(PersonaConfig(), build_model(ModelConfig(), 0), TrainConfig())


FEATURES = pd.DataFrame({"inner_pos_neg": [0.0, 1.0, 2.0], "dlogp_pos_first_order": [0.3, 0.2, 0.1], "z_corr": [1.0] * 3,
                         "p_pos_before": [0.5] * 3, "p_pos_after": [0.4, 0.6, 0.7]})  # fmt: skip
PROPORTIONAL = pd.DataFrame({"statement": 0, "pair": "Yes/No", "inner": [0.0, 1.0, 2.0], "dlogp_lm": [0.0, 0.1, 0.2],
                             "dlogp_features": [0.0, 0.1, 0.2]})  # fmt: skip
FLAT = PROPORTIONAL.assign(dlogp_lm=[0.1, -0.2, 0.1])  # Pearson 0 with the inner products
FALLING = pd.DataFrame({"inner_pos_neg": [0.0, 1.0, 2.0], "dlogp_pos": [0.1, 0.0, -0.1]})  # Spearman −1; one fall in 3
RISING = FALLING.assign(dlogp_pos=[-0.1, 0.0, 0.1])  # Spearman +1, one fall in 3
STILL = FALLING.assign(dlogp_pos=[0.1, 0.0, 0.1])  # Spearman 0, no fall
TABLE = pd.DataFrame({"displaced": [True, False], "is_catastrophic": [True, False]})
NEVER = TABLE.assign(displaced=False, is_catastrophic=False)


def _seeded(*frames: pd.DataFrame) -> pd.DataFrame:
    """One frame per seed (seed = its position), stacked: each seed is one tiny LM."""
    return pd.concat([f.assign(seed=seed) for seed, f in enumerate(frames)], ignore_index=True)


def _c10(geometry, pairs, table, seeds: int = 3) -> pd.Series:
    """C10's row on `seeds` seeds with the same per-seed inputs."""
    return displacement_claims(FEATURES, _seeded(*[geometry] * seeds), _seeded(*[pairs] * seeds),
                               _seeded(*[table] * seeds)).iloc[0]  # fmt: skip


def test_claim_verdicts_on_three_seeds():
    # every seed: Pearson 1 ≥ 0.8, Spearman −1 ≤ −0.5, half its runs catastrophic
    row = _c10(PROPORTIONAL, FALLING, TABLE)
    assert row["verdict"] == "reproduced" and (row["n"], row["estimate"], row["threshold"]) == ("3", "1", "0.8")
    # Pearson 0 in every seed fails; each seed displaces in (1 run + 1 pair) of (2 runs + 3 pairs) = 40 %: partly
    row = _c10(FLAT, RISING, TABLE.assign(is_catastrophic=False))
    assert row["verdict"] == "partly" and row["estimate"] == "0"
    # only the unconstrained-features identity holds; the LM never displaces, in any seed: the part fails too
    row = _c10(FLAT, STILL, NEVER)
    assert row["verdict"] == "not reproduced" and (row["estimate"], row["ci_high"]) == ("0", "0")
    # one step lowers log π(y+) for one pair in each seed: displacement seen in the model
    assert _c10(FLAT, RISING, NEVER)["verdict"] == "partly"
    # a fall at float64 noise level is not displacement
    assert _c10(FLAT, RISING.assign(dlogp_pos=[-1e-12, 0.0, 0.1]), NEVER)["verdict"] == "not reproduced"
    assert "Spearman(⟨W_y+, W_y−⟩, Δ log π(y+)) over each seed's pairs +0.00 ± 0.00" in row["our_value"]


def test_claim_verdicts_on_few_or_disagreeing_seeds_are_inconclusive():
    # one or two seeds decide nothing, however clear
    assert _c10(PROPORTIONAL, FALLING, TABLE, seeds=1)["verdict"] == "inconclusive"
    assert _c10(PROPORTIONAL, FALLING, TABLE, seeds=2)["verdict"] == "inconclusive"
    # the full claim fails (Pearson 0); only seed 0 displaces (40 %, then 0, 0): mean 0.133, its t interval
    # 0.133 ± 4.30 · 0.231 / √3 straddles "some run"
    row = displacement_claims(FEATURES, _seeded(FLAT, FLAT, FLAT), _seeded(RISING, STILL, STILL), _seeded(TABLE, NEVER, NEVER))
    row = row.iloc[0]
    assert row["verdict"] == "inconclusive" and float(row["ci_low"]) < 1e-9 < float(row["ci_high"])
    assert float(row["estimate"]) == pytest.approx(0.4 / 3, abs=1e-3)
    # every part holds but the catastrophic share differs by seed (50 %, 0, 0): the full claim is open
    row = displacement_claims(FEATURES, _seeded(PROPORTIONAL, PROPORTIONAL, PROPORTIONAL), _seeded(FALLING, FALLING, FALLING),
                              _seeded(TABLE, NEVER.assign(displaced=True), NEVER.assign(displaced=True))).iloc[0]  # fmt: skip
    assert row["verdict"] == "inconclusive" and "share of catastrophic runs per seed" in row["our_value"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_order_terms_against_a_step_on_h_alone_and_on_w_alone(seed):
    """The h-term is the change of log π(y+) of a step on h with W fixed (the frozen head), the W-term
    that of a step on W with h fixed; together they are first_order_logp_change at y+."""
    from dpo_toolkit.studies.likelihood_displacement.theory import first_order_terms

    h, W = _instance(seed)
    bias = torch.linspace(-0.3, 0.3, len(W), dtype=torch.float64)
    reference = (W @ h + bias).log_softmax(-1)
    from_W, from_h = first_order_terms(h, W, reference, 0, 1, 0.1, bias=bias)
    assert from_W + from_h == pytest.approx(float(first_order_logp_change(h, W, reference, 0, 1, 0.1, bias=bias)[0]), rel=1e-12)
    eta = 1e-6
    for trained, term in (("h", from_h), ("W", from_W)):
        h_var, W_var = h.clone().requires_grad_(trained == "h"), W.clone().requires_grad_(trained == "W")
        loss = single_token_dpo_loss((W_var @ h_var + bias).log_softmax(-1), reference, 0, 1, 0.1)
        (grad,) = torch.autograd.grad(loss, [h_var if trained == "h" else W_var])
        with torch.no_grad():
            stepped = (W - eta * grad) @ h if trained == "W" else W @ (h - eta * grad)
            change = ((stepped + bias).log_softmax(-1) - reference)[0]
        assert float(change) / eta == pytest.approx(term, rel=1e-4), trained
    assert from_W >= 0  # never negative: ‖h‖² (1 − π(y+) + π(y−))


def test_projection_rank_by_brute_force():
    from dpo_toolkit.studies.likelihood_displacement.theory import projection_rank

    for seed in range(5):
        _, W = _instance(seed, V=9)
        for y_pos, y_neg in ((0, 1), (3, 2), (8, 0)):
            projection = [float(W[z] @ (W[y_pos] - W[y_neg])) for z in range(len(W))]
            assert projection_rank(W, y_pos, y_neg) == 1 + sum(p > projection[y_pos] for p in projection)
    assert projection_rank(torch.eye(3, dtype=torch.float64), 0, 1) == 1  # ⟨W_z, e0 − e1⟩ is 1, −1, 0: y+ leads
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)  # z = 2 more aligned with d = (1, −1)
    assert projection_rank(W, 0, 1) == 2


def _recorded_ensembles(monkeypatch) -> list:
    """Every Ensemble that single-prompt DPO trains, kept for the test to read its weights after training."""
    from dpo_toolkit.core.ensemble import Ensemble
    from dpo_toolkit.studies.likelihood_displacement import single_prompt

    made = []

    class Recorded(Ensemble):
        def __init__(self, models):
            super().__init__(models)
            made.append(self)

    monkeypatch.setattr(single_prompt, "Ensemble", Recorded)
    return made


def test_the_frozen_head_arm_freezes_the_head_and_trains_the_body(monkeypatch):
    from dpo_toolkit.studies.likelihood_displacement.single_prompt import single_prompt_dpo

    cfg = PersonaConfig(n_statements=6)
    model = build_model(cfg.model_config(d_model=16), seed=0)
    prompt = torch.tensor([cfg.token("Q"), cfg.token("s0"), cfg.token("A")])
    sgd = TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0, epochs=5, batch_size=1, grad_clip=None, n_evals=1)
    made = _recorded_ensembles(monkeypatch)
    before, after = single_prompt_dpo(model, prompt, cfg.token("No"), cfg.token("Never"), 0.1, sgd, head="frozen")
    trained = made[0].params  # the one run's weights after training, (1, …) each
    for name, p in model.named_parameters():
        moved = not torch.equal(trained[name][0], p)
        assert moved == (not name.startswith(("ln_final", "unembed"))), name  # the head bitwise unchanged, the body moved
    assert not torch.equal(before, after)
    with pytest.raises(ValueError, match="head"):
        single_prompt_dpo(model, prompt, cfg.token("No"), cfg.token("Never"), 0.1, sgd, head="half")


def test_displacement_needs_a_fall_of_its_size_and_catastrophe_a_mass():
    cfg = PersonaConfig()
    before = torch.zeros(len(cfg.vocab), dtype=torch.float64)
    before[cfg.token("No")] = 0.9495
    small = before.clone()
    small[cfg.token("No")], small[cfg.token("Yes")] = 0.9474, 0.0021  # the old rule's "displaced": −0.002 nats
    row = displacement_row(cfg, before, small, "No", "Never")
    assert row["dlogp_pos"] == pytest.approx(math.log(0.9474 / 0.9495)) and not row["displaced"]
    fall = before.clone()
    fall[cfg.token("No")], fall[cfg.token("Yes")], fall[cfg.token("no")] = 0.85, 0.03, 0.0695  # −0.11 nats; Yes gains 0.03
    row = displacement_row(cfg, before, fall, "No", "Never")
    assert row["displaced"] and row["catastrophic"] == "Yes" and not row["is_catastrophic"]  # a token, but not the mass
    assert row["other_meaning_gain"] == pytest.approx(0.03)
    fall[cfg.token("Maybe")] = 0.03
    assert displacement_row(cfg, before, fall, "No", "Never")["is_catastrophic"]  # 0.06 of mass to other meanings


def test_the_slow_head_steps_the_head_at_its_share_of_the_rate_and_the_body_at_the_full_rate(monkeypatch):
    from dpo_toolkit.studies.likelihood_displacement.single_prompt import SLOW_HEAD, single_prompt_dpo

    cfg = PersonaConfig(n_statements=6)
    model = build_model(cfg.model_config(d_model=16), seed=0)
    prompt = torch.tensor([cfg.token("Q"), cfg.token("s0"), cfg.token("A")])
    one_step = TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0, epochs=1, batch_size=1, grad_clip=None, n_evals=1)
    made = _recorded_ensembles(monkeypatch)
    for head in ("trained", "slow"):
        single_prompt_dpo(model, prompt, cfg.token("No"), cfg.token("Never"), 0.1, one_step, head=head)
    trained, slow = (ensemble.params for ensemble in made)  # after the one step, (1, …) each
    names = [n for n, _ in model.named_parameters()]
    is_head = [n.startswith(("ln_final", "unembed")) for n in names]
    start = dict(model.named_parameters())
    for name, in_head in zip(names, is_head, strict=True):
        full_step = trained[name][0] - start[name]
        slow_step = slow[name][0] - start[name]
        assert torch.allclose(slow_step, (SLOW_HEAD if in_head else 1.0) * full_step, atol=1e-7), name
    assert any(is_head) and all((trained[n][0] - start[n]).abs().max() > 0 for n in names)
