"""The collapse rule (core.drift): a run whose preference learning fails while the policy moves is a
collapse, never a drift; and a claims table gated on an arm that collapses."""

import numpy as np
import pandas as pd
import pytest

from dpo_toolkit.core.claims import claims_frame, gated
from dpo_toolkit.core.drift import collapse_check, collapse_reasons, collapse_summary, collapse_table, drifted
from dpo_toolkit.core.evidence import Check, mean_interval

LOG2 = float(np.log(2))

# hand-made runs: per evaluation (step, OOD rate, held-out accuracy, DPO training loss); step 0 is the reference
RUNS = {
    "collapse": [(0, 0.0, 0.5, np.nan), (10, 0.9, 0.52, 0.693), (20, 1.0, 0.49, 0.692)],
    "slow drift": [(0, 0.05, 0.5, np.nan), (10, 0.1, 0.6, 0.65), (20, 0.3, 0.7, 0.55), (30, 0.6, 0.75, 0.5)],
    "stable": [(0, 0.02, 0.5, np.nan), (10, 0.02, 0.8, 0.45), (20, 0.03, 0.82, 0.4)],
    "drift then recovery": [(0, 0.05, 0.5, np.nan), (10, 0.2, 0.65, 0.6), (20, 0.6, 0.7, 0.55), (30, 0.1, 0.72, 0.5)],
    "no learning": [(0, 0.1, 0.5, np.nan), (10, 0.2, 0.55, 0.70), (20, 0.3, 0.58, 0.68)],
    "not moved yet": [(0, 0.1, 0.5, np.nan), (10, 0.12, 0.52, 0.69), (20, 0.15, 0.55, 0.69)],  # a short run
}
EXPECTED = {
    "collapse": "no preference learning; OOD jump at the first checkpoint",
    "slow drift": "",
    "stable": "",
    "drift then recovery": "",
    "no learning": "no preference learning",
    "not moved yet": "",
}


def _curves(runs=RUNS, seeds=(0,)) -> pd.DataFrame:
    return pd.DataFrame(
        [{"run": name, "seed": seed, "step": s, "ood_rate": o, "accuracy": a, "loss": loss}
         for seed in seeds for name, rows in runs.items() for s, o, a, loss in rows]
    )  # fmt: skip


def test_collapse_rule_on_hand_made_runs():
    table = collapse_table(_curves(), ["run", "seed"]).set_index("run")
    assert table["collapse"].to_dict() == EXPECTED
    assert table.loc["slow drift", "first_ood"] == pytest.approx(0.1) and table.loc["collapse", "loss"] == pytest.approx(0.692)
    # the slow drift is a drift and no collapse; the collapse ends at 100 % OOD and would read as one without the rule
    assert drifted(0.6, 0.05) and drifted(1.0, 0.0)


def test_collapse_reasons_at_the_thresholds():
    # accuracy exactly 0.6 and loss exactly 0.02 from log 2 collapse, with OOD 10 points up; just past any does not
    assert collapse_reasons([0.6], [LOG2 + 0.02], [0.0], [0.1], [0.0]).tolist() == ["no preference learning"]
    assert collapse_reasons([0.61], [LOG2], [0.0], [0.1], [0.0]).tolist() == [""]
    assert collapse_reasons([0.5], [LOG2 - 0.021], [0.0], [0.1], [0.0]).tolist() == [""]
    assert collapse_reasons([0.5], [LOG2], [0.0], [0.09], [0.0]).tolist() == [""]  # it has not moved
    # a jump needs a reference below 50 % OOD: a reference already OOD does not jump
    assert collapse_reasons([0.9], [0.3], [0.5], [0.5], [0.1]).tolist() == ["OOD jump at the first checkpoint"]
    assert collapse_reasons([0.9], [0.3], [0.7], [0.7], [0.6]).tolist() == [""]
    assert collapse_reasons([np.nan], [np.nan], [np.nan], [np.nan], [0.0]).tolist() == [""]  # a diverged run


def test_collapse_check_reads_the_share_of_collapsed_runs_on_its_interval():
    every = collapse_table(_curves({"c": RUNS["collapse"]}, seeds=range(10)), ["run", "seed"])
    none = collapse_table(_curves({"s": RUNS["stable"]}, seeds=range(10)), ["run", "seed"])
    assert collapse_check(every).outcome is False  # 10 of 10: Wilson [0.72, 1] above 0.5
    assert collapse_check(none).outcome is True  # 0 of 10: [0, 0.28]
    half = collapse_table(_curves({"c": RUNS["collapse"], "s": RUNS["stable"]}, seeds=range(5)), ["run", "seed"])
    assert collapse_check(half).outcome is None  # 5 of 10 straddles
    assert "10 of its 10 runs collapse rather than drift (10 no preference learning; OOD jump" in collapse_summary(every, "arm")
    assert collapse_summary(none, "arm").startswith("arm: none of its 10 runs collapsed")


def _claims() -> pd.DataFrame:
    clear = Check("x", mean_interval([1.0, 1.1, 0.9, 1.05]), 0.5)
    return claims_frame([
        {"claim_id": "C1", "statement": "s", "paper_value": "p", "our_value": "v", "verdict": "reproduced", "n": "4",
         "estimate": "1.01", "ci_low": "0.9", "ci_high": "1.1", "threshold": str(clear.threshold)},
        {"claim_id": "C2", "statement": "s", "paper_value": "p", "our_value": "v", "verdict": "verified (identity)"},
        {"claim_id": "C3", "statement": "s", "paper_value": "p", "our_value": "v", "verdict": "inconclusive", "n": "1",
         "estimate": "1", "ci_low": "-inf", "ci_high": "inf", "threshold": "0.5"},
    ])  # fmt: skip


def test_gated_claims_follow_the_arms_precondition():
    every = collapse_table(_curves({"c": RUNS["collapse"]}, seeds=range(10)), ["run", "seed"])
    untestable = gated(_claims(), collapse_check(every), "the drifting arm does not collapse").set_index("claim_id")
    assert untestable["verdict"].tolist() == ["untestable here", "verified (identity)", "untestable here"]
    note = "Read as reproduced on its own; untestable here: 'the drifting arm does not collapse' fails"
    assert note in untestable.loc["C1", "our_value"]
    assert untestable.loc["C1", "precondition"].startswith("the drifting arm does not collapse: share of the arm's runs")
    half = collapse_table(_curves({"c": RUNS["collapse"], "s": RUNS["stable"]}, seeds=range(5)), ["run", "seed"])
    undecided = gated(_claims(), collapse_check(half), "no collapse")
    assert undecided["verdict"].tolist() == ["inconclusive", "verified (identity)", "inconclusive"]
    none = collapse_table(_curves({"s": RUNS["stable"]}, seeds=range(10)), ["run", "seed"])
    kept = gated(_claims(), collapse_check(none), "no collapse")
    assert kept["verdict"].tolist() == _claims()["verdict"].tolist() and kept.loc[0, "our_value"] == "v"
