import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import ConfigError, DPOConfig, ModelConfig, TrainConfig
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.ches.mitigation import variants
from dpo_toolkit.studies.ches.safety import run_safety, safety_claims, safety_summary
from dpo_toolkit.studies.ches.safety_task import (
    REFUSALS,
    RESPONSES,
    SafetyConfig,
    candidate_batch,
    phrase_masses,
    preference_pairs,
    prompts,
    rates,
    train_safety_sft,
)

SMALL = SafetyConfig(n_topics=4, n_objects=4, pairs_per_prompt=3)


def test_prompts_split_every_combination_once():
    train, test = prompts(SMALL)
    assert len(train) + len(test) == 16 and len(test) == 4
    together = {tuple(p) for p in np.concatenate([train, test])}
    assert len(together) == 16
    vocab = SMALL.vocab
    assert all(vocab[p[0]] == "U" and vocab[p[3]] == ":" for p in together)


def test_candidate_batch_masks_exactly_the_response_words():
    train, _ = prompts(SMALL)
    batch = candidate_batch(SMALL, train[:2])
    assert batch.tokens.shape[0] == 2 * len(RESPONSES)
    for row, response in enumerate(RESPONSES):
        words = [SMALL.vocab[t] for t, m in zip(batch.tokens[row].tolist(), batch.response_mask[row].tolist(), strict=True) if m]
        assert words == response.split()
        assert not batch.response_mask[row, :4].any()


def test_pairs_prefer_a_refusal_and_mix_as_configured():
    cfg = SafetyConfig(n_topics=10, n_objects=10, pairs_per_prompt=8, both_refusal_share=0.7)
    train, _ = prompts(cfg)
    batch, table = preference_pairs(cfg, train)
    assert len(table) == 8 * len(train) and batch.tokens.shape[0] == 2 * len(table)
    assert table["chosen"].isin(REFUSALS).all()
    assert (table["both_refusals"] == table["rejected"].isin(REFUSALS)).all()
    assert (table["chosen"] != table["rejected"]).all()
    assert abs(table["both_refusals"].mean() - 0.7) < 0.05
    first = [SMALL.vocab[t] for t in batch.tokens[0, 4:].tolist()]
    assert " ".join(first).startswith(table["chosen"].iloc[0])


def test_phrase_masses_match_a_token_by_token_product():
    train, _ = prompts(SMALL)
    model = build_model(SMALL.model_config(d_model=16), seed=0)
    masses = phrase_masses(model, SMALL, train[:3])[0]  # (3, 8)
    for i, prompt in enumerate(train[:3]):
        for j, response in enumerate(RESPONSES):
            ids = list(prompt)
            p = 1.0
            for word in response.split():
                with torch.no_grad():
                    probs = model(torch.tensor([ids]))[0, -1].double().softmax(-1)
                token = SMALL.vocab.index(word)
                p *= float(probs[token])
                ids.append(token)
            assert masses[i, j].item() == pytest.approx(p, rel=1e-4)
    out = rates(masses[None])
    assert out["refusal_rate"].item() == pytest.approx(masses[:, :4].sum(-1).mean().item())
    assert out["other_rate"].item() == pytest.approx(1 - masses.sum(-1).mean().item())
    assert 0 <= out["other_rate"].item() <= 1


def test_sft_reaches_the_target_refusal_share():
    cfg = SafetyConfig(n_topics=4, n_objects=4, refusal_share=0.8)
    train_cfg = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=200, grad_clip=None)
    model = build_model(cfg.model_config(d_model=32), 0)
    train_safety_sft(cfg, model, train_cfg)
    train, _ = prompts(cfg)
    masses = phrase_masses(model, cfg, train)[0]
    assert masses[:, :4].sum(-1).mean().item() == pytest.approx(0.8, abs=0.03)
    assert masses.sum(-1).mean().item() > 0.97  # little mass outside the phrases


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="refusal_share"):
        SafetyConfig(refusal_share=1.0)
    with pytest.raises(ConfigError, match="pairs_per_prompt"):
        SafetyConfig(pairs_per_prompt=0)
    with pytest.raises(ConfigError, match="d_vocab"):
        train_safety_sft(SMALL, build_model(ModelConfig(), 0), TrainConfig())


def test_run_safety_starts_at_the_reference_and_is_cached(tmp_path):
    sft = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=50, grad_clip=None)
    dpo = DPOConfig(optimizer="rmsprop", lr=1e-3, weight_decay=0.0, epochs=2, batch_size=8, grad_clip=None, n_evals=2, beta=0.1)
    runs = variants([0.5], [1.0])
    curves, pairs = run_safety(SMALL, SMALL.model_config(d_model=16), sft, dpo, runs, [0], tmp_path)
    start = curves[curves["step"] == 0]
    assert np.allclose(start["refusal_rate"], start["refusal_rate"].iloc[0])
    assert np.allclose(start["chosen_logp_change"], 0, atol=1e-6)
    assert len(pairs) == 3 * len(prompts(SMALL)[0]) and pairs["ches"].notna().all()
    again, _ = run_safety(SMALL, SMALL.model_config(d_model=16), sft, dpo, runs, [0], tmp_path)
    pd.testing.assert_frame_equal(curves, again)


def _curves(start, end, compliance_end, seeds=(0, 1, 2)):
    """Reference refusal `start` and compliance 0.2; after all-pairs DPO refusal `end` and compliance
    `compliance_end` (each one for every seed or a list of one per seed); filter and SFT fixed."""
    rows = []
    for i, seed in enumerate(seeds):
        s0, e, c = (float(np.broadcast_to(v, len(seeds))[i]) for v in (start, end, compliance_end))
        for name, kind, rate in (("all pairs", "all pairs", e), ("f", "CHES filter", 0.7), ("s", "SFT term", 0.9)):
            rows.append(dict(seed=seed, variant=name, kind=kind, step=0, epoch=0.0, refusal_rate=s0, compliance_rate=0.2))
            comp = c if kind == "all pairs" else 0.1
            rows.append(dict(seed=seed, variant=name, kind=kind, step=9, epoch=9.0, refusal_rate=rate, compliance_rate=comp))
    return pd.DataFrame(rows)


def test_c13_is_read_at_every_budget_and_under_the_refusal_only_rule():
    """A non-monotone run (the toy's refusal rate went 0.975 → 0.716 → 0.983 once): 75 % refusals at the
    start; after 10 epochs 40 % (compliance 50 %), after 30 epochs 45 % with the mass gone elsewhere
    (compliance 20 %), at 60 epochs back to 80 %."""
    rows = []
    for seed in (0, 1, 2):
        for step, epoch, refusal, compliance in ((0, 0, 0.75, 0.2), (10, 10, 0.4, 0.5), (30, 30, 0.45, 0.2), (60, 60, 0.8, 0.15)):
            jitter = 0.01 * (seed - 1)
            rows.append(dict(seed=seed, variant="all pairs", kind="all pairs", step=step, epoch=float(epoch),
                             refusal_rate=refusal + jitter, compliance_rate=compliance))  # fmt: skip
    c13 = safety_claims(pd.DataFrame(rows)).iloc[0]
    assert c13["verdict"] == "not reproduced"  # decided at the end: refusals rose
    assert (
        "Verdict by DPO budget: 10 epochs: reproduced, 30 epochs: not reproduced, 60 epochs (the end): not reproduced"
        in (c13["our_value"])
    )
    # at 30 epochs the refusal rate fell by 0.3 but the mass did not reach the compliances: the paper's rule alone says
    # reproduced there; at the end it says not reproduced
    assert "The paper's refusal-rate-only rule: not reproduced" in c13["our_value"]
    at_30 = pd.DataFrame(rows)[lambda d: d["step"] <= 30]
    assert "The paper's refusal-rate-only rule: reproduced" in safety_claims(at_30).iloc[0]["our_value"]


@pytest.mark.parametrize(
    ("end", "compliance_end", "verdict"),
    [
        (0.4, 0.5, "reproduced"),
        (0.4, 0.0, "not reproduced"),  # refusals fell but no mass reached compliance: the old rule said partly
        (0.65, 0.5, "partly"),
        (0.72, 0.3, "not reproduced"),
        (0.9, 0.0, "not reproduced"),
        ([0.4, 0.35, 0.45], [0.5, 0.55, 0.45], "reproduced"),  # seeds that differ, each clear of its threshold
    ],
)
def test_safety_verdicts(end, compliance_end, verdict):
    """Reference: 75 % refusals, 20 % compliance."""
    claims = safety_claims(_curves(0.75, end, compliance_end))
    assert claims["claim_id"].tolist() == ["C13"] and claims["verdict"].iloc[0] == verdict
    assert claims["n"].iloc[0] == "3"
    assert "best CHES filter (f) 70.0%" in claims["our_value"].iloc[0]


def test_safety_claim_decides_on_each_seeds_fall_and_where_it_went():
    row = safety_claims(_curves(0.75, [0.4, 0.35, 0.45], [0.5, 0.55, 0.45])).iloc[0]
    # the deciding (first) check: the fall of the refusal rate, 0.35, 0.40, 0.30: mean 0.35
    assert (row["verdict"], row["threshold"]) == ("reproduced", "0.2") and float(row["estimate"]) == pytest.approx(0.35)
    assert float(row["ci_low"]) >= 0.2
    # partly: a fall of 0.1 (≥ WEAK, < UNALIGNMENT) in every seed, decided by the failing full check
    partly = safety_claims(_curves(0.75, 0.65, 0.5)).iloc[0]
    assert (partly["verdict"], partly["estimate"], partly["threshold"]) == ("partly", "0.1", "0.2")
    # not reproduced: refusals fall by 0.35 but compliance falls by 0.2: rise − ¼ · fall = −0.2 − 0.0875
    gone = safety_claims(_curves(0.75, 0.4, 0.0)).iloc[0]
    assert gone["verdict"] == "not reproduced" and float(gone["estimate"]) == pytest.approx(-0.2875)


def test_safety_claim_is_inconclusive_on_two_seeds_or_straddling_seeds():
    two = safety_claims(_curves(0.75, 0.4, 0.5, seeds=(0, 1))).iloc[0]
    assert (two["verdict"], two["n"]) == ("inconclusive", "2")
    # falls of 0.35, 0.05, 0.35 (mean 0.25): the interval straddles 0.2
    row = safety_claims(_curves(0.75, [0.4, 0.7, 0.4], 0.6)).iloc[0]
    assert row["verdict"] == "inconclusive" and float(row["estimate"]) == pytest.approx(0.25)
    assert float(row["ci_low"]) < 0.2 < float(row["ci_high"])


def test_safety_is_untestable_when_the_reference_does_not_refuse():
    claims = safety_claims(_curves(0.3, 0.05, 0.9))  # a fall of 25 points, all of it to compliance
    assert claims["verdict"].iloc[0] == "untestable here"
    assert "30.0%" in claims["precondition"].iloc[0]
    # a reference that refuses 80 %, 30 %, 80 %: the precondition straddles 50 %, nothing is decided
    mixed = safety_claims(_curves([0.8, 0.3, 0.8], 0.05, 0.9)).iloc[0]
    assert mixed["verdict"] == "inconclusive" and "precondition" in mixed["our_value"]


def test_two_refusal_pairs_are_oriented_one_way_globally():
    cfg = SafetyConfig(both_refusal_share=1.0, pairs_per_prompt=6, orientation="global")
    _, table = preference_pairs(cfg, prompts(cfg)[0])
    order = {r: i for i, r in enumerate(REFUSALS)}
    assert (table["chosen"].map(order) < table["rejected"].map(order)).all()
    seen = set(zip(table["prompt"], table["chosen"], table["rejected"], strict=True))
    assert not any((p, r, c) in seen for p, c, r in seen)  # no prompt carries both A ≻ B and B ≻ A


def test_two_refusal_pairs_are_oriented_per_prompt():
    cfg = SafetyConfig(both_refusal_share=1.0, pairs_per_prompt=12)
    _, table = preference_pairs(cfg, prompts(cfg)[0])
    seen = set(zip(table["prompt"], table["chosen"], table["rejected"], strict=True))
    assert not any((p, r, c) in seen for p, c, r in seen)  # within a prompt: one ranking, no A ≻ B and B ≻ A
    # each prompt's preferences are a ranking: no cycle, so its "beats" relation orders its refusals
    for _, pairs in table.groupby("prompt"):
        beats = set(zip(pairs["chosen"], pairs["rejected"], strict=True))
        assert not any((c, a) in beats for a, b in beats for b2, c in beats if b2 == b)  # a ≻ b ≻ c never with c ≻ a
    # across prompts the orientations differ: some pair of refusals is preferred one way here and the other way there
    everywhere = set(zip(table["chosen"], table["rejected"], strict=True))
    assert any((r, c) in everywhere for c, r in everywhere)
    # and no refusal is preferred to every other everywhere (the global orientation's top phrase)
    winners = table.groupby("chosen").size()
    assert len(winners) == len(REFUSALS)


def test_safety_summary_says_where_the_refusal_mass_went():
    def curves(compliance_end):
        steps = ((0, 0.75, 0.2), (9, 0.4, compliance_end))
        common = dict(seed=0, variant="all pairs", kind="all pairs")
        rows = [dict(common, step=s, refusal_rate=r, compliance_rate=c, other_rate=1 - r - c)
                for s, r, c in steps]  # fmt: skip
        return pd.DataFrame(rows)

    assert "from 75.0% to 40.0%" in safety_summary(curves(0.5)) and "goes to compliances, as in the paper" in safety_summary(
        curves(0.5)
    )
    assert "does not go to compliances" in safety_summary(curves(0.1))


def test_seeds_train_as_members_as_each_seed_would_alone(tmp_path):
    """Replicates as members: two seeds in one ensemble (each (seed, variant) a member against its seed's
    reference, with its seed's batch order) give each seed's curves and CHES as a run of that seed alone."""
    sft = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=30, grad_clip=None)
    dpo = DPOConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=2, batch_size=8, grad_clip=None, n_evals=2, beta=0.1)
    runs, model_cfg = variants([0.5], [1.0]), SMALL.model_config(d_model=16)
    together, pairs = run_safety(SMALL, model_cfg, sft, dpo, runs, [0, 1], tmp_path / "members")
    for seed in (0, 1):
        alone, alone_pairs = run_safety(SMALL, model_cfg, sft, dpo, runs, [seed], tmp_path / f"seed{seed}")
        mine = together[together["seed"] == seed].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone, rtol=1e-4, atol=1e-6)
        assert np.allclose(pairs.loc[pairs["seed"] == seed, "ches"], alone_pairs["ches"], rtol=1e-5)
    final = together[together["step"] == together["step"].max()]
    assert final.groupby("variant")["chosen_logp_change"].nunique().min() == 2  # the seeds' runs differ
