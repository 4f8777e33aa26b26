import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from dpo_toolkit.core.config import EvalConfig
from dpo_toolkit.core.data import VOCAB, make_pairs
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.metrics import group_weight_deltas, weight_delta
from dpo_toolkit.core.model import PARAM_GROUPS, build_model, param_group
from dpo_toolkit.studies.surgery import (
    ContrastExample,
    contrast_example,
    matched_kl_ratio,
    pick_contrast_prompt,
    surgery_claims,
    surgery_curves,
    transplant,
)
from dpo_toolkit.studies.surgery import contrast as surgery_contrast


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(state_a, state_b):
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.fixture
def pair(tiny_model_cfg):
    return build_model(tiny_model_cfg, seed=0), build_model(tiny_model_cfg, seed=1)


def test_swapping_every_group_gives_the_donor_and_none_the_original(pair):
    model, donor = pair
    assert _same(transplant(model, donor, PARAM_GROUPS).state_dict(), donor.state_dict())
    assert _same(transplant(model, donor, []).state_dict(), model.state_dict())


def test_swapping_attention_changes_exactly_the_attention_parameters(pair):
    model, donor = pair
    patient = dict(transplant(model, donor, ["attention"]).named_parameters())
    for name, p in model.named_parameters():
        source = dict(donor.named_parameters())[name] if name.startswith("attn.") else p
        assert torch.equal(patient[name], source), name


def test_surgery_leaves_both_inputs_untouched(pair):
    model, donor = pair
    before_model, before_donor = _state(model), _state(donor)
    patient = transplant(model, donor, ["attention", "mlp"])
    with torch.no_grad():
        for p in patient.parameters():
            p.add_(1.0)  # the result shares no storage with its inputs
    assert _same(model.state_dict(), before_model)
    assert _same(donor.state_dict(), before_donor)


def test_groups_partition_the_parameters(tiny_model):
    for name, _ in tiny_model.named_parameters():
        owners = [g for g, prefixes in PARAM_GROUPS.items() if name.startswith(prefixes)]
        assert owners == [param_group(name)], name  # exactly one group each
    assert {param_group(n) for n, _ in tiny_model.named_parameters()} == set(PARAM_GROUPS)


def test_unknown_group_and_mismatched_models_are_rejected(pair, tiny_model_cfg):
    model, donor = pair
    with pytest.raises(ValueError, match="groups must be drawn from"):
        transplant(model, donor, ["attn"])
    other = build_model(type(tiny_model_cfg)(d_model=16, n_heads=2, d_mlp=32, n_ctx=8), seed=0)
    with pytest.raises(ValueError, match="one architecture"):
        transplant(model, other, ["attention"])


def test_group_deltas_of_an_ensemble_match_each_member(pair, tiny_model):
    model, donor = pair
    deltas = group_weight_deltas(Ensemble([model, donor]).params, dict(tiny_model.named_parameters()))
    for i, m in enumerate([model, donor]):
        for g in PARAM_GROUPS:
            assert deltas[g][i].item() == pytest.approx(weight_delta(m, tiny_model, g), rel=1e-9)


def test_surgery_curves_on_saved_checkpoints(pair, tiny_pairs, tiny_data_cfg, tmp_path):
    reference, donor = pair
    moved = copy.deepcopy(reference)
    with torch.no_grad():
        moved.attn.W_O.weight.add_(0.3)  # change since the reference: attention only
        moved.mlp[0].bias.add_(0.4)  # … and the MLP
    paths = {}
    for name, m in {"ref": reference, "moved": moved, "donor": donor}.items():
        paths[name] = str(tmp_path / f"{name}.pt")
        torch.save(m.state_dict(), paths[name])
    _, test = tiny_pairs
    evaluator = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=2), reference=reference)
    df = surgery_curves([paths["ref"], paths["moved"]], [paths["ref"], paths["donor"]], [0, 5], reference, evaluator, 0.1)
    assert len(df) == 6 and set(df["variant"]) == {"A", "attention", "non-attention"}
    at0 = df[df["step"] == 0]
    assert np.allclose(at0["kl"], 0.0, atol=1e-6)  # A = B = reference at step 0: every surgery is the reference
    a5 = df[(df["step"] == 5) & (df["variant"] == "A")].iloc[0]
    assert a5["weight_delta"] == pytest.approx(weight_delta(moved, reference), rel=1e-9)
    share = weight_delta(moved, reference, "attention") / weight_delta(moved, reference)
    assert a5["attention_share_step"] == pytest.approx(share, rel=1e-9)
    assert a5["attention_share_from_reference"] == pytest.approx(share, rel=1e-9)
    assert np.isnan(df.loc[df["step"] == 0, "attention_share_step"]).all()
    swapped = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=2), reference=reference)(
        transplant(moved, donor, ["attention"]), betas=0.1
    )
    row = df[(df["step"] == 5) & (df["variant"] == "attention")].iloc[0]
    assert row["kl"] == pytest.approx(swapped["kl"], rel=1e-4, abs=1e-6)
    assert row["ood_rate"] == pytest.approx(swapped["ood_rate"])


def test_matched_kl_ratio_on_known_curves():
    wd = np.array([0.0, 1.0, 2.0, 3.0])
    low = pd.DataFrame({"step": [0, 1, 2, 3], "weight_delta": wd, "kl": 2 * wd})
    high = pd.DataFrame({"step": [0, 1, 2, 3], "weight_delta": wd, "kl": wd})
    assert matched_kl_ratio(low, high) == pytest.approx(2.0)
    apart = high.assign(weight_delta=wd + 10)
    assert np.isnan(matched_kl_ratio(low, apart))


def test_contrast_prompt_is_ood_for_a_and_in_window_for_b():
    prompts = np.array([10, 20, 30, 40])
    a = [10, None, 99, 45]
    b = [10, 23, 30, 40]
    assert pick_contrast_prompt(prompts, a, b, window=2) == 30  # 20 also qualifies but B is 3 off there (> W)
    assert pick_contrast_prompt(prompts, a, [10, 21, 31, 40], window=2) == 40  # B exact at 40, 1 off at 30
    with pytest.raises(ValueError, match="no test prompt"):
        pick_contrast_prompt(prompts, b, b, window=2)


SEEDS = (0, 1, 2)
JITTER = (-0.01, 0.0, 0.01)  # per seed: three replicates that differ a little, as trained seeds do


def _surgery_inputs(a_ood: float, attention_kl: float, rest_kl: float, shares: list[float], b_ood: float = 0.02,
                    gap: float = 3.0, attention_ood: float = 0.0, seeds=SEEDS):  # fmt: skip
    """Per seed j (jitter e = JITTER[j]): a two-β sweep with a KL gap of gap + 10e at matched
    WeightDelta, and surgery curves at steps 0, 5, 10 where A's last checkpoint has OOD
    a_ood · (1 + 10e) and KL 1, the attention swap KL attention_kl + e and OOD attention_ood
    above A's, the rest swap KL rest_kl + e; A's attention share of each step's change is
    `shares` + e; B ends at OOD b_ood."""
    sweep = pd.DataFrame(
        [{"seed": seed, "beta": b, "step": s, "weight_delta": s, "kl": s * (gap + 10 * JITTER[seed] if b == 0.01 else 1.0),
          "ood_rate": (a_ood if b == 0.01 else b_ood) if s == 10 else 0.0}
         for seed in seeds for b in (0.01, 1.0) for s in range(0, 11, 5)]
    )  # fmt: skip
    rows = []
    for seed in seeds:
        e = JITTER[seed]
        kl = {"A": 1.0, "attention": attention_kl + e, "non-attention": rest_kl + e}
        ood = a_ood * (1 + 10 * e)
        for v in kl:
            for s in (0, 5, 10):
                rows.append({"seed": seed, "variant": v, "step": s, "kl": kl[v] * s / 10,
                             "ood_rate": ood + (attention_ood if v == "attention" else 0.0) if s == 10 else 0.0,
                             "attention_share_step": np.nan if s == 0 else shares[s // 5 - 1] + e})  # fmt: skip
    return sweep, pd.DataFrame(rows), {"attention": 65, "mlp": 30, "embed": 9}


@pytest.mark.parametrize(
    ("a_ood", "attention_kl", "rest_kl", "shares", "c8", "c9"),
    [
        # attention swap KL ratios 0.19–0.21 (≤ 0.5), rest 1.99–2.01; largest shares 0.24–0.26 (≤ 0.35)
        (0.3, 0.2, 2.0, [0.2, 0.25], "reproduced", "reproduced"),
        # only the null half holds (the rest swap does not tame): the old rule said partly
        (0.3, 0.9, 2.0, [0.2, 0.25], "not reproduced", "reproduced"),
        # A never answers OOD: nothing to tame (the old rule said reproduced)
        (0.0, 0.2, 2.0, [0.2, 0.25], "untestable here", "reproduced"),
        # attention's share below its share of parameters but far above 25 %: the old rule said partly
        (0.3, 0.2, 2.0, [0.47, 0.5], "reproduced", "not reproduced"),
    ],
)
def test_surgery_verdicts(a_ood, attention_kl, rest_kl, shares, c8, c9):
    claims = surgery_claims(*_surgery_inputs(a_ood, attention_kl, rest_kl, shares)).set_index("claim_id")
    assert claims.loc["C7", "verdict"] == "reproduced"
    assert (claims.loc["C8", "verdict"], claims.loc["C9", "verdict"]) == (c8, c9)
    assert f"{a_ood:.1%}" in claims.loc["C8", "precondition"]
    assert set(claims["n"]) == {"3"}


def test_c7_interval_is_the_student_t_interval_of_the_per_seed_ratios():
    claims = surgery_claims(*_surgery_inputs(0.3, 0.2, 2.0, [0.2, 0.25])).set_index("claim_id")  # ratios 2.9, 3, 3.1
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)  # 0.248
    c7 = claims.loc["C7"]
    assert (float(c7["estimate"]), float(c7["threshold"])) == pytest.approx((3.0, 2.0))
    assert (float(c7["ci_low"]), float(c7["ci_high"])) == pytest.approx((3.0 - half, 3.0 + half), abs=1e-3)
    assert float(claims.loc["C9", "estimate"]) == pytest.approx(0.25)  # the mean of per-seed largest shares


def test_c8_fails_when_the_attention_swap_raises_ood():
    claims = surgery_claims(*_surgery_inputs(0.3, 0.2, 2.0, [0.2, 0.25], attention_ood=0.1)).set_index("claim_id")
    assert claims.loc["C8", "verdict"] == "not reproduced"  # KL tamed, but OOD rises by 0.1 in every seed
    assert "OOD(A') − OOD(A), attention swapped 0.1" in claims.loc["C8", "our_value"]


def test_straddling_intervals_and_two_seeds_are_inconclusive():
    # C7: ratios 1.9, 2, 2.1 around 2; C8: attention swap ratios 0.49, 0.5, 0.51 around 0.5;
    # C9: largest shares 0.34, 0.35, 0.36 around 0.35
    claims = surgery_claims(*_surgery_inputs(0.3, 0.5, 2.0, [0.2, 0.35], gap=2.0)).set_index("claim_id")
    assert claims["verdict"].tolist() == ["inconclusive"] * 3
    two = surgery_claims(*_surgery_inputs(0.3, 0.2, 2.0, [0.2, 0.25], seeds=(0, 1))).set_index("claim_id")
    assert two["verdict"].tolist() == ["inconclusive"] * 3  # however clear: two seeds decide nothing
    assert "fewer than 3 replicates" in two.loc["C7", "our_value"]


def test_c8_is_untestable_when_b_leaves_the_distribution_too():
    claims = surgery_claims(*_surgery_inputs(0.9, 0.2, 2.0, [0.2, 0.25], b_ood=0.8)).set_index("claim_id")
    assert claims.loc["C8", "verdict"] == "untestable here"  # B's attention is no in-distribution donor
    assert "B 80.0%" in claims.loc["C8", "precondition"]
    assert claims.loc["C8", "estimate"] == "0.8" and claims.loc["C8", "threshold"] == "0.15"  # B's check decided


def test_c9_is_partly_when_the_typical_share_is_small_but_not_every_one():
    claims = surgery_claims(*_surgery_inputs(0.3, 0.2, 2.0, [0.2, 0.25])).set_index("claim_id")
    assert claims.loc["C9", "verdict"] == "reproduced"
    sweep, curves, counts = _surgery_inputs(0.3, 0.2, 2.0, [0.2, 0.25])
    curves = pd.concat([curves, curves[curves["step"] == 10].assign(step=15, attention_share_step=0.6)], ignore_index=True)
    curves = pd.concat([curves, curves[curves["step"] == 10].assign(step=20, attention_share_step=0.3)], ignore_index=True)
    # per seed shares 0.2 + e, 0.25 + e, 0.6, 0.3: largest 0.6 (> 0.35), medians 0.27, 0.275, 0.28 (≤ 0.35)
    claims = surgery_claims(sweep, curves, counts).set_index("claim_id")
    assert claims.loc["C9", "verdict"] == "partly"
    assert float(claims.loc["C9", "estimate"]) == pytest.approx(0.6)


@pytest.mark.parametrize("apart", [(0, 1, 2), (1,)])
def test_c7_is_untestable_when_the_weight_delta_ranges_do_not_overlap(apart):
    sweep, curves, counts = _surgery_inputs(0.3, 0.2, 2.0, [0.2, 0.25])
    far = (sweep["beta"] == 1.0) & sweep["seed"].isin(apart)
    sweep.loc[far, "weight_delta"] += 100  # the large-β run moves far more: no matched WeightDelta
    claims = surgery_claims(sweep, curves, counts).set_index("claim_id")
    assert claims.loc["C7", "verdict"] == "untestable here"  # the old rule said not reproduced (a NaN ratio)
    assert f"{3 - len(apart)} of 3" in claims.loc["C7", "precondition"]


def test_the_surgery_study_trains_a_and_b_and_operates_at_each_of_their_checkpoints(tiny_model_cfg, tiny_data_cfg, tmp_path):
    """surgery_study equals its parts: the sweep of run_sft_then_dpo and surgery_curves on the kept weights."""
    from dpo_toolkit.core.config import DPOConfig, TrainConfig
    from dpo_toolkit.recipes.sft_then_dpo import run_sft_then_dpo, sft_reference
    from dpo_toolkit.studies.surgery import surgery_study

    sft = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=2, batch_size=8, grad_clip=None, n_evals=1)
    dpo = DPOConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=1, batch_size=8, grad_clip=None, n_evals=2)
    eval_cfg = EvalConfig(kl_samples=2)
    sweep, curves = surgery_study(tiny_data_cfg, tiny_model_cfg, sft, dpo, eval_cfg, [0.1, 1.0], [0, 1], 0.1, 1.0, tmp_path)
    assert set(curves["seed"]) == {0, 1} and set(curves["variant"]) == {"A", "attention", "non-attention"}
    assert sorted(curves["step"].unique()) == sorted(sweep["step"].unique())
    runs = run_sft_then_dpo(
        tiny_data_cfg, tiny_model_cfg, sft, dpo, eval_cfg, [0.1, 1.0], [0, 1], tmp_path, keep_betas=[0.1, 1.0]
    )
    one = runs[(runs["phase"] == "dpo") & (runs["seed"] == 1)].sort_values("step")
    reference, _ = sft_reference(tiny_data_cfg, tiny_model_cfg, sft, eval_cfg, 1, tmp_path)
    evaluator = Evaluator(make_pairs(tiny_data_cfg)[1], tiny_data_cfg, eval_cfg, reference=reference)
    a, b = (one[one["beta"] == beta] for beta in (0.1, 1.0))
    expected = surgery_curves(a["weights"].tolist(), b["weights"].tolist(), a["step"].tolist(), reference, evaluator, 0.1)
    mine = curves[curves["seed"] == 1].drop(columns="seed").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, expected)


# ---- Park Fig. 3 (left): the contrast example ------------------------------------------

NOT_FOUND = "no test prompt where A answers OOD and B answers in the window"


def test_the_contrast_report_lists_the_notes_then_both_answers():
    labels = {"A (β=0.01)": list("30=57."), "B (β=1)": list("30=31.")}
    example = ContrastExample(1, 30, {}, labels, (f"seed 0: {NOT_FOUND}",))
    assert example.answer("B (β=1)") == "31."
    assert example.report() == f"seed 0: {NOT_FOUND}\nseed 1, prompt 30: A answers '57.', B answers '31.'"
    assert ContrastExample(None, None, {}, {}, (f"seed 0: {NOT_FOUND}", f"seed 1: {NOT_FOUND}")).report() == (
        f"seed 0: {NOT_FOUND}\nseed 1: {NOT_FOUND}"
    )
    assert ContrastExample(None, None, {}, {}).report() == ""  # no seed searched: nothing to print


def _contrast_sweep(tiny_model_cfg, tmp_path):
    """A two-β sweep of seeds 0–2 whose last checkpoints (step 2) are saved tiny models, keyed by
    (seed, β); step 1 and every checkpoint of seed 2 point at files that do not exist."""
    models, rows = {}, []
    for seed in (0, 1, 2):
        for k, beta in enumerate((0.01, 1.0)):
            path = tmp_path / f"s{seed}-b{beta}.pt"
            if seed < 2:
                models[seed, beta] = build_model(tiny_model_cfg, seed=10 * seed + k)
                torch.save(models[seed, beta].state_dict(), path)
            rows += [{"seed": seed, "beta": beta, "step": 2, "weights": str(path)},
                     {"seed": seed, "beta": beta, "step": 1, "weights": str(tmp_path / "missing.pt")}]  # fmt: skip
    return pd.DataFrame(rows), models


def _scripted_answers(monkeypatch, script):
    """Make the study's greedy answers come from `script` in call order; returns the policies asked."""
    asked = []

    def answers(policy, prompts):
        asked.append(policy)
        return script[len(asked) - 1]

    monkeypatch.setattr(surgery_contrast, "greedy_answers", answers)
    return asked


def test_the_contrast_example_is_the_first_seed_with_a_prompt_and_stops_there(tiny_model_cfg, tmp_path, monkeypatch):
    sweep, models = _contrast_sweep(tiny_model_cfg, tmp_path)
    prompts = np.array([10, 20, 30, 40])
    asked = _scripted_answers(monkeypatch, [
        [10, 20, 30, 40], [10, 20, 30, 40],  # seed 0: A is never OOD
        [10, 20, 50, 40], [10, 20, 31, 40],  # seed 1: A OOD at 30 (|50 − 30| > 2), B 1 off there
    ])  # fmt: skip
    example = contrast_example(sweep, prompts, [0, 1, 2], 0.01, 1.0, 2, tiny_model_cfg)  # seed 2 cannot be loaded
    assert (example.seed, example.prompt) == (1, 30)
    assert example.notes == (f"seed 0: {NOT_FOUND}",)
    # A then B of each seed, from the last checkpoint (step 1's file does not exist)
    for policy, key in zip(asked, [(0, 0.01), (0, 1.0), (1, 0.01), (1, 1.0)], strict=True):
        assert _same(policy.state_dict(), models[key].state_dict()), key
    assert list(example.patterns) == list(example.labels) == ["A (β=0.01)", "B (β=1)"]
    for name, beta in zip(example.labels, (0.01, 1.0), strict=True):
        labels = example.labels[name]
        assert labels[:3] == ["3", "0", "="]  # the prompt, then the model's own greedy response
        tokens = torch.tensor([[VOCAB.index(c) for c in labels]])
        with torch.no_grad():
            _, pattern = models[1, beta].eval()(tokens, return_pattern=True)  # seed 1's model, on these tokens
        assert example.patterns[name].shape == (tiny_model_cfg.n_heads, len(labels), len(labels))
        np.testing.assert_array_equal(example.patterns[name], pattern[0].numpy())
    assert example.report().splitlines() == [
        f"seed 0: {NOT_FOUND}",
        f"seed 1, prompt 30: A answers {''.join(example.labels['A (β=0.01)'][3:])!r}, "
        f"B answers {''.join(example.labels['B (β=1)'][3:])!r}",
    ]


def test_without_a_contrast_prompt_every_seed_gets_a_note(tiny_model_cfg, tmp_path, monkeypatch):
    sweep, _ = _contrast_sweep(tiny_model_cfg, tmp_path)
    _scripted_answers(monkeypatch, [[10, 20], [10, 20], [None, 20], [None, None]])  # B never in the window where A is OOD
    example = contrast_example(sweep, np.array([10, 20]), [0, 1], 0.01, 1.0, 2, tiny_model_cfg)
    assert (example.seed, example.prompt, example.patterns, example.labels) == (None, None, {}, {})
    assert example.report() == f"seed 0: {NOT_FOUND}\nseed 1: {NOT_FOUND}"
