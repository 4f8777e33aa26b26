import copy

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import DPOConfig, EvalConfig, TrainConfig
from dpo_toolkit.core.data import PairSet, collate_pairs
from dpo_toolkit.core.dpo_train import dpo_batch_loss, train_dpo_ensemble
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator, pair_logps
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.studies.ches.drift_filter import drift_answer, drift_claims
from dpo_toolkit.studies.ches.measures import ches_filter
from dpo_toolkit.studies.ches.mitigation import (
    Variant,
    keep_masks,
    mitigation_claims,
    run_mitigations,
    summarize,
    variants,
)

FULL_BATCH = dict(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=3, batch_size=10_000, grad_clip=None, n_evals=3)


def _params(ensemble: Ensemble, i: int) -> list[torch.Tensor]:
    return [p[i].detach() for p in ensemble.params.values()]


def test_sft_term_adds_lambda_times_the_chosen_nll(tiny_model, tiny_pairs):
    train, _ = tiny_pairs
    reference = copy.deepcopy(tiny_model).requires_grad_(False)
    policies = Ensemble([copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)])
    loss_of = dpo_batch_loss(policies, train, reference, torch.tensor([[0.1], [0.1]]), None, torch.tensor([[0.0], [0.7]]))
    index = torch.arange(6)
    losses = loss_of(index)  # (2,)
    batch = collate_pairs(train, index.numpy())
    chosen, rejected = sequence_logps(tiny_model(batch.tokens), batch.tokens, batch.response_mask).chunk(2)
    ref_chosen, ref_rejected = pair_logps(reference, PairSet(train.prompt[:6], train.chosen[:6], train.rejected[:6]))
    dpo, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.1)
    assert losses[0].item() == pytest.approx(dpo.mean().item(), rel=1e-5)
    assert losses[1].item() == pytest.approx((dpo - 0.7 * chosen).mean().item(), rel=1e-5)


def test_a_zero_one_mask_trains_like_the_kept_subset(tiny_model, tiny_pairs):
    """Full-batch training: the masked member must follow exactly the run on the kept pairs alone."""
    train, _ = tiny_pairs
    reference = copy.deepcopy(tiny_model).requires_grad_(False)
    keep = np.zeros(len(train), dtype=bool)
    keep[::3] = True
    cfg = DPOConfig(**FULL_BATCH, beta=0.1)
    masked = Ensemble([copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)])
    weights = torch.stack([torch.ones(len(train)), torch.tensor(keep, dtype=torch.float32)])
    train_dpo_ensemble(masked, reference, train, [cfg, cfg], lambda p, betas: [{}] * len(p), False, pair_weights=weights)
    subset = PairSet(train.prompt[keep], train.chosen[keep], train.rejected[keep])
    alone = Ensemble([copy.deepcopy(tiny_model)])
    train_dpo_ensemble(alone, reference, subset, [cfg], lambda p, betas: [{}], False)

    def gap(i: int) -> float:
        return max((a - b).abs().max().item() for a, b in zip(_params(masked, i), _params(alone, 0), strict=True))

    assert gap(1) < 1e-3 < 1e-2 < gap(0)  # Adam turns float noise in near-zero gradients into ~1e-4 steps


def test_a_masked_loss_has_the_gradient_of_the_kept_pairs_mean(tiny_model, tiny_pairs):
    train, _ = tiny_pairs
    reference = copy.deepcopy(tiny_model).requires_grad_(False)
    keep = np.zeros(len(train), dtype=bool)
    keep[1::4] = True
    betas = torch.tensor([[0.1]])
    masked = Ensemble([copy.deepcopy(tiny_model)])
    loss = dpo_batch_loss(masked, train, reference, betas, torch.tensor(keep, dtype=torch.float32)[None])
    loss(torch.arange(len(train))).sum().backward()
    subset = PairSet(train.prompt[keep], train.chosen[keep], train.rejected[keep])
    alone = Ensemble([copy.deepcopy(tiny_model)])
    dpo_batch_loss(alone, subset, reference, betas)(torch.arange(int(keep.sum()))).sum().backward()
    for a, b in zip(masked.params.values(), alone.params.values(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_ensemble_options_are_validated_before_training(tiny_model, tiny_pairs):
    train, _ = tiny_pairs
    cfg = DPOConfig(**FULL_BATCH, beta=0.1)
    policies = Ensemble([copy.deepcopy(tiny_model)])
    with pytest.raises(ValueError, match="pair_weights"):
        train_dpo_ensemble(
            policies, tiny_model, train, [cfg], lambda p, betas: [{}], False, pair_weights=torch.ones(2, len(train))
        )
    with pytest.raises(ValueError, match="pair_weights"):
        train_dpo_ensemble(
            policies, tiny_model, train, [cfg], lambda p, betas: [{}], False, pair_weights=-torch.ones(1, len(train))
        )
    with pytest.raises(ValueError, match="sft_weights"):
        train_dpo_ensemble(policies, tiny_model, train, [cfg], lambda p, betas: [{}], False, sft_weights=[-1.0])


def test_variants_and_masks():
    runs = variants([0.25, 0.5], [1.0])
    assert [v.kind for v in runs] == ["all pairs", "CHES filter", "CHES filter", "SFT term"]
    assert [v.name for v in runs] == ["all pairs", "CHES top 25% removed", "CHES top 50% removed", "SFT term λ=1"]
    scores = np.array([5.0, -1.0, 3.0, 0.0, 2.0, 4.0, -3.0, 1.0])
    masks = keep_masks(scores, runs)
    assert masks.shape == (4, 8)
    assert masks[0].all() and masks[3].all()
    assert (masks[1].numpy() == ches_filter(scores, 0.25)).all() and masks[1].sum() == 6
    assert set(np.flatnonzero(masks[2].numpy() == 0)) == {0, 2, 4, 5}  # the four highest scores
    with pytest.raises(ValueError, match="drop_fraction"):
        Variant(drop_fraction=1.0)
    with pytest.raises(ValueError, match="sft_weight"):
        Variant(sft_weight=-0.1)
    with pytest.raises(ValueError, match="must not contain 0"):
        variants([0.0], [])


SEEDS = (0, 1, 2)


def _curves(final: dict[str, tuple], kinds: dict[str, str], seeds=SEEDS, reference_ood=0.1) -> pd.DataFrame:
    """Synthetic run_mitigations output: step 0 (the reference, OOD reference_ood) and a last step
    with the given (Δ log π(y+), OOD); each value one for every seed or a list of one per seed."""
    rows = []
    for i, seed in enumerate(seeds):
        for name, values in final.items():
            change, ood = (float(np.broadcast_to(v, len(seeds))[i]) for v in values)
            common = dict(seed=seed, variant=name, kind=kinds[name], drop_fraction=0.0, sft_weight=0.0, pairs_kept=10, kl=0.1,
                          accuracy=0.5)  # fmt: skip
            rows.append({**common, "step": 0, "chosen_logp_change": 0.0, "ood_rate": reference_ood})
            rows.append({**common, "step": 5, "chosen_logp_change": change, "ood_rate": ood})
    return pd.DataFrame(rows)


KINDS = {"all pairs": "all pairs", "f": "CHES filter", "f2": "CHES filter", "s": "SFT term"}
SHARES = [0.3, 0.25, 0.35]  # per seed, the share of C11's single pairs whose π(y+) fell
VARYING = {"all pairs": ([-1.0, -0.8, -1.2], [0.5, 0.55, 0.45]), "f": ([-0.2, -0.1, -0.3], [0.2, 0.25, 0.15]),
           "s": ([-0.5, -0.4, -0.6], 0.4)}  # fmt: skip
"""Seeds that differ, every difference the same sign in every seed and clear of its threshold."""


@pytest.mark.parametrize(
    ("final", "verdict"),
    [
        ({"all pairs": (-1.0, 0.5), "f": (-0.2, 0.2), "s": (-0.5, 0.4)}, "reproduced"),
        ({"all pairs": (-1.0, 0.5), "f": (-0.2, 0.45), "s": (0.3, 0.3)}, "partly"),
        ({"all pairs": (-1.0, 0.5), "f": (-1.5, 0.6), "s": (0.3, 0.3)}, "not reproduced"),
        # the filter lowers OOD but not the displacement itself: the old rule said partly
        ({"all pairs": (-1.0, 0.5), "f": (-1.5, 0.2), "s": (0.3, 0.3)}, "not reproduced"),
        # all-pairs DPO does not displace: nothing to mitigate (the old rule said reproduced)
        ({"all pairs": (0.5, 0.5), "f": (0.6, 0.2), "s": (0.3, 0.4)}, "untestable here"),
        # no variant answers out of distribution in any seed: an OOD tie is not 'better' (STRICT)
        ({"all pairs": (-1.0, 0.0), "f": (-0.2, 0.0), "s": (-0.5, 0.0)}, "partly"),
        (VARYING, "reproduced"),
    ],
)
def test_mitigation_verdicts(final, verdict):
    claims = mitigation_claims(_curves(final, KINDS))
    assert claims["claim_id"].tolist() == ["C12"]
    assert claims["verdict"].iloc[0] == verdict
    assert mitigation_claims(_curves(final, KINDS), displaced_share=SHARES)["verdict"].iloc[0] == verdict
    # with fewer than a tenth of single pairs displacing there is nothing for CHES to find
    few = mitigation_claims(_curves(final, KINDS), displaced_share=[0.03, 0.02, 0.04])
    assert few["verdict"].iloc[0] == "untestable here"


def test_mitigation_reads_each_seeds_best_filter_and_the_deciding_values():
    # f is the best filter in seeds 0 and 1, f2 in seed 2; each seed's best is at −0.2 (Δ) and 0.2 (OOD)
    final = {"all pairs": (-1.0, 0.5), "f": ([-0.2, -0.2, -2.0], [0.2, 0.2, 0.9]), "f2": ([-2.0, -2.0, -0.2], [0.9, 0.9, 0.2]),
             "s": (-0.5, 0.4)}  # fmt: skip
    row = mitigation_claims(_curves(final, KINDS), displaced_share=SHARES).iloc[0]
    # the deciding (first) check: each seed's best filter − all pairs, 0.8 in every seed
    assert (row["verdict"], row["n"], row["estimate"], row["ci_low"], row["ci_high"]) == ("reproduced", "3", "0.8", "0.8", "0.8")
    assert "each seed's best filter -0.200 ± 0.000" in row["our_value"]
    # partly: the filter loses to the SFT term on Δ log π(y+) by 0.1 in every seed; the first failing check decides
    partly = mitigation_claims(_curves({"all pairs": (-1.0, 0.5), "f": (-0.2, 0.2), "s": (-0.1, 0.4)}, KINDS)).iloc[0]
    assert (partly["verdict"], partly["estimate"]) == ("partly", "-0.1")


def test_mitigation_is_inconclusive_on_two_seeds_or_straddling_seeds():
    clear = {"all pairs": (-1.0, 0.5), "f": (-0.2, 0.2), "s": (-0.5, 0.4)}
    two = mitigation_claims(_curves(clear, KINDS, seeds=(0, 1)), displaced_share=SHARES[:2]).iloc[0]
    assert (two["verdict"], two["n"]) == ("inconclusive", "2")
    # the filter's gain over all pairs on Δ log π(y+): +0.8, −0.5, +0.8 (mean 0.367, interval across 0)
    straddling = {"all pairs": (-1.0, 0.5), "f": ([-0.2, -1.5, -0.2], 0.2), "s": (-1.8, 0.4)}
    row = mitigation_claims(_curves(straddling, KINDS)).iloc[0]
    assert row["verdict"] == "inconclusive" and float(row["estimate"]) == pytest.approx(1.1 / 3, abs=1e-3)
    assert "replicates would decide it" in row["our_value"]


@pytest.mark.parametrize(
    ("final", "verdict"),
    [
        ({"all pairs": (0, 0.5), "f": (0, 0.2)}, "reproduced"),  # drift 0.4 → 0.1
        ({"all pairs": (0, 0.5), "f": (0, 0.4)}, "partly"),  # 0.4 → 0.3
        ({"all pairs": (0, 0.5), "f": (0, 0.6)}, "not reproduced"),
        ({"all pairs": (0, 0.05), "f": (0, 0.0)}, "untestable here"),  # no drift to remove: the old rule said not reproduced
        ({"all pairs": (0, 0.3), "f": (0, 0.1)}, "untestable here"),  # OOD rose but stays below 50 %: not drift
        ({"all pairs": (0, 0.15), "f": (0, 0.1)}, "untestable here"),  # a rise of 5 points is not drift either
        # seeds that differ: drift 0.7, 0.8, 0.6 on all pairs, the filter leaves 0.2, 0.25, 0.15
        ({"all pairs": (0, [0.8, 0.9, 0.7]), "f": (0, [0.3, 0.35, 0.25])}, "reproduced"),
        # the best filter changes between seeds (f, f, f2); each seed's best leaves 0.1 of a 0.4 drift
        ({"all pairs": (0, 0.5), "f": (0, [0.2, 0.2, 0.5]), "f2": (0, [0.5, 0.5, 0.2])}, "reproduced"),
    ],
)
def test_drift_verdicts(final, verdict):
    claims = drift_claims(_curves(final, KINDS))
    assert claims["verdict"].iloc[0] == verdict


def test_drift_claim_decides_on_each_seeds_excess_drift():
    # excess = best filter's drift − ½ × all pairs' drift: 0.2 − 0.35, 0.25 − 0.4, 0.15 − 0.3 = −0.15 in every seed
    row = drift_claims(_curves({"all pairs": (0, [0.8, 0.9, 0.7]), "f": (0, [0.3, 0.35, 0.25])}, KINDS)).iloc[0]
    assert (row["verdict"], row["n"], row["estimate"], row["threshold"]) == ("reproduced", "3", "-0.15", "0")
    assert float(row["ci_high"]) == pytest.approx(-0.15)
    # partly: the filter removes 0.1 of a 0.4 drift in every seed; decided by the failing full check, excess +0.1
    partly = drift_claims(_curves({"all pairs": (0, 0.5), "f": (0, 0.4)}, KINDS)).iloc[0]
    assert (partly["verdict"], partly["estimate"]) == ("partly", "0.1")
    # untestable: the all-pairs final OOD (30 %) is below DRIFT_OOD in every seed; the precondition decides
    flat = drift_claims(_curves({"all pairs": (0, 0.3), "f": (0, 0.1)}, KINDS)).iloc[0]
    assert (flat["verdict"], flat["estimate"], flat["threshold"]) == ("untestable here", "0.3", "0.5")


def test_drift_claim_is_inconclusive_on_two_seeds_or_straddling_seeds():
    two = drift_claims(_curves({"all pairs": (0, 0.5), "f": (0, 0.2)}, KINDS, seeds=(0, 1))).iloc[0]
    assert (two["verdict"], two["n"]) == ("inconclusive", "2")
    # excess −0.1, +0.2, −0.1 (the filter leaves 0.1, 0.4, 0.1 of a 0.4 drift): interval across 0
    row = drift_claims(_curves({"all pairs": (0, 0.5), "f": (0, [0.2, 0.5, 0.2])}, KINDS)).iloc[0]
    assert row["verdict"] == "inconclusive" and float(row["estimate"]) == pytest.approx(0.0, abs=1e-9)
    # the precondition straddles: all-pairs final OOD 0.9, 0.2, 0.9 (mean 0.67, interval across 0.5)
    pre = drift_claims(_curves({"all pairs": (0, [0.9, 0.2, 0.9]), "f": (0, 0.1)}, KINDS)).iloc[0]
    assert pre["verdict"] == "inconclusive" and "precondition" in pre["our_value"]


def test_summarize_takes_the_last_step_and_the_spread_over_seeds():
    curves = _curves({"all pairs": (-1.0, 0.5), "f": (-0.2, 0.2)}, KINDS, seeds=(0, 1))
    curves.loc[(curves["seed"] == 1) & (curves["step"] == 5) & (curves["variant"] == "f"), "chosen_logp_change"] = -0.4
    table = summarize(curves).set_index("variant")
    assert table.loc["f", "chosen_logp_change_mean"] == pytest.approx(-0.3)
    assert table.loc["f", "chosen_logp_change_std"] == pytest.approx(0.1)
    assert table.index.tolist() == ["all pairs", "f"]


def test_run_mitigations_end_to_end_and_cached(tiny_model_cfg, tiny_data_cfg, tmp_path):
    sft = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=2, batch_size=16, grad_clip=None, n_evals=1)
    dpo = DPOConfig(optimizer="rmsprop", lr=1e-3, weight_decay=0.0, epochs=1, batch_size=16, grad_clip=None, n_evals=2, beta=0.1)
    runs = variants([0.5], [1.0])
    curves, scores = run_mitigations(tiny_data_cfg, tiny_model_cfg, sft, dpo, EvalConfig(kl_samples=2), runs, [0], tmp_path)
    assert set(curves["variant"]) == {"all pairs", "CHES top 50% removed", "SFT term λ=1"}
    start = curves[curves["step"] == 0]
    assert np.allclose(start["chosen_logp_change"], 0, atol=1e-5) and np.allclose(start["kl"], 0, atol=1e-5)
    kept = curves.groupby("variant")["pairs_kept"].first()
    assert kept["CHES top 50% removed"] == len(scores) - round(len(scores) / 2) and kept["all pairs"] == len(scores)
    again, _ = run_mitigations(tiny_data_cfg, tiny_model_cfg, sft, dpo, EvalConfig(kl_samples=2), runs, [0], tmp_path)
    pd.testing.assert_frame_equal(curves, again)


def test_evaluator_reports_the_change_of_the_preferred_log_prob(tiny_model, tiny_pairs, tiny_data_cfg):
    _, test = tiny_pairs
    evaluator = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=2), reference=tiny_model)
    same = evaluator(tiny_model, betas=0.1)
    assert same["chosen_logp_change"] == pytest.approx(0, abs=1e-6) and same["displaced"] == 0
    moved = copy.deepcopy(tiny_model)
    with torch.no_grad():
        moved.unembed.bias.add_(torch.linspace(-1, 1, moved.unembed.bias.numel()))
    chosen_before, _ = pair_logps(tiny_model, test)
    chosen_after, _ = pair_logps(moved, test)
    row = evaluator(moved, betas=0.1)
    assert row["chosen_logp_change"] == pytest.approx(float((chosen_after - chosen_before).mean()), abs=1e-5)
    assert row["displaced"] == pytest.approx(float((chosen_after - chosen_before < -1e-4).double().mean()))


def test_drift_answer_names_the_case():
    assert "does not rise here" in drift_answer(_curves({"all pairs": (0, 0.05), "f": (0, 0.0)}, KINDS))
    answer = drift_answer(_curves({"all pairs": (0, 0.5), "f": (0, 0.2)}, KINDS))
    assert "+0.400" in answer and "(f in 3 of 3 seeds) +0.100" in answer
    assert "reduces the OOD drift of the grokking setup" in answer
    named = drift_answer(_curves({"all pairs": (0, 0.5), "f": (0, 0.6)}, KINDS), "the drifting recipe")
    assert "does not reduce the OOD drift of the drifting recipe" in named
    claim = drift_claims(_curves({"all pairs": (0, 0.5), "f": (0, 0.6)}, KINDS), "the drifting recipe").iloc[0]
    assert claim["statement"].endswith("OOD drift of the drifting recipe.") and claim["verdict"] == "not reproduced"
    # one seed decides nothing, and the answer says so rather than reading the seed
    one = drift_answer(_curves({"all pairs": (0, 0.5), "f": (0, 0.2)}, KINDS, seeds=(0,)))
    assert "is not decided by these 1 seed(s)" in one
    switching = drift_answer(_curves({"all pairs": (0, 0.5), "f": (0, [0.2, 0.2, 0.5]), "f2": (0, [0.5, 0.5, 0.2])}, KINDS))
    assert "(f in 2 of 3 seeds, f2 in 1) +0.100" in switching


def test_mitigation_seeds_as_members_equal_one_run_per_seed(tiny_data_cfg, tiny_model_cfg, tmp_path):
    """Seeds [0, 1] as members of one ensemble (each against its own reference, its own CHES filter
    and batch order) give each seed's curves and CHES alone, to float tolerance."""
    sft = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=2, batch_size=16, grad_clip=None, n_evals=1)
    dpo = DPOConfig(optimizer="rmsprop", lr=1e-3, weight_decay=0.0, epochs=1, batch_size=16, grad_clip=None, n_evals=2, beta=0.1)
    runs = variants([0.5], [1.0])
    together = run_mitigations(tiny_data_cfg, tiny_model_cfg, sft, dpo, EvalConfig(kl_samples=2), runs, [0, 1], tmp_path / "both")
    alone = [run_mitigations(tiny_data_cfg, tiny_model_cfg, sft, dpo, EvalConfig(kl_samples=2), runs, [s], tmp_path / f"{s}")
             for s in (0, 1)]  # fmt: skip
    for i in (0, 1):  # curves, then CHES scores
        expected = pd.concat([one[i] for one in alone], ignore_index=True)
        numbers = expected.select_dtypes("number").columns.drop(["accuracy", "rewards/accuracies"], errors="ignore")
        assert list(together[i].columns) == list(expected.columns)
        pd.testing.assert_frame_equal(together[i][numbers], expected[numbers], rtol=1e-4, atol=1e-5)
    final = together[0][together[0]["step"] == together[0]["step"].max()]
    assert final.groupby("seed")["loss"].mean().nunique() == 2  # the replicates did differ
