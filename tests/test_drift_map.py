"""The drift map: its design, the drift rule and per-cell fractions on hand-made curves, the
mechanism table, the claims' verdicts, and its runs against brute force and separate runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.claims import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED, UNTESTABLE
from dpo_toolkit.core.config import ConfigError, DataConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.core.data import END, encode_prompt, encode_response, make_pairs
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.evidence import mean_interval
from dpo_toolkit.core.exact import enumerate_responses, is_aligned
from dpo_toolkit.core.generate import greedy_answers
from dpo_toolkit.core.losses import sequence_logps
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.drift_map import analysis
from dpo_toolkit.studies.drift_map.claims import map_claims
from dpo_toolkit.studies.drift_map.design import GRID, Recipe, grid, one_at_a_time
from dpo_toolkit.studies.drift_map.runs import DriftEvaluator, MapSetup, run_recipes, training_subset

# ---- the design --------------------------------------------------------------------


def test_recipes_validate_themselves_and_group_by_schedule():
    with pytest.raises(ConfigError, match="lr"):
        Recipe("adam", 0.0, 0.1)
    with pytest.raises(ConfigError, match="optimizer"):
        Recipe("lion", 1e-3, 0.1)
    with pytest.raises(ConfigError, match="reference"):
        Recipe("adam", 1e-3, 0.1, reference="dpo")
    with pytest.raises(ConfigError, match="train_size"):
        Recipe("adam", 1e-3, 0.1, train_size=0)
    a, b = Recipe("rmsprop", 5e-5, 0.1), Recipe("rmsprop", 5e-4, 1.0, weight_decay=0.1)
    assert a.schedule == b.schedule  # lr, β and weight decay may differ within one ensemble
    assert a.schedule != Recipe("rmsprop", 5e-5, 0.1, batch_size=64).schedule
    assert a.label == "rmsprop lr=5e-05 β=0.1 b16 3ep"


def test_the_grid_gives_sgd_its_own_rates_and_the_arms_change_one_knob_each():
    recipes = grid(["adam", "sgd"], [1e-4, 1e-3], [0.1], [0.01, 0.1, 1.0], 16, 3)
    assert len(recipes) == 2 * 3 + 1 * 3
    assert {r.lr for r in recipes if r.optimizer == "sgd"} == {0.1}
    base = recipes[0]
    arms = one_at_a_time(base, [16, 64], [0.1], 10, [480], ["kl_sweep", "grokking"])
    # batch 16 and the kl_sweep reference are the base's own values, so they add no arm
    assert [(r.arm, r.batch_size, r.weight_decay, r.epochs, r.train_size, r.reference) for r in arms] == [
        ("batch size", 64, 0.0, 3, None, "kl_sweep"),
        ("weight decay", 16, 0.1, 3, None, "kl_sweep"),
        ("horizon", 16, 0.0, 10, None, "kl_sweep"),
        ("training set", 16, 0.0, 3, 480, "kl_sweep"),
        ("reference", 16, 0.0, 3, None, "grokking"),
    ]
    for r in arms:  # exactly one knob differs from the base
        changed = [
            f for f in ("batch_size", "weight_decay", "epochs", "train_size", "reference") if getattr(r, f) != getattr(base, f)
        ]
        assert len(changed) == 1 and (r.optimizer, r.lr, r.beta) == (base.optimizer, base.lr, base.beta)


def test_a_training_subset_has_its_size_and_depends_on_the_seed(tiny_pairs):
    train = tiny_pairs[0]
    assert training_subset(train, None, 0) is train
    a, b, c = training_subset(train, 10, 0), training_subset(train, 10, 0), training_subset(train, 10, 1)
    assert len(a) == 10 and np.array_equal(a.chosen, b.chosen) and not np.array_equal(a.chosen, c.chosen)
    with pytest.raises(ValueError, match="exceeds"):
        training_subset(train, len(train) + 1, 0)


# ---- drift on hand-made curves -----------------------------------------------------

RECIPES = {
    "a": Recipe("rmsprop", 5e-5, 0.1),
    "a01": Recipe("rmsprop", 5e-5, 0.01),
    "a03": Recipe("rmsprop", 5e-5, 0.3),
    "a1": Recipe("rmsprop", 5e-5, 1.0),
    "b": Recipe("adam", 1e-3, 0.1),
    "c": Recipe("sgd", 1.0, 0.1, arm="horizon"),
}


def _curves(ood: dict[tuple[str, int], list[float]], reference_ood: float = 0.02) -> pd.DataFrame:
    """Curves at epochs 0, 0.5, 1, 2, 3 whose greedy OOD rate is given per (recipe, seed) at epochs 1–3;
    at epoch 0.5, a first checkpoint still at the reference's OOD (so that no hand-made drift is a
    jump, which ``core.drift`` counts as a collapse). In runs that end at ≥ 50 % OOD both log-probs
    fall; in the others log π(y_w) rises."""
    rows = []
    for (name, seed), values in ood.items():
        recipe = RECIPES[name]
        falls = values[-1] >= 0.5
        for step, value in zip([0, 0.5, 1, 2, 3], [reference_ood, reference_ood, *values], strict=True):
            rows.append({**dataclasses.asdict(recipe), "train_size": 100, "label": recipe.label, "seed": seed, "step": step,
                         "epoch": float(step), "loss": 0.6, "ood_rate": value, "ood_mass": min(1.0, value + 0.1),
                         "chosen_logp": -1.0 - step if falls else -1.0 + 0.1 * step, "rejected_logp": -1.5 - 2 * step,
                         "accuracy": 0.5 + 0.1 * step, "margin": float(step), "kl": 0.1 * step,
                         "ordering": 0.8 if value >= 0.5 else 0.1})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_drift_rule_at_its_thresholds():
    ood = np.array([0.5, 0.49, 0.9, 0.55, 0.6])
    reference = np.array([0.0, 0.0, 0.85, 0.45, 0.5])
    assert analysis.drifted(ood, reference).tolist() == [True, False, False, True, True]


def test_cell_drift_fractions_against_a_hand_made_table():
    curves = _curves({
        ("a", 0): [0.1, 0.6, 0.7],   # drifts
        ("a", 1): [0.1, 0.2, 0.3],   # does not
        ("a", 2): [0.7, 0.9, 0.4],   # peaked, came back: not drifted at the end
        ("b", 0): [0.3, 0.5, 0.55],  # drifts
        ("b", 1): [0.45, 0.6, 0.8],  # drifts
    })  # fmt: skip
    runs = analysis.outcomes(curves)
    table = analysis.cell_table(runs).set_index("label")
    assert (runs["collapse"] == "").all() and (table["collapsed"] == 0).all()
    # the continuous outcome: OOD change against each seed's reference (0.02), mean over seeds with its interval
    a_changes = [0.7 - 0.02, 0.3 - 0.02, 0.4 - 0.02]
    assert table.loc[RECIPES["a"].label, "ood_change_mean"] == pytest.approx(np.mean(a_changes))
    interval = mean_interval(a_changes)
    assert (table.loc[RECIPES["a"].label, "ood_change_low"], table.loc[RECIPES["a"].label, "ood_change_high"]) == (
        pytest.approx(interval.low),
        pytest.approx(interval.high),
    )
    assert table.loc[RECIPES["a"].label, "rose"] == 3 and table.loc[RECIPES["b"].label, "rose"] == 2
    a, b = RECIPES["a"].label, RECIPES["b"].label
    assert table.loc[a, "drifted"] == 1 and table.loc[a, "seeds"] == 3
    assert table.loc[a, "drift_fraction"] == pytest.approx(1 / 3)
    assert table.loc[a, "ood_mean"] == pytest.approx((0.7 + 0.3 + 0.4) / 3)
    assert table.loc[a, "ood_sd"] == pytest.approx(np.std([0.7, 0.3, 0.4]))
    assert table.loc[b, "drift_fraction"] == 1.0
    peak = runs.set_index(["label", "seed"]).loc[(a, 2), "peak_ood"]
    assert peak == 0.9
    # at a shorter horizon the same runs are read at their epoch-1 and epoch-2 checkpoints
    horizon = analysis.horizon_table(curves, a, [1, 2, 3]).set_index("epochs")
    assert horizon["drifted"].tolist() == [1, 2, 1]
    best, near_zero = analysis.drifting_recipe(table.reset_index())
    assert best["label"] == b and near_zero


def test_the_regime_summary_names_the_paper_recipe_and_where_drift_appears():
    curves = _curves({("a", s): [0.1, 0.1, 0.1] for s in range(3)} | {("b", s): [0.6, 0.7, 0.8] for s in range(3)})
    text = analysis.regime_summary(analysis.cell_table(analysis.outcomes(curves)))
    assert "**The paper's recipe as written does not drift here**: 0 of its 3 runs" in text
    assert "- **adam** drifts in more than half its seeds at lr 0.001, every β (3/3)." in text
    assert "- **rmsprop**: no cell drifts in more than half its seeds (at most 0 of 3)." in text
    # the continuous reading: rmsprop's cell rose by 0.1 − 0.02 = 8 points in every seed (below 10); adam's by 78
    assert "- **adam** never collapses in most seeds; rises ≥ 10 points, clear of zero, at lr 0.001 (β 0.1 (+78))." in text
    assert "- **rmsprop** never collapses in most seeds; rises ≥ 10 points with an interval clear of zero in no cell" in text
    jump = curves.assign(ood_rate=np.where((curves["label"] == RECIPES["b"].label) & (curves["step"] == 0.5), 0.6,
                                           curves["ood_rate"]))  # fmt: skip
    collapsed = analysis.regime_summary(analysis.cell_table(analysis.outcomes(jump)))
    assert "- **adam** collapses at lr 0.001 (β 0.1 (+78)); rises ≥ 10 points with an interval clear of zero" in collapsed


def test_the_drifting_recipe_prefers_a_near_zero_reference_and_breaks_ties_by_ood():
    table = pd.DataFrame({"label": ["x", "y", "z"], "drift_fraction": [1.0, 0.6, 0.6], "ood_mean": [0.9, 0.6, 0.7],
                          "reference_ood": [0.3, 0.0, 0.05], "reference_ood_mass": 0.2, "collapsed": 0, "seeds": 5})  # fmt: skip
    best, near_zero = analysis.drifting_recipe(table)
    assert best["label"] == "z" and near_zero  # x drifts more, but from a reference that is 30 % OOD
    # between references alike by greedy OOD, the one with less exact OOD mass, before the final OOD
    best, _ = analysis.drifting_recipe(table.assign(reference_ood_mass=[0.2, 0.1, 0.3]))
    assert best["label"] == "y"
    best, near_zero = analysis.drifting_recipe(table.assign(reference_ood=0.3))
    assert best["label"] == "x" and not near_zero


def test_a_diverged_run_is_reported_apart_and_never_drifts():
    curves = _curves({("a", 0): [0.6, 0.9, 1.0], ("a", 1): [0.6, 0.9, 1.0]}, reference_ood=0.0)
    broken = (curves["seed"] == 1) & (curves["step"] >= 2)
    curves.loc[broken, ["loss", "kl", "ood_mass"]] = np.nan  # a model of NaNs: every greedy answer unparseable
    runs = analysis.outcomes(curves).set_index("seed")
    assert runs["diverged"].tolist() == [False, True] and runs["drifted"].tolist() == [True, False]
    assert np.isnan(runs.loc[1, "ood_mass"])  # the last row is read as it is, not filled from an earlier one
    assert analysis.outcomes(curves, epoch=1).set_index("seed")["diverged"].tolist() == [False, False]
    table = analysis.cell_table(analysis.outcomes(curves))
    assert table.loc[0, "diverged"] == 1 and table.loc[0, "drifted"] == 1


def test_two_cells_with_one_label_are_refused():
    curves = _curves({("a", 0): [0.1, 0.2, 0.6]})
    with pytest.raises(ValueError, match="share a label"):
        analysis.cell_table(analysis.outcomes(curves).pipe(lambda r: pd.concat([r, r])))
    assert Recipe("sgd", 0.04641, 0.1).label != Recipe("sgd", 0.0464, 0.1).label
    row = analysis.cell_table(analysis.outcomes(curves)).iloc[0]
    assert Recipe.from_row(row, n_train=100) == RECIPES["a"]  # train_size 100 is every pair: None
    assert Recipe.from_row(row, n_train=200).train_size == 100


def test_the_mechanism_reads_the_onset_after_step_zero():
    curves = _curves({("a", 0): [0.2, 0.6, 0.8], ("a", 1): [0.1, 0.1, 0.1]}, reference_ood=0.0)
    mechanisms = analysis.mechanism(curves, analysis.outcomes(curves))
    assert len(mechanisms) == 1  # only the drifted run
    row = mechanisms.iloc[0]
    assert row["onset_epoch"] == 2.0 and row["ordering_epoch"] == 2.0
    assert row["onset_chosen_change"] == -2.0 and row["onset_rejected_change"] == -4.0
    assert row["final_ordering"] == 0.8


PAPER_BETAS = ["a", "a01", "a03", "a1"]  # Park's recipe at four β: one seed's runs in these cells are one replicate
DRIFTS, CALM = [0.6, 0.7, 0.8], [0.1, 0.1, 0.1]
Z = 1.959963984540054  # the normal quantile of a 95 % interval


def _wilson(k: int, m: int) -> tuple[float, float]:
    """The 95 % Wilson interval of k successes in m trials, from its closed form."""
    p, z2 = k / m, Z**2
    centre, half = (p + z2 / (2 * m)) / (1 + z2 / m), Z / (1 + z2 / m) * np.sqrt(p * (1 - p) / m + z2 / (4 * m**2))
    return centre - half, centre + half


def _claims(curves: pd.DataFrame, confirmation: pd.DataFrame | None = None) -> pd.DataFrame:
    runs = analysis.outcomes(curves)
    fresh = None if confirmation is None else analysis.outcomes(confirmation)
    return map_claims(runs, analysis.cell_table(runs), fresh).set_index("claim_id")


def test_the_claims_on_five_seeds_that_drift_in_the_paper_recipe():
    drifting = _curves({("a", s): DRIFTS for s in range(5)} | {("b", s): CALM for s in range(5)})
    claims = _claims(drifting)
    assert claims["verdict"].to_dict() == {"C22": REPRODUCED, "C23": REPRODUCED}
    c22 = claims.loc["C22"]  # 5 of 5 runs over 5 seeds: Wilson [5 / (5 + z²), 1] = [0.566, 1] is clear of 50 %
    assert (c22["n"], c22["estimate"], c22["threshold"]) == ("5", "1", "0.5")
    assert float(c22["ci_low"]) == pytest.approx(5 / (5 + Z**2), abs=1e-4) and float(c22["ci_high"]) == 1.0
    assert claims.loc["C23", "n"] == "5"  # the drift fraction over the drifting recipe's 5 seeds decides
    assert "5 of 5 runs drift (β=0.1: 5/5) over 5 seeds" in c22["our_value"] and "Decided: reproduced" in c22["our_value"]


def test_the_claims_when_nothing_drifts():
    calm = _curves({(r, s): CALM for r in [*PAPER_BETAS, "b"] for s in range(5)})
    claims = _claims(calm)
    # C22: 0 of 20 runs, but a seed's four runs (one per β) are not independent and nothing measures how
    # alike they are, so the five seeds count: Wilson [0, 0.434] straddles the partial "one run in five"
    # (over the 20 runs it would be [0, 0.161]). C23: 0 of 5 seeds, [0, 0.434] < 50 %.
    assert claims["verdict"].to_dict() == {"C22": INCONCLUSIVE, "C23": NOT_REPRODUCED}
    assert float(claims.loc["C22", "ci_high"]) == pytest.approx(_wilson(0, 5)[1], abs=1e-4)
    assert float(claims.loc["C23", "ci_high"]) == pytest.approx(_wilson(0, 5)[1], abs=1e-4)
    # sixteen seeds: 0 of 64 runs, Wilson over the seeds [0, 0.194], below the partial claim's 0.2
    many = _claims(_curves({(r, s): CALM for r in [*PAPER_BETAS, "b"] for s in range(16)})).loc["C22"]
    assert many["verdict"] == NOT_REPRODUCED and many["n"] == "16"
    assert float(many["ci_high"]) == pytest.approx(_wilson(0, 16)[1], abs=1e-4)


def test_c22_is_partly_when_a_third_of_the_runs_drift_over_twelve_seeds():
    # 16 of 48 runs (every seed at β = 0.1, four seeds at β = 0.01): Wilson [0.217, 0.475], ≥ 20 % but < 50 %
    ood = {(r, s): CALM for r in PAPER_BETAS for s in range(12)}
    ood |= {("a", s): DRIFTS for s in range(12)} | {("a01", s): DRIFTS for s in range(4)}
    c22 = _claims(_curves(ood)).loc["C22"]
    assert c22["verdict"] == PARTLY and c22["n"] == "12"
    assert (float(c22["ci_low"]), float(c22["ci_high"])) == pytest.approx(_wilson(16, 48), abs=1e-4)


def test_c23_is_decided_on_the_fresh_seeds():
    drifting = _curves({("a", s): DRIFTS for s in range(5)} | {("b", s): CALM for s in range(5)})
    # the map's best cell drifts in every seed, but none of five fresh seeds does: the confirmation decides
    assert _claims(drifting, _curves({("a", s): CALM for s in range(100, 105)})).loc["C23", "verdict"] == NOT_REPRODUCED
    # every fresh seed drifts, but the margin falls in each: drift without the rising margin is partly
    falling = _curves({("a", s): DRIFTS for s in range(100, 105)})
    falling["margin"] = -falling["step"].astype(float)
    c23 = _claims(drifting, falling).loc["C23"]
    assert c23["verdict"] == PARTLY and "on 5 fresh seeds: 5/5 drift" in c23["our_value"]
    # two drifted seeds of twenty: the fraction's failure decides; their own OOD level is not read on two
    few = _curves({("a", s): DRIFTS if s < 2 else CALM for s in range(100, 120)})
    c23 = _claims(drifting, few).loc["C23"]
    assert c23["verdict"] == NOT_REPRODUCED and c23["n"] == "20"
    # three fresh seeds that all drift: Wilson [0.439, 1] straddles 50 %
    assert _claims(drifting, _curves({("a", s): DRIFTS for s in range(100, 103)})).loc["C23", "verdict"] == INCONCLUSIVE


def test_the_claims_on_one_or_two_seeds_are_inconclusive():
    for seeds in ([0], [0, 1]):
        curves = _curves({("a", s): DRIFTS for s in seeds} | {("b", s): CALM for s in seeds})
        claims = _claims(curves)
        assert set(claims["verdict"]) == {INCONCLUSIVE}
        assert (claims["n"] == str(len(seeds))).all()
    calm = _curves({(r, s): CALM for r in ("a", "b") for s in (0, 1)})
    assert _claims(calm)["verdict"].tolist() == [INCONCLUSIVE] * 2


def test_the_claims_straddling_and_untestable():
    # 3 of 5 paper runs drift: Wilson [0.231, 0.882] straddles 50 % (the partial 20 % holds, but the full claim is open)
    mixed = _curves({("a", s): DRIFTS if s < 3 else CALM for s in range(5)} | {("b", s): CALM for s in range(5)})
    assert _claims(mixed).loc["C22", "verdict"] == INCONCLUSIVE
    no_paper = _curves({("b", s): DRIFTS for s in range(5)})
    assert _claims(no_paper).loc["C22", "verdict"] == UNTESTABLE
    far = _curves({("b", s): DRIFTS for s in range(5)}, reference_ood=0.3)
    c23 = _claims(far).loc["C23"]
    assert c23["verdict"] == UNTESTABLE  # its references are 30 % OOD, not in distribution
    assert "30 ± 0 % over the 5 deciding seeds" in c23["precondition"]


# ---- the runs -----------------------------------------------------------------------

SHORT = ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=6)  # 1-digit prompts leave 4 response tokens: enumerable
SHORT_DATA = DataConfig(prompt_min=1, prompt_max=9, window=1, test_fraction=0.4, seed=0)


def _setup(**changes) -> MapSetup:
    sft = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=3, batch_size=4, grad_clip=None, n_evals=1)
    return MapSetup(SHORT_DATA, SHORT, EvalConfig(kl_samples=2), sft, dataclasses.replace(sft, optimizer="adamw"),
                    **{"evals_per_epoch": 1, **changes})  # fmt: skip


@torch.no_grad()
def _greedy_logp(model, prompt: int) -> float:
    """log π of the greedy response, by full forward passes token by token."""
    seq, total = encode_prompt(prompt), 0.0
    while len(seq) < model.cfg.n_ctx:
        next_logps = model(torch.tensor([seq]))[0, -1].log_softmax(-1)
        token = int(next_logps.argmax())
        total += float(next_logps[token])
        seq.append(token)
        if token == END:
            break
    return total


def test_exact_ood_mass_and_the_ordering_along_a_run_against_brute_force():
    """DriftEvaluator on trained policies equals enumeration of every response, and the
    ordering share equals a pair-by-pair check of the greedy answers."""
    train, test = make_pairs(SHORT_DATA)
    reference = build_model(SHORT, seed=1).double()
    policies = [build_model(SHORT, seed=s).double() for s in (2, 3)]
    with torch.no_grad():
        for m in policies:
            m.unembed.weight.mul_(6)  # sharper distributions, so that some greedy answers leave the window
    evaluator = Evaluator(test, SHORT_DATA, EvalConfig(kl_samples=2), reference=reference)
    drift = DriftEvaluator(evaluator, train, SHORT_DATA.window, n_scored=len(train), seed=0)
    rows = drift(Ensemble(policies), betas=[0.1, 0.1])
    for model, row in zip(policies, rows, strict=True):

        def ood_mass(prompt, model=model):
            return sum(np.exp(lp) for r, lp in enumerate_responses(model, prompt) if not is_aligned(r, prompt, SHORT_DATA.window))

        assert row["ood_mass"] == pytest.approx(np.mean([ood_mass(int(s)) for s in test.prompts]), abs=1e-9)

        def logp(prompt, tokens, model=model):
            seq = torch.tensor([encode_prompt(int(prompt)) + tokens])
            mask = torch.zeros_like(seq, dtype=torch.bool)
            mask[:, len(encode_prompt(int(prompt))) :] = True
            with torch.no_grad():
                return float(sequence_logps(model(seq), seq, mask)[0])

        def response(y):
            return encode_response(int(y))

        chosen = [logp(s, response(y)) for s, y in zip(train.prompt, train.chosen, strict=True)]
        rejected = [logp(s, response(y)) for s, y in zip(train.prompt, train.rejected, strict=True)]
        assert row["chosen_logp"] == pytest.approx(np.mean(chosen), abs=1e-9)
        assert row["rejected_logp"] == pytest.approx(np.mean(rejected), abs=1e-9)
        answers = dict(zip(train.prompts, greedy_answers(model, train.prompts), strict=True))
        ood = [answers[s] is None or abs(answers[s] - s) > SHORT_DATA.window for s in train.prompt]
        chain = []
        for s, c, r, o in zip(train.prompt, chosen, rejected, ood, strict=True):
            if o:
                chain.append(_greedy_logp(model, int(s)) > c > r)
        assert sum(ood) > 0, "the test needs prompts with OOD greedy answers"
        assert row["ordering"] == pytest.approx(np.mean(chain), abs=1e-12)


def test_recipes_sharing_a_schedule_train_together_as_they_would_alone(tmp_path):
    """A per-member learning rate, β and weight decay in one ensemble (SGD and RMSprop) equal separate runs."""
    setup = _setup(scored_train_pairs=8)
    recipes = [Recipe("rmsprop", 1e-3, 0.1, 4, 2), Recipe("rmsprop", 1e-2, 1.0, 4, 2, weight_decay=0.1),
               Recipe("sgd", 0.5, 0.5, 4, 2)]  # fmt: skip
    together = run_recipes(recipes, [0], setup, tmp_path / "together")
    for i, recipe in enumerate(recipes):
        alone = run_recipes([recipe], [0], setup, tmp_path / f"alone{i}")
        mine = together[together["label"] == recipe.label].reset_index(drop=True)
        columns = ["loss", "ood_rate", "ood_mass", "chosen_logp", "rejected_logp", "kl"]
        pd.testing.assert_frame_equal(mine[columns], alone[columns], rtol=1e-4, atol=1e-6)
    finals = together[together["step"] == together["step"].max()]
    assert finals["chosen_logp"].nunique() == 3  # the members did train differently
    assert set(together["arm"]) == {GRID} and (together["train_size"] == len(make_pairs(SHORT_DATA)[0])).all()


def test_seeds_train_as_members_as_each_seed_would_alone(tmp_path):
    """Replicates as members: two seeds × two recipes in one ensemble, each member from its own seed's SFT
    reference with its own batch order, equal each seed run alone; a schedule on a training subset (each
    seed its own pairs) trains one ensemble per seed, as before; so does every schedule with members=False."""
    setup = _setup(scored_train_pairs=8)
    recipes = [Recipe("adamw", 3e-3, 0.1, 4, 2), Recipe("adamw", 1e-3, 1.0, 4, 2, weight_decay=0.1),
               Recipe("rmsprop", 1e-3, 0.5, 4, 2, train_size=6)]  # fmt: skip
    together = run_recipes(recipes, [3, 1], setup, tmp_path / "together")
    assert list(dict.fromkeys(together["seed"])) == [3, 1]  # seed by seed, in the order asked
    columns = ["step", "loss", "ood_rate", "ood_mass", "chosen_logp", "rejected_logp", "kl", "accuracy", "window_lost"]
    alone = {seed: run_recipes(recipes, [seed], setup, tmp_path / "alone") for seed in (3, 1)}
    for seed in (3, 1):
        mine = together[together["seed"] == seed].reset_index(drop=True)
        assert list(mine["label"]) == list(alone[seed]["label"])
        pd.testing.assert_frame_equal(mine[columns], alone[seed][columns], rtol=1e-4, atol=1e-5)
    # members=False keys every seed's runs as a run of that seed alone: it reads the runs above, training nothing
    apart = run_recipes(recipes, [3, 1], setup, tmp_path / "alone", members=False)
    pd.testing.assert_frame_equal(apart, pd.concat([alone[3], alone[1]], ignore_index=True))
    finals = together[together["step"] == together["step"].max()]
    assert finals.groupby("label")["chosen_logp"].nunique().min() == 2  # each seed trained its own way
    assert set(together.loc[together["label"] == recipes[2].label, "train_size"]) == {6}


def test_the_drifting_summary_against_hand_written_lines():
    best = pd.Series({"label": "adam lr=0.005 β=0.1", "arm": "grid", "drifted": 4, "seeds": 5, "ood_mean": 0.8123,
                      "ood_sd": 0.0449, "ood_mass_mean": 0.73456, "reference_ood": 0.012,
                      "reference_ood_mass": 0.02, "collapsed": 1})  # fmt: skip
    confirmation = pd.DataFrame({"drifted": [True, False, True], "ood": [0.9, 0.3, 0.6], "collapse": ["", "", ""]})
    runs = pd.DataFrame({"diverged": [False, True, False, False], "collapse": ["", "", "no preference learning", ""]})
    lines = [
        "drifting recipe: adam lr=0.005 β=0.1 (grid)",
        "  4/5 seeds drift; final OOD rate 81 ± 4 %, exact OOD mass 73.5 %",
        "  reference: OOD rate 1.2 %, exact OOD mass 2.0 %",
        "  on fresh seeds [100, 101, 102]: 2/3 drift; final OOD rate 60 ± 24 %",  # sd (ddof 0) of .9, .3, .6: 0.245
        "  collapsed (chance accuracy at loss log 2, or an OOD jump at the first checkpoint): 1/5 seeds; on the fresh seeds 0/3",
        "diverged runs in the map: 1 of 4; collapsed: 1 of 4",
    ]
    assert analysis.drifting_summary(best, True, confirmation, [100, 101, 102], runs) == "\n".join(lines)
    lines[2] += " (no cell's reference is near-zero OOD)"
    assert analysis.drifting_summary(best, False, confirmation, [100, 101, 102], runs) == "\n".join(lines)


def test_a_collapse_is_never_a_drift_nor_the_drifting_recipe():
    curves = _curves({
        ("b", 0): [0.6, 0.9, 1.0],  # 60 % OOD at the first checkpoint (set below): a jump, not a drift
        ("b", 1): [0.7, 0.9, 1.0],
        ("a", 0): [0.1, 0.3, 0.6],  # gradual: a drift
        ("a", 1): [0.1, 0.2, 0.3],
    })  # fmt: skip
    jump = (curves["label"] == RECIPES["b"].label) & (curves["step"] == 0.5)
    curves.loc[jump, "ood_rate"] = 0.6
    runs = analysis.outcomes(curves).set_index(["label", "seed"])
    b, a = RECIPES["b"].label, RECIPES["a"].label
    assert runs.loc[(b, 0), "collapse"] == "OOD jump at the first checkpoint" and not runs.loc[(b, 0), "drifted"]
    assert runs.loc[(a, 0), "drifted"] and runs.loc[(a, 0), "collapse"] == ""
    table = analysis.cell_table(runs.reset_index())
    best, _ = analysis.drifting_recipe(table)
    assert best["label"] == a  # b ends at 100 % OOD in every seed, but it collapsed
    # chance accuracy with the loss at log 2 at the end is a collapse too, however gradual the OOD rise
    flat = _curves({("a", 0): [0.1, 0.3, 0.6]}).assign(accuracy=0.55, loss=0.70)
    assert analysis.outcomes(flat)["collapse"].tolist() == ["no preference learning"]
    still = _curves({("a", 0): [0.02, 0.05, 0.08]}).assign(accuracy=0.55, loss=0.70)  # not moved: not yet learning
    assert analysis.outcomes(still)["collapse"].tolist() == [""]


def test_c23_counts_a_drift_with_rising_margin_only_where_the_preferences_were_learned():
    from dpo_toolkit.studies.drift_map.claims import _rose

    runs = pd.DataFrame({"margin": [2.0, 2.0, 2.0, 0.5], "first_margin": [1.0, 1.0, 1.0, 1.0],
                         "accuracy": [0.75, 0.65, 0.72, 0.9], "first_accuracy": [0.5, 0.5, 0.65, 0.5],
                         "start_accuracy": [0.0, 0.0, 0.0, 0.0]})  # fmt: skip
    # learned; ends below 0.7; only 7 points above its first checkpoint (72 points above step 0's 0); margin fell
    assert _rose(runs).tolist() == [True, False, False, False]
